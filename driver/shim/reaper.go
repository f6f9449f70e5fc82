package shim

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxUnclaimed bounds the exit statuses kept for pids nobody waits for yet.
const maxUnclaimed = 64

// reaper reaps every child of the shim with wait4(-1). As a child
// subreaper the shim inherits the container's init once runc exits, so all
// waiting for processes goes through here rather than os/exec.
type reaper struct {
	mu        sync.Mutex
	unclaimed map[int]unix.WaitStatus
	order     []int
	waiters   map[int]chan unix.WaitStatus
}

func newReaper() *reaper {
	return &reaper{
		unclaimed: make(map[int]unix.WaitStatus),
		waiters:   make(map[int]chan unix.WaitStatus),
	}
}

// run reaps on every SIGCHLD, and once a second in case a signal was
// coalesced, until ctx is done.
func (r *reaper) run(ctx context.Context) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	r.reapAll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-tick.C:
		}
		r.reapAll()
	}
}

// reapAll collects every child that has exited.
func (r *reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.deliver(pid, ws)
	}
}

func (r *reaper) deliver(pid int, ws unix.WaitStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiters[pid]; ok {
		delete(r.waiters, pid)
		ch <- ws
		return
	}
	r.unclaimed[pid] = ws
	r.order = append(r.order, pid)
	for len(r.order) > maxUnclaimed {
		delete(r.unclaimed, r.order[0])
		r.order = r.order[1:]
	}
}

// subscribe returns a channel that receives pid's exit status, at once if
// it was already reaped.
func (r *reaper) subscribe(pid int) <-chan unix.WaitStatus {
	ch := make(chan unix.WaitStatus, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if ws, ok := r.unclaimed[pid]; ok {
		delete(r.unclaimed, pid)
		ch <- ws
		return ch
	}
	r.waiters[pid] = ch
	return ch
}

// unsubscribe drops a subscription made with subscribe.
func (r *reaper) unsubscribe(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiters, pid)
}

// wait blocks until pid was reaped or ctx is done.
func (r *reaper) wait(ctx context.Context, pid int) (unix.WaitStatus, error) {
	ch := r.subscribe(pid)
	select {
	case ws := <-ch:
		return ws, nil
	case <-ctx.Done():
		r.unsubscribe(pid)
		return 0, ctx.Err()
	}
}

// waitExit converts a wait status to an exit code and signal number.
func waitExit(ws unix.WaitStatus) (code, sig int) {
	switch {
	case ws.Exited():
		return ws.ExitStatus(), 0
	case ws.Signaled():
		s := int(ws.Signal())
		return 128 + s, s
	default:
		return -1, 0
	}
}
