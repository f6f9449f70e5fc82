package shim

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

const (
	// logBufferSize bounds the output held for a destination that is
	// not being read; the oldest data is dropped beyond it.
	logBufferSize = 256 * 1024
	// logReadSize is the size of one read from the container pipe.
	logReadSize = 32 * 1024

	reopenMinBackoff = 50 * time.Millisecond
	reopenMaxBackoff = 2 * time.Second
)

// logCopier copies one output stream of the container from the pipe the
// shim holds to a path (normally a Nomad log FIFO). The pipe is always read,
// so the container never blocks on a full pipe; output waits in a bounded
// buffer while the destination cannot be written, and the destination is
// reopened when a write fails (e.g. EPIPE after Nomad's log collector
// restarted).
type logCopier struct {
	name string
	src  io.ReadCloser
	path string
	log  hclog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	eof     bool
	stopped bool
	// detached: the destination is closed and no longer written; the
	// source is still read (the container never blocks on a full pipe).
	detached bool
	dropped  int64 // bytes dropped since the last report

	stop      chan struct{}
	readDone  chan struct{}
	writeDone chan struct{}
}

func newLogCopier(name string, src io.ReadCloser, path string, log hclog.Logger) *logCopier {
	c := &logCopier{
		name:      name,
		src:       src,
		path:      path,
		log:       log.With("stream", name, "path", path),
		stop:      make(chan struct{}),
		readDone:  make(chan struct{}),
		writeDone: make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// start begins copying.
func (c *logCopier) start() {
	go c.readLoop()
	go c.writeLoop()
}

// done is closed once the source reached EOF and everything read was
// written (or the copier was stopped).
func (c *logCopier) done() <-chan struct{} { return c.writeDone }

// close stops copying; buffered output that was not written is lost.
func (c *logCopier) close() {
	c.mu.Lock()
	if !c.stopped {
		c.stopped = true
		close(c.stop)
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	_ = c.src.Close()
}

// detach closes the destination and stops writing to it, waiting at most
// timeout for the write in flight; the source is still read, and what it
// brings dropped beyond the bounded buffer. The destination's reader then
// sees its end once its other writers are gone: Nomad's log collector
// stops waiting for a task that ended for Nomad while its container lives
// on (the source of a lazy move).
func (c *logCopier) detach(timeout time.Duration) {
	c.mu.Lock()
	c.detached = true
	c.cond.Broadcast()
	c.mu.Unlock()
	select {
	case <-c.writeDone:
	case <-time.After(timeout):
		c.log.Warn("log destination still being written after detach", "timeout", timeout)
	}
}

func (c *logCopier) readLoop() {
	defer close(c.readDone)
	chunk := make([]byte, logReadSize)
	for {
		n, err := c.src.Read(chunk)
		if n > 0 {
			c.push(chunk[:n])
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				c.log.Warn("read container output", "error", err)
			}
			c.mu.Lock()
			c.eof = true
			c.cond.Broadcast()
			c.mu.Unlock()
			return
		}
	}
}

// push appends p to the buffer, dropping the oldest data beyond its bound.
func (c *logCopier) push(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	if over := len(c.buf) - logBufferSize; over > 0 {
		if c.dropped == 0 {
			c.log.Warn("log destination not accepting output, dropping oldest output")
		}
		c.dropped += int64(over)
		n := copy(c.buf, c.buf[over:])
		c.buf = c.buf[:n]
	}
	c.cond.Signal()
}

// take waits for buffered output and returns it in into's storage; nil
// means there is nothing more to write.
func (c *logCopier) take(into []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.buf) == 0 && !c.eof && !c.stopped && !c.detached {
		c.cond.Wait()
	}
	if c.stopped || c.detached || len(c.buf) == 0 {
		return nil
	}
	data := append(into[:0], c.buf...)
	c.buf = c.buf[:0]
	if c.dropped > 0 {
		c.log.Warn("dropped output while the log destination was unavailable", "bytes", c.dropped)
		c.dropped = 0
	}
	return data
}

// unread puts data that could not be written back in front of the buffer.
func (c *logCopier) unread(data []byte) {
	if len(data) == 0 {
		return
	}
	c.mu.Lock()
	c.buf = append(append(make([]byte, 0, len(data)+len(c.buf)), data...), c.buf...)
	c.mu.Unlock()
	c.push(nil)
}

// finished reports whether there is nothing left to write.
func (c *logCopier) finished() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped || c.detached || (c.eof && len(c.buf) == 0)
}

func (c *logCopier) writeLoop() {
	defer close(c.writeDone)
	var dst *os.File
	var out []byte
	defer func() {
		if dst != nil {
			_ = dst.Close()
		}
	}()
	for {
		if dst == nil && c.path != "" {
			dst = c.open()
			if dst == nil {
				return
			}
		}
		data := c.take(out)
		if data == nil {
			return
		}
		out = data
		if dst == nil {
			continue // no destination: discard
		}
		n, err := dst.Write(data)
		if err != nil {
			c.log.Info("log destination write failed, reopening", "error", err)
			_ = dst.Close()
			dst = nil
			c.unread(data[n:])
		}
	}
}

// open opens the destination for writing, retrying with backoff until it
// exists and has a reader. It returns nil when there is nothing left to
// write or the copier was stopped.
func (c *logCopier) open() *os.File {
	backoff := reopenMinBackoff
	var lastErr error
	for {
		f, err := openWriter(c.path)
		if err == nil {
			if lastErr != nil {
				c.log.Info("log destination reopened")
			}
			return f
		}
		if lastErr == nil || lastErr.Error() != err.Error() {
			c.log.Debug("log destination not available yet", "error", err)
		}
		lastErr = err
		if c.finished() {
			return nil
		}
		select {
		case <-c.stop:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, reopenMaxBackoff)
	}
}

// openWriter opens path for writing without blocking on a FIFO that has no
// reader (ENXIO), then switches the descriptor to blocking writes.
func openWriter(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_APPEND, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		_ = unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
