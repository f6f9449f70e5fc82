package shim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	// errNoStatus is ExitStatus.Err when the shim is gone without
	// recording a status.
	errNoStatus = "shim exited without a status"
	// redialInterval is how often Wait retries a live shim's socket.
	redialInterval = 100 * time.Millisecond
	// ackTimeoutClient bounds sending the acknowledgement.
	ackTimeoutClient = 2 * time.Second
)

// Process is a handle on a running (or finished) shim.
type Process struct {
	// StateDir is the shim's state directory.
	StateDir string
	// ShimPID is the pid of the shim process.
	ShimPID int
	// ContainerPID is the pid of the container's init process, as seen
	// from the host.
	ContainerPID int
}

// Attach returns a handle on the shim of stateDir, e.g. after a driver
// restart. It fails unless the shim is alive or has recorded an exit
// status.
func Attach(stateDir string) (*Process, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("attach shim %s: %w", stateDir, err)
	}
	p := &Process{StateDir: abs}
	shimPid, shimErr := readPid(statePath(abs, shimPidFile))
	p.ShimPID = shimPid
	if pid, err := readPid(statePath(abs, containerPid)); err == nil {
		p.ContainerPID = pid
	}
	if p.Alive() || fileExists(statePath(abs, exitFile)) {
		return p, nil
	}
	if shimErr != nil {
		return nil, fmt.Errorf("attach shim %s: no running shim and no exit status: %w", abs, shimErr)
	}
	return nil, fmt.Errorf("attach shim %s: shim (pid %d) is not running and recorded no exit status", abs, shimPid)
}

// Alive reports whether the shim process is running.
func (p *Process) Alive() bool {
	return shimAlive(p.ShimPID, p.StateDir)
}

// Wait blocks until the container exited and returns its status. If the
// shim is gone it returns the status the shim recorded, or a status whose
// Err says that there is none. Wait fails only when ctx is done.
func (p *Process) Wait(ctx context.Context) (*ExitStatus, error) {
	for {
		conn, err := p.dial(ctx)
		if err == nil {
			st, err := readStatus(ctx, conn)
			_ = conn.Close()
			if err == nil {
				return st, nil
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait for shim %s: %w", p.StateDir, ctx.Err())
			}
			// The connection ended without a status: the shim died or
			// exited. Fall through to what it recorded.
			return p.recordedStatus(), nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for shim %s: %w", p.StateDir, ctx.Err())
		}
		if !p.Alive() {
			return p.recordedStatus(), nil
		}
		// Alive but not answering (yet): try again.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for shim %s: %w", p.StateDir, ctx.Err())
		case <-time.After(redialInterval):
		}
	}
}

// Ack tells the shim that the driver has the exit status, so it can exit.
func (p *Process) Ack() {
	_ = os.WriteFile(statePath(p.StateDir, ackFile), nil, 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), ackTimeoutClient)
	defer cancel()
	conn, err := p.dial(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(ackTimeoutClient))
	_, _ = conn.Write([]byte("ack\n"))
}

// AckAndWait acknowledges the exit status (Ack) and waits, until ctx ends,
// for the shim to be gone, so that another may start in its directory.
func (p *Process) AckAndWait(ctx context.Context) error {
	p.Ack()
	for shimAlive(p.ShimPID, p.StateDir) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("shim %d of %s still running after its acknowledgement: %w", p.ShimPID, p.StateDir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// DetachLogs has the shim close the task's log paths and write no more
// of the container's output to them, while the container lives on: Nomad's
// log collector then sees the task's output end. It returns once the shim
// says so.
func (p *Process) DetachLogs(ctx context.Context) error {
	conn, err := p.dial(ctx)
	if err != nil {
		return fmt.Errorf("detach logs of shim %s: %w", p.StateDir, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte(cmdDetachLogs + "\n")); err != nil {
		return fmt.Errorf("detach logs of shim %s: %w", p.StateDir, err)
	}
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) == replyLogsDetached {
			return nil
		}
		if err != nil {
			return fmt.Errorf("detach logs of shim %s: %w", p.StateDir, err)
		}
	}
}

func (p *Process) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", statePath(p.StateDir, socketFile))
}

// recordedStatus returns exit.json, or a status saying there is none.
func (p *Process) recordedStatus() *ExitStatus {
	st, err := readExitStatus(p.StateDir)
	if err != nil {
		return &ExitStatus{ExitCode: -1, ExitedAt: time.Now().UTC(), Err: errNoStatus}
	}
	return st
}

// readStatus reads the exit status line from a shim connection.
func readStatus(ctx context.Context, conn net.Conn) (*ExitStatus, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var st ExitStatus
	if err := json.Unmarshal(bytes.TrimSpace(line), &st); err != nil {
		return nil, fmt.Errorf("decode exit status: %w", err)
	}
	return &st, nil
}

// shimAlive reports whether pid is a live (not zombie) shim process for
// stateDir; checking the command line guards against pid reuse.
func shimAlive(pid int, stateDir string) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		switch stat[i+2] {
		case 'Z', 'X', 'x':
			return false
		}
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	n := len(args)
	return n >= 3 && args[n-2] == Command && args[n-1] == stateDir
}
