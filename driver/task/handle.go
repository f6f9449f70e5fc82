package task

import (
	"context"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// Handle is a task the driver runs: it waits on the task's shim in the
// background and remembers how the task ended.
type Handle struct {
	Config *drivers.TaskConfig
	State  State

	proc   *shim.Process
	logger hclog.Logger
	done   chan struct{}

	mu          sync.RWMutex
	exit        *drivers.ExitResult
	completedAt time.Time

	// dumping is held by whoever checkpoints the task (a move, a periodic
	// checkpoint): one dump at a time.
	dumping sync.Mutex

	// vacated: Done was closed by Vacate, before the container's exit;
	// gone is closed at that exit.
	vacateOnce sync.Once
	vacated    bool
	gone       chan struct{}

	// Background is the driver's work on the task that runs beside it
	// and ends once the task has exited (periodic checkpoints): what it
	// leaves is removed only after it ended.
	Background sync.WaitGroup
}

// NewHandle starts waiting on proc; Done is closed when the task has exited.
func NewHandle(cfg *drivers.TaskConfig, st State, proc *shim.Process, logger hclog.Logger) *Handle {
	h := &Handle{Config: cfg, State: st, proc: proc, logger: logger, done: make(chan struct{}), gone: make(chan struct{})}
	go h.wait()
	return h
}

func (h *Handle) wait() {
	defer close(h.gone)
	st, err := h.proc.Wait(context.Background())
	res := &drivers.ExitResult{}
	switch {
	case err != nil:
		res.Err = err
		res.ExitCode = -1
	default:
		res.ExitCode = st.ExitCode
		res.Signal = st.Signal
		res.OOMKilled = st.OOMKilled
		if st.Err != "" {
			res.Err = &exitError{msg: st.Err}
		}
	}
	h.logger.Debug("task exited", "container", h.State.ContainerID, "exit_code", res.ExitCode, "signal", res.Signal, "oom", res.OOMKilled, "error", res.Err)
	h.end(res)
}

// end records res as how the task ended and closes Done, once: the first
// of the container's exit and Vacate wins.
func (h *Handle) end(res *drivers.ExitResult) {
	h.vacateOnce.Do(func() {
		h.mu.Lock()
		h.exit = res
		h.completedAt = time.Now()
		h.mu.Unlock()
		close(h.done)
	})
}

// Vacate reports the task ended with res now, for Nomad (Done, ExitResult),
// while its container lives on: the source of a lazy move, paused, whose
// memory its CRIU still serves. The shim first closes the task's log
// FIFOs, whose reader, Nomad's log collector, would otherwise wait for
// them to end. Gone is closed when the container has really exited;
// remove nothing of it before.
func (h *Handle) Vacate(res *drivers.ExitResult) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.proc.DetachLogs(ctx); err != nil {
		h.logger.Warn("detach the task's logs", "error", err)
	}
	h.vacateOnce.Do(func() {
		h.mu.Lock()
		h.exit = res
		h.completedAt = time.Now()
		h.vacated = true
		h.mu.Unlock()
		close(h.done)
	})
}

// Vacated reports whether Vacate ended the task before its container
// exited.
func (h *Handle) Vacated() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.vacated
}

// LockDump waits until no other checkpoint of the task runs, and holds
// that until the returned function is called.
func (h *Handle) LockDump() (unlock func()) {
	h.dumping.Lock()
	return h.dumping.Unlock
}

// Gone is closed once the container has exited (its shim reported it).
func (h *Handle) Gone() <-chan struct{} { return h.gone }

type exitError struct{ msg string }

func (e *exitError) Error() string { return e.msg }

// Done is closed once the task has exited.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Running reports whether the task has not exited yet.
func (h *Handle) Running() bool {
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// ExitResult is how the task ended, or nil while it runs.
func (h *Handle) ExitResult() *drivers.ExitResult {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.exit == nil {
		return nil
	}
	return h.exit.Copy()
}

// Release tells the shim the driver has the exit status and it may exit.
func (h *Handle) Release() { h.proc.Ack() }

// ReleaseAndWait is Release, then waits until ctx ends for the shim to be
// gone: a task restored in place starts a new shim in the same directory.
func (h *Handle) ReleaseAndWait(ctx context.Context) error { return h.proc.AckAndWait(ctx) }

// Status is the task as InspectTask reports it.
func (h *Handle) Status() *drivers.TaskStatus {
	h.mu.RLock()
	defer h.mu.RUnlock()
	s := &drivers.TaskStatus{
		ID:          h.Config.ID,
		Name:        h.Config.Name,
		StartedAt:   h.State.StartedAt,
		CompletedAt: h.completedAt,
		State:       drivers.TaskStateRunning,
		DriverAttributes: map[string]string{
			"container_id": h.State.ContainerID,
			"image":        h.State.ImageRef,
			"image_digest": h.State.ImageDigest,
			"platform":     h.State.Platform,
		},
	}
	if h.exit != nil {
		s.State = drivers.TaskStateExited
		s.ExitResult = h.exit.Copy()
	}
	return s
}
