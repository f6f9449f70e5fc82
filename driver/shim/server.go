package shim

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// statusWriteTimeout bounds writing the exit status to one client.
const statusWriteTimeout = 2 * time.Second

// server answers on the shim's unix socket. Every connection is held open
// until the container exited; then the exit status is written to it as one
// JSON line. A client may send "ack\n" to let the shim exit.
type server struct {
	ln  *net.UnixListener
	log hclog.Logger

	mu     sync.Mutex
	status []byte // JSON line, nil until the container exited
	conns  map[net.Conn]struct{}
	closed bool

	ackOnce sync.Once
	acked   chan struct{}

	// detachLogs, set before serve, closes the task's log destinations
	// (cmdDetachLogs).
	detachLogs func()
}

// The commands a client sends on the socket, one per line, besides "ack",
// and their replies.
const (
	// cmdDetachLogs: stop writing the container's output to its log
	// paths, and close them; replied replyLogsDetached.
	cmdDetachLogs     = "detach-logs"
	replyLogsDetached = "logs-detached"
)

// listen creates the socket at path, replacing a stale one.
func listen(path string, log hclog.Logger) (*server, error) {
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return &server{
		ln:    ln,
		log:   log,
		conns: make(map[net.Conn]struct{}),
		acked: make(chan struct{}),
	}, nil
}

// serve accepts connections until close.
func (s *server) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("accept on shim socket", "error", err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		status := s.status
		s.mu.Unlock()
		if status != nil {
			s.send(conn, status)
		}
		go s.handle(conn)
	}
}

// handle reads commands from a client until it disconnects.
func (s *server) handle(conn net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		switch strings.TrimSpace(line) {
		case "ack":
			s.ack("socket")
		case cmdDetachLogs:
			if s.detachLogs != nil {
				s.detachLogs()
			}
			s.send(conn, []byte(replyLogsDetached+"\n"))
		}
		if err != nil {
			return
		}
	}
}

// ack records that the driver acknowledged the exit.
func (s *server) ack(via string) {
	s.ackOnce.Do(func() {
		s.log.Info("exit acknowledged", "via", via)
		close(s.acked)
	})
}

// publish sends the exit status to every client, now and later.
func (s *server) publish(st *ExitStatus) error {
	line, err := encodeStatus(st)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.status = line
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		s.send(c, line)
	}
	return nil
}

func (s *server) send(conn net.Conn, line []byte) {
	_ = conn.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	if _, err := conn.Write(line); err != nil {
		// A client that only sent "ack" may be gone already.
		s.log.Trace("send exit status", "error", err)
	}
	_ = conn.SetWriteDeadline(time.Time{})
}

// close stops accepting, removes the socket and drops all clients.
func (s *server) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	_ = s.ln.Close()
}
