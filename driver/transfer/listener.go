package transfer

import (
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// limitListener accepts at most cap(slots) connections at a time: while
// that many are open, the next waits, unaccepted, until one closes (its
// client may give up meanwhile).
type limitListener struct {
	net.Listener
	slots  chan struct{}
	logger hclog.Logger
	warned time.Time // when the limit was last logged; Accept is not called concurrently

	closeOnce sync.Once
	closed    chan struct{}
}

func newLimitListener(ln net.Listener, n int, logger hclog.Logger) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), logger: logger, closed: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		if now := time.Now(); now.Sub(l.warned) >= time.Minute {
			l.warned = now
			l.logger.Warn("transfer connections at their limit; new ones wait (transfer max_connections)", "max_connections", cap(l.slots))
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

// Close stops listening, and ends an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitConn frees its slot when closed.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
