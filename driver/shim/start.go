package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// startPoll is how often Start checks whether the container is running.
const startPoll = 20 * time.Millisecond

// errShimExited is returned by Start when the shim exited before the
// container was running.
var errShimExited = errors.New("shim exited before the container started")

// staleFiles are removed from the state directory before a start.
var staleFiles = []string{
	shimPidFile, containerPid, socketFile, exitFile, startErrFile, ackFile, runcLogFile,
}

// Start writes cfg to <stateDir>/shim.json and starts the shim as
// `self shim <stateDir>` in its own session, with /dev/null as stdin and
// <stateDir>/shim.log as stdout and stderr. It returns once the container
// is running and the shim answers on its socket, or an error carrying
// runc's message if the shim exits first. If ctx ends first the shim is
// killed and the container deleted.
func Start(ctx context.Context, self, stateDir string, cfg Config) (*Process, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("start shim %s: %w", stateDir, err)
	}
	stateDir = abs
	if err := validate(&cfg, stateDir); err != nil {
		return nil, fmt.Errorf("start shim %s: %w", stateDir, err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("start shim %s: %w", stateDir, err)
	}
	if pid, err := readPid(statePath(stateDir, shimPidFile)); err == nil && shimAlive(pid, stateDir) {
		return nil, fmt.Errorf("start shim %s: a shim (pid %d) is already running there", stateDir, pid)
	}
	for _, name := range staleFiles {
		if err := os.Remove(statePath(stateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start shim %s: remove stale %s: %w", stateDir, name, err)
		}
	}
	if err := writeJSON(statePath(stateDir, configFile), &cfg, 0o600); err != nil {
		return nil, fmt.Errorf("start shim %s: %w", stateDir, err)
	}

	logf, err := os.OpenFile(statePath(stateDir, shimLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start shim %s: open log: %w", stateDir, err)
	}
	defer logf.Close()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("start shim %s: %w", stateDir, err)
	}
	defer devNull.Close()

	cmd := exec.Command(self, Command, stateDir)
	cmd.Stdin = devNull
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start shim %s: %w", stateDir, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	p := &Process{StateDir: stateDir, ShimPID: cmd.Process.Pid}
	tick := time.NewTicker(startPoll)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("start container %s: %w", cfg.ID, startError(stateDir, err))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-exited
			cleanupContainer(&cfg)
			return nil, fmt.Errorf("start container %s: %w", cfg.ID, ctx.Err())
		case <-tick.C:
		}
		if ready(p) {
			return p, nil
		}
	}
}

// ready reports whether the container runs and the shim answers; it
// fills in the container pid.
func ready(p *Process) bool {
	pid, err := readPid(statePath(p.StateDir, containerPid))
	if err != nil {
		return false
	}
	conn, err := p.dial(context.Background())
	if err != nil {
		return false
	}
	_ = conn.Close()
	p.ContainerPID = pid
	return true
}

// startError explains why the shim exited during start, from start.err.
func startError(stateDir string, waitErr error) error {
	data, err := os.ReadFile(statePath(stateDir, startErrFile))
	if msg := strings.TrimSpace(string(data)); err == nil && msg != "" {
		return errors.New(msg)
	}
	if waitErr == nil {
		return fmt.Errorf("%w (see %s)", errShimExited, statePath(stateDir, shimLogFile))
	}
	return fmt.Errorf("%w: %v (see %s)", errShimExited, waitErr, statePath(stateDir, shimLogFile))
}

// cleanupContainer force-deletes the container after an abandoned start.
func cleanupContainer(cfg *Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := []string{"delete", "--force", cfg.ID}
	if cfg.RuncRoot != "" {
		args = append([]string{"--root", cfg.RuncRoot}, args...)
	}
	_ = exec.CommandContext(ctx, cfg.RuncPath, args...).Run()
}

func validate(cfg *Config, stateDir string) error {
	if cfg.Mode == "" {
		cfg.Mode = ModeRun
	}
	switch {
	case cfg.ID == "":
		return errors.New("config has no container id")
	case cfg.Bundle == "":
		return errors.New("config has no bundle")
	case cfg.RuncPath == "":
		return errors.New("config has no runc path")
	case cfg.Mode != ModeRun && cfg.Mode != ModeRestore:
		return fmt.Errorf("unknown mode %q", cfg.Mode)
	case cfg.Mode == ModeRestore && cfg.ImagePath == "":
		return errors.New("restore needs an image path")
	case !filepath.IsAbs(cfg.Bundle):
		return fmt.Errorf("bundle path %q is not absolute", cfg.Bundle)
	case len(statePath(stateDir, socketFile)) > maxSocketPath:
		return fmt.Errorf("state dir path too long for a unix socket (%d bytes max)",
			maxSocketPath-len(socketFile)-1)
	}
	return nil
}
