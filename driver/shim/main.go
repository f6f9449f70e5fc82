package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-nomad/ferry/driver/atomicfile"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

const (
	// ackTimeout is how long the shim waits for the driver to acknowledge
	// the exit before it exits anyway.
	ackTimeout = 5 * time.Minute
	// drainTimeout bounds waiting for the output to reach EOF and be
	// written before the exit status is published.
	drainTimeout = 10 * time.Second
	// startFailDrain bounds flushing runc's output after a failed start.
	startFailDrain = 2 * time.Second
	// detachTimeout bounds the write in flight when the logs are
	// detached.
	detachTimeout = time.Second
	// ackPoll is how often the ack file is looked for.
	ackPoll = 500 * time.Millisecond
	// initPoll is how often the init pid is checked in case it is not a
	// child of the shim.
	initPoll = 2 * time.Second
	// memoryLimit is the soft limit of the shim's Go heap.
	memoryLimit = 32 << 20
)

// shim is the state of the shim process.
type shim struct {
	stateDir string
	cfg      Config
	log      hclog.Logger
	reaper   *reaper

	termOnce sync.Once
	term     chan struct{}
}

// Command is the first argument of a shim process, started as
// `<driver> shim <stateDir>` (Start): the driver's binary, or a test
// binary that starts tasks, runs as the shim when given it (RunIfShim).
const Command = "shim"

// RunIfShim runs the shim and exits when this process was started as one;
// otherwise it returns at once. The driver's binary and the test binaries
// that start tasks call it first thing.
func RunIfShim() {
	if len(os.Args) > 1 && os.Args[1] == Command {
		os.Exit(Main(os.Args[2:]))
	}
}

// Main is the body of the shim process, started as
// `<driver> shim <stateDir>`. It returns the process exit code.
func Main(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: shim STATE_DIR")
		return 2
	}
	stateDir, err := filepath.Abs(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "shim: state dir %q: %v\n", args[0], err)
		return 2
	}
	out := os.Stderr
	if f, err := os.OpenFile(statePath(stateDir, shimLogFile),
		os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		defer f.Close()
		out = f
	} else {
		fmt.Fprintf(os.Stderr, "shim: open log: %v\n", err)
	}
	debug.SetMemoryLimit(memoryLimit)

	s := &shim{
		stateDir: stateDir,
		log: hclog.New(&hclog.LoggerOptions{
			Name:       "ferry-shim",
			Level:      hclog.Debug,
			Output:     out,
			JSONFormat: true,
		}).With("state_dir", stateDir, "pid", os.Getpid()),
		reaper: newReaper(),
		term:   make(chan struct{}),
	}
	if err := s.run(context.Background()); err != nil {
		s.log.Error("shim failed", "error", err)
		return 1
	}
	return 0
}

// run starts the container and looks after it until the driver
// acknowledged its exit.
func (s *shim) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if err := readJSON(statePath(s.stateDir, configFile), &s.cfg); err != nil {
		return s.startFailed(fmt.Errorf("read config: %w", err))
	}
	s.log = s.log.With("id", s.cfg.ID, "mode", s.mode())

	// Own session, so the driver's process group and terminal signals do
	// not reach the shim; already the case when started by Start.
	if _, err := unix.Setsid(); err != nil && !errors.Is(err, unix.EPERM) {
		s.log.Warn("setsid", "error", err)
	}
	// The container's init is reparented to the shim when runc exits.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return s.startFailed(fmt.Errorf("set child subreaper: %w", err))
	}
	if err := atomicfile.Write(statePath(s.stateDir, shimPidFile),
		[]byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return s.startFailed(fmt.Errorf("write shim pid: %w", err))
	}
	go s.handleSignals(ctx)
	go s.reaper.run(ctx)

	cio, err := newContainerIO()
	if err != nil {
		return s.startFailed(err)
	}
	defer cio.close()
	stdout := newLogCopier("stdout", cio.stdoutR, s.cfg.StdoutPath, s.log)
	stderr := newLogCopier("stderr", cio.stderrR, s.cfg.StderrPath, s.log)
	stdout.start()
	stderr.start()
	defer stdout.close()
	defer stderr.close()

	pid, err := s.startContainer(ctx, cio)
	if err != nil {
		cio.closeChildEnds()
		waitDone(startFailDrain, stdout.done(), stderr.done())
		return s.startFailed(err)
	}
	log := s.log.With("container_pid", pid)

	oom, err := newOOMCounter(pid, s.cfg.Bundle)
	if err != nil {
		log.Warn("OOM kills will not be detected", "error", err)
	}
	var oomBefore uint64
	if oom != nil {
		if oomBefore, err = oom.read(); err != nil {
			log.Warn("read OOM kill counter", "error", err)
			oom = nil
		}
	}

	srv, err := listen(statePath(s.stateDir, socketFile), s.log)
	if err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return s.startFailed(fmt.Errorf("listen on shim socket: %w", err))
	}
	defer srv.close()
	srv.detachLogs = func() {
		stdout.detach(detachTimeout)
		stderr.detach(detachTimeout)
	}
	go srv.serve()
	log.Info("container started")

	st := s.waitInit(ctx, pid)
	if oom != nil && st.Signal == int(unix.SIGKILL) {
		if after, err := oom.read(); err != nil {
			log.Warn("read OOM kill counter", "error", err)
		} else if after > oomBefore {
			st.OOMKilled = true
		}
	}
	log.Info("container exited", "exit_code", st.ExitCode, "signal", st.Signal,
		"oom_killed", st.OOMKilled, "err", st.Err)
	if err := writeJSON(statePath(s.stateDir, exitFile), st, 0o600); err != nil {
		log.Error("record exit status", "error", err)
	}

	if !waitDone(drainTimeout, stdout.done(), stderr.done()) {
		log.Warn("container output not drained in time", "timeout", drainTimeout)
	}
	if err := srv.publish(st); err != nil {
		log.Error("publish exit status", "error", err)
	}
	s.waitAck(srv)
	return nil
}

