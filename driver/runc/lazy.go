package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// LazyCheckpoint is a lazy (post-copy) dump in progress: `runc checkpoint
// --lazy-pages`, whose CRIU writes every image but the task's memory, then
// serves that memory from the stopped task to one page client (a
// destination's `criu lazy-pages`), and removes the container once every
// page was served.
//
// CRIU's page server listens on every address of the node, at the port
// given, whatever address it is given, and serves the first client that
// connects: protect it (TLS through the container's CRIU configuration
// file, see CriuConfigAnnotation, or a firewall). If the transfer fails,
// CRIU resumes the task; and a client that disconnects early can look to
// CRIU like a transfer that finished. The destination alone knows whether
// every page arrived.
type LazyCheckpoint struct {
	id       string
	cmd      *exec.Cmd
	logDir   string
	ready    chan error
	done     chan struct{}
	waitErr  error
	stderr   bytes.Buffer
	stopOnce sync.Once
}

// StartLazyCheckpoint starts a lazy dump of container id, its page server
// listening at pageServer ("host:port"; CRIU listens on every address at
// that port). opts.LeaveRunning must not be set. The dump runs until every
// page was served, Stop, or ctx ends (which kills runc; CRIU then resumes
// the task).
func (r *Runc) StartLazyCheckpoint(ctx context.Context, id string, opts CheckpointOptions, pageServer string) (*LazyCheckpoint, error) {
	if opts.LeaveRunning {
		return nil, fmt.Errorf("runc checkpoint --lazy-pages %s: the task cannot keep running while its memory is served", id)
	}
	args, err := checkpointArgs(id, opts)
	if err != nil {
		return nil, fmt.Errorf("runc checkpoint --lazy-pages %s: %w", id, err)
	}
	if pageServer == "" {
		return nil, fmt.Errorf("runc checkpoint --lazy-pages %s: no page server address", id)
	}
	// The ready byte comes on a pipe: runc refuses a FIFO. The child's
	// end is its fd 3, its first extra file.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("runc checkpoint --lazy-pages %s: %w", id, err)
	}
	lazy := append([]string{args[0], "--lazy-pages", "--page-server", pageServer, "--status-fd", "3"}, args[1:]...)
	l := &LazyCheckpoint{id: id, cmd: r.command(ctx, lazy...), logDir: opts.WorkPath, ready: make(chan error, 1), done: make(chan struct{})}
	if l.logDir == "" {
		l.logDir = opts.ImagePath
	}
	l.cmd.ExtraFiles = []*os.File{pw}
	l.cmd.Stderr = &l.stderr
	r.logger().Debug("checkpointing container lazily", "id", id, "image_path", opts.ImagePath, "page_server", pageServer)
	if err := l.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("runc checkpoint --lazy-pages %s: %w", id, err)
	}
	pw.Close()
	go func() {
		defer pr.Close()
		var b [1]byte
		_, err := io.ReadFull(pr, b[:])
		if err == nil {
			l.ready <- nil
			return
		}
		// EOF: runc ended without the page server ever being ready.
		<-l.done
		l.ready <- fmt.Errorf("page server never ready: %w", l.failure())
	}()
	go func() {
		err := l.cmd.Wait()
		if err != nil {
			l.waitErr = err
		}
		close(l.done)
	}()
	return l, nil
}

// Ready is sent nil once the images are written and the page server
// listens, or an error if the dump ended first (the task runs on).
func (l *LazyCheckpoint) Ready() <-chan error { return l.ready }

// Done is closed when runc has exited.
func (l *LazyCheckpoint) Done() <-chan struct{} { return l.done }

// Err is, once Done is closed, nil if CRIU served the pages to the end
// (the container is then removed), or why not, with the end of CRIU's
// dump.log (the task was resumed, unless it was stopped otherwise).
func (l *LazyCheckpoint) Err() error {
	<-l.done
	if l.waitErr == nil {
		return nil
	}
	return l.failure()
}

// failure is the error of a runc that exited unsuccessfully.
func (l *LazyCheckpoint) failure() error {
	err := l.waitErr
	if err == nil {
		err = errors.New("exited")
	}
	what := "checkpoint --lazy-pages " + l.id
	if msg := ParseLog(l.stderr.Bytes()); msg != "" {
		err = fmt.Errorf("runc %s: %s (%w)", what, msg, err)
	} else {
		err = fmt.Errorf("runc %s: %w", what, err)
	}
	if tail := CriuLogTail(filepath.Join(l.logDir, DumpLog)); tail != "" {
		err = fmt.Errorf("%w; %s: %s", err, DumpLog, tail)
	}
	return err
}

// Pid is runc's process ID.
func (l *LazyCheckpoint) Pid() int { return l.cmd.Process.Pid }

// CriuPid is the process ID of the CRIU runc drives (its child), which
// serves the pages and outlives runc if runc alone is killed; 0 when it
// is gone. Any of runc's threads may have started it: each lists its own
// children.
func (l *LazyCheckpoint) CriuPid() int {
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(l.Pid()), "task", "*", "children"))
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(data) {
			if pid, err := strconv.Atoi(string(f)); err == nil {
				return pid
			}
		}
	}
	return 0
}

// Stop ends the dump before its end: it kills CRIU (which resumes the
// task it had stopped) and runc, and waits for runc.
func (l *LazyCheckpoint) Stop() {
	l.stopOnce.Do(func() {
		if pid := l.CriuPid(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = l.cmd.Process.Kill()
	})
	<-l.done
}
