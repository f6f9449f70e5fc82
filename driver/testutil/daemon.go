package testutil

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// Daemon is a server process a test runs (a registry, a Consul agent): its
// output is kept for failure messages, and it dies with the test binary even
// when no cleanup runs.
type Daemon struct {
	cmd  *exec.Cmd
	log  lockedBuffer
	done chan struct{}
	err  error
	once sync.Once
}

// StartDaemon starts bin with args in dir ("" for the current directory),
// with nothing but PATH from the test's environment, so that the daemon
// picks up no configuration from it.
func StartDaemon(bin, dir string, args ...string) (*Daemon, error) {
	d := &Daemon{done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Dir = dir
	d.cmd.Stdout = &d.log
	d.cmd.Stderr = &d.log
	d.cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// Exited is closed when the daemon has exited; ExitErr then says how.
func (d *Daemon) Exited() <-chan struct{} { return d.done }

// ExitErr is how the daemon exited, once Exited is closed.
func (d *Daemon) ExitErr() error { return d.err }

// Stop kills the daemon and waits for it to exit. It is safe to call more
// than once; the test's cleanup calls it too.
func (d *Daemon) Stop() {
	d.once.Do(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
	})
}

// Log returns what the daemon printed so far, for failure messages.
func (d *Daemon) Log() string { return d.log.String() }

// FreePorts returns n distinct free TCP ports on 127.0.0.1. The listeners
// are held until all ports are chosen so that no port is returned twice.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// lockedBuffer collects process output written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Binary returns the daemon binary a test runs: def, or the path in the
// environment variable env when set. Without it the test is skipped,
// unless the CI environment variable is set, in which case it fails.
func Binary(t testing.TB, def, env string) string {
	t.Helper()
	bin := def
	if v := os.Getenv(env); v != "" {
		bin = v
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("%s binary %s not found (scripts/deps.sh installs it): %v", filepath.Base(def), bin, err)
		if os.Getenv("CI") == "" {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	return bin
}

// StartDaemonRetry runs start up to three times, as a free port may be
// taken between probing and binding, and stops what it started when the
// test ends.
func StartDaemonRetry[D interface{ Stop() }](t testing.TB, what string, start func(attempt int) (D, error)) D {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		d, err := start(attempt)
		if err == nil {
			t.Cleanup(d.Stop)
			return d
		}
		lastErr = err
	}
	t.Fatalf("start %s: %v", what, lastErr)
	var zero D
	return zero
}