// waitInit waits for the container's init to exit and returns its status.
func (s *shim) waitInit(ctx context.Context, pid int) *ExitStatus {
	ch := s.reaper.subscribe(pid)
	tick := time.NewTicker(initPoll)
	defer tick.Stop()
	for {
		select {
		case ws := <-ch:
			code, sig := waitExit(ws)
			return &ExitStatus{ExitCode: code, Signal: sig, ExitedAt: time.Now().UTC()}
		case <-ctx.Done():
			s.reaper.unsubscribe(pid)
			return &ExitStatus{ExitCode: -1, ExitedAt: time.Now().UTC(), Err: ctx.Err().Error()}
		case <-tick.C:
			if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
				continue
			}
			// Gone: either reaped just now, or never our child.
			s.reaper.reapAll()
			select {
			case ws := <-ch:
				code, sig := waitExit(ws)
				return &ExitStatus{ExitCode: code, Signal: sig, ExitedAt: time.Now().UTC()}
			default:
			}
			s.reaper.unsubscribe(pid)
			return &ExitStatus{
				ExitCode: -1,
				ExitedAt: time.Now().UTC(),
				Err:      "container init exited but was not a child of the shim: exit status unknown",
			}
		}
	}
}

// waitAck waits until the driver acknowledged the exit (socket or ack
// file), SIGTERM, or ackTimeout.
func (s *shim) waitAck(srv *server) {
	timer := time.NewTimer(ackTimeout)
	defer timer.Stop()
	tick := time.NewTicker(ackPoll)
	defer tick.Stop()
	for {
		select {
		case <-srv.acked:
			return
		case <-s.term:
			s.log.Info("terminated after exit")
			return
		case <-tick.C:
			if fileExists(statePath(s.stateDir, ackFile)) {
				srv.ack("file")
				return
			}
		case <-timer.C:
			s.log.Warn("exit not acknowledged, exiting", "timeout", ackTimeout)
			return
		}
	}
}

// handleSignals keeps SIGPIPE, SIGHUP and SIGINT from killing the shim.
// SIGTERM makes the shim exit once the container exited, without waiting
// for an acknowledgement. Catching them (rather than ignoring them) lets
// the container start with default signal dispositions.
func (s *shim) handleSignals(ctx context.Context) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-sigs:
			if sig == syscall.SIGPIPE {
				continue
			}
			s.log.Info("received signal", "signal", sig)
			if sig == syscall.SIGTERM {
				s.termOnce.Do(func() { close(s.term) })
			}
		}
	}
}

// startFailed records err in start.err for Start to report and returns it.
func (s *shim) startFailed(err error) error {
	if werr := atomicfile.Write(statePath(s.stateDir, startErrFile), []byte(err.Error()), 0o600); werr != nil {
		s.log.Error("write start error", "error", werr)
	}
	return err
}

func (s *shim) mode() string {
	if s.cfg.Mode == "" {
		return ModeRun
	}
	return s.cfg.Mode
}

// waitDone waits for every channel to close, at most timeout. It reports
// whether all closed.
func waitDone(timeout time.Duration, chans ...<-chan struct{}) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for _, ch := range chans {
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
	return true
}
