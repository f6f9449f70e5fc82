package shim

import (
	"context"
	"fmt"
	"os"
	"os/exec"

	"github.com/ferry-nomad/ferry/driver/runc"
)

// containerIO holds the anonymous pipes that become the container's stdio.
// CRIU can only checkpoint a container whose stdio are pipes (not files or
// FIFOs reached by path), so the shim owns the other ends and copies them.
type containerIO struct {
	stdinR, stdinW   *os.File
	stdoutR, stdoutW *os.File
	stderrR, stderrW *os.File
}

func newContainerIO() (*containerIO, error) {
	var c containerIO
	var err error
	if c.stdinR, c.stdinW, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	if c.stdoutR, c.stdoutW, err = os.Pipe(); err != nil {
		c.close()
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	if c.stderrR, c.stderrW, err = os.Pipe(); err != nil {
		c.close()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	return &c, nil
}

// closeChildEnds closes the ends handed to runc, once it has them.
func (c *containerIO) closeChildEnds() {
	for _, f := range []*os.File{c.stdinR, c.stdoutW, c.stderrW} {
		if f != nil {
			_ = f.Close()
		}
	}
}

// close closes every pipe end.
func (c *containerIO) close() {
	c.closeChildEnds()
	for _, f := range []*os.File{c.stdinW, c.stdoutR, c.stderrR} {
		if f != nil {
			_ = f.Close()
		}
	}
}

// runcArgs returns the runc command line that starts or restores the
// container detached, with its pid written to pidFile and runc's own log
// to logFile.
func runcArgs(cfg *Config, pidFile, logFile string) ([]string, error) {
	r := runc.Runc{Path: cfg.RuncPath, Root: cfg.RuncRoot}
	args := append(r.GlobalArgs(), "--log", logFile)
	switch cfg.Mode {
	case ModeRun, "":
		args = append(args, "run", "--detach", "--pid-file", pidFile, "--bundle", cfg.Bundle)
	case ModeRestore:
		if cfg.ImagePath == "" {
			return nil, fmt.Errorf("restore needs an image path")
		}
		args = append(args, "restore", "--detach", "--pid-file", pidFile,
			"--bundle", cfg.Bundle, "--image-path", cfg.ImagePath)
		if cfg.WorkPath != "" {
			args = append(args, "--work-path", cfg.WorkPath)
		}
		args = append(args, cfg.RestoreArgs...)
	default:
		return nil, fmt.Errorf("unknown mode %q", cfg.Mode)
	}
	return append(args, cfg.ID), nil
}

// startContainer runs `runc run --detach` (or `runc restore --detach`)
// with the pipes of cio as its stdio, which runc passes on to the
// container. It returns the pid of the container's init process.
func (s *shim) startContainer(ctx context.Context, cio *containerIO) (int, error) {
	pidFile := statePath(s.stateDir, containerPid)
	logFile := statePath(s.stateDir, runcLogFile)
	args, err := runcArgs(&s.cfg, pidFile, logFile)
	if err != nil {
		return 0, err
	}
	_ = os.Remove(pidFile)
	_ = os.Remove(logFile)

	cmd := exec.Command(s.cfg.RuncPath, args...)
	cmd.Stdin = cio.stdinR
	cmd.Stdout = cio.stdoutW
	cmd.Stderr = cio.stderrW
	cmd.Dir = "/"
	s.log.Debug("starting container", "args", cmd.Args)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start runc %s: %w", s.mode(), err)
	}
	cio.closeChildEnds()
	// The reaper collects runc's status; os/exec must not wait for it.
	ws, err := s.reaper.wait(ctx, cmd.Process.Pid)
	_ = cmd.Process.Release()
	if err != nil {
		return 0, fmt.Errorf("wait for runc %s: %w", s.mode(), err)
	}
	if code, sig := waitExit(ws); code != 0 {
		data, _ := os.ReadFile(logFile)
		msg := runc.ParseLog(data)
		if sig != 0 {
			return 0, fmt.Errorf("runc %s %s: killed by signal %d: %s", s.mode(), s.cfg.ID, sig, msg)
		}
		return 0, fmt.Errorf("runc %s %s: exit status %d: %s", s.mode(), s.cfg.ID, code, msg)
	}
	pid, err := readPid(pidFile)
	if err != nil {
		return 0, fmt.Errorf("runc %s %s: read pid: %w", s.mode(), s.cfg.ID, err)
	}
	return pid, nil
}
