package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoenig/test/must"
)

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type execResult struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

func runExec(t *testing.T, r *Runc, id, script string, tty bool, stdin string, resize ...TerminalSize) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var stdout, stderr syncBuffer
	opts := ExecOptions{
		Process: specs.Process{Args: []string{"/bin/sh", "-c", script}},
		Stdout:  &stdout,
		Stderr:  &stderr,
		Tty:     tty,
	}
	if tty {
		// Like Nomad's exec stream: stdin stays open for the whole session.
		pr, pw := io.Pipe()
		t.Cleanup(func() { _ = pw.Close() })
		go func() { _, _ = pw.Write([]byte(stdin)) }()
		opts.Stdin = pr
		ch := make(chan TerminalSize, len(resize))
		for _, sz := range resize {
			ch <- sz
		}
		opts.Resize = ch
	} else {
		opts.Stdin = strings.NewReader(stdin)
	}
	start := time.Now()
	code, err := r.Exec(ctx, id, opts)
	must.NoError(t, err)
	return execResult{code, stdout.String(), stderr.String(), time.Since(start)}
}

func TestExecNoTTY(t *testing.T) {
	r := newRunc(t)
	id := runningContainer(t, r)

	t.Run("basic", func(t *testing.T) {
		res := runExec(t, r, id, "echo hello stdout; echo hello stderr >&2; exit 43", false, "")
		must.Eq(t, 43, res.code)
		must.Eq(t, "hello stdout\n", res.stdout)
		must.Eq(t, "hello stderr\n", res.stderr)
	})
	t.Run("stdin", func(t *testing.T) {
		res := runExec(t, r, id, "echo hello from command; head -n1", false, "hello from stdin\n")
		must.Eq(t, 0, res.code)
		must.Eq(t, "hello from command\nhello from stdin\n", res.stdout)
		must.Eq(t, "", res.stderr)
	})
	t.Run("stty", func(t *testing.T) {
		res := runExec(t, r, id, "stty size", false, "")
		must.Eq(t, 1, res.code)
		must.RegexMatch(t, regexp.MustCompile(`stty: .?standard input.?: (Inappropriate ioctl for device|Not a tty)\n`), res.stderr)
	})
	t.Run("signal", func(t *testing.T) {
		res := runExec(t, r, id, "kill -9 $$", false, "")
		must.Eq(t, 137, res.code)
	})
	t.Run("exit 1 is not a runc failure", func(t *testing.T) {
		res := runExec(t, r, id, "exit 1", false, "")
		must.Eq(t, 1, res.code)
	})
}

func TestExecTTY(t *testing.T) {
	r := newRunc(t)
	id := runningContainer(t, r)

	t.Run("basic", func(t *testing.T) {
		res := runExec(t, r, id, "echo hello stdout; echo hello stderr >&2; exit 43", true, "")
		must.Eq(t, 43, res.code)
		must.Eq(t, "hello stdout\r\nhello stderr\r\n", res.stdout)
		must.Eq(t, "", res.stderr)
	})
	t.Run("stty size", func(t *testing.T) {
		res := runExec(t, r, id, "sleep 1; stty size", true, "",
			TerminalSize{Width: 40, Height: 50}, TerminalSize{Width: 100, Height: 100})
		must.Eq(t, 0, res.code)
		must.Eq(t, "100 100\r\n", res.stdout)
	})
	t.Run("resize while running", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var stdout syncBuffer
		ch := make(chan TerminalSize)
		pr, pw := io.Pipe()
		defer pw.Close()
		type result struct {
			code int
			err  error
		}
		done := make(chan result, 1)
		go func() {
			code, err := r.Exec(ctx, id, ExecOptions{
				Process: specs.Process{Args: []string{"/bin/sh", "-c", "sleep 1; stty size"}},
				Stdin:   pr, Stdout: &stdout, Tty: true, Resize: ch,
			})
			done <- result{code, err}
		}()
		time.Sleep(300 * time.Millisecond)
		ch <- TerminalSize{Width: 120, Height: 33}
		res := <-done
		must.NoError(t, res.err)
		must.Eq(t, 0, res.code)
		must.Eq(t, "33 120\r\n", stdout.String())
	})
	t.Run("first size sent late", func(t *testing.T) {
		// As `nomad alloc exec -t` does: the size arrives on its own stream,
		// after the exec began. The command, which may run what was typed
		// ahead at once, starts only once the size is there: it prints
		// the machine's uptime when it starts, after the size was sent.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var stdout syncBuffer
		ch := make(chan TerminalSize, 1)
		pr, pw := io.Pipe()
		defer pw.Close()
		sent := make(chan float64, 1)
		go func() {
			ch <- TerminalSize{} // no size yet: waited past
			time.Sleep(150 * time.Millisecond)
			sent <- uptime(t)
			ch <- TerminalSize{Width: 120, Height: 40}
		}()
		code, err := r.Exec(ctx, id, ExecOptions{
			Process: specs.Process{Args: []string{"/bin/cat", "/proc/uptime"}},
			Stdin:   pr, Stdout: &stdout, Tty: true, Resize: ch,
		})
		must.NoError(t, err)
		must.Eq(t, 0, code)
		var started float64
		_, err = fmt.Sscan(stdout.String(), &started)
		must.NoError(t, err)
		must.GreaterEq(t, <-sent, started)
	})
	t.Run("tty", func(t *testing.T) {
		res := runExec(t, r, id, "tty", true, "")
		must.Eq(t, 0, res.code)
		must.RegexMatch(t, regexp.MustCompile(`^/dev/pts/\d+\r\n$`), res.stdout)
	})
	t.Run("stdin", func(t *testing.T) {
		res := runExec(t, r, id, "head -n1", true, "hello from stdin\n")
		must.Eq(t, 0, res.code)
		must.Eq(t, "hello from stdin\r\nhello from stdin\r\n", res.stdout)
	})
	t.Run("children", func(t *testing.T) {
		res := runExec(t, r, id, "(( sleep 3; echo from background ) & ); echo from main; exec sleep 1", true, "")
		must.Eq(t, 0, res.code)
		must.Eq(t, "from main\r\n", res.stdout)
		must.Less(t, 2500*time.Millisecond, res.elapsed)
	})
}

func TestExecCancel(t *testing.T) {
	r := newRunc(t)
	id := runningContainer(t, r)

	for _, tty := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		pr, pw := io.Pipe()
		start := time.Now()
		_, err := r.Exec(ctx, id, ExecOptions{
			Process: specs.Process{Args: []string{"sleep", "30"}},
			Stdin:   pr,
			Tty:     tty,
		})
		cancel()
		_ = pw.Close()
		must.ErrorIs(t, err, context.DeadlineExceeded)
		must.Less(t, 5*time.Second, time.Since(start))
	}
}

func TestExecMissingContainer(t *testing.T) {
	r := newRunc(t)
	_, err := r.Exec(context.Background(), "nope", ExecOptions{
		Process: specs.Process{Args: []string{"true"}},
	})
	must.Error(t, err)
	must.True(t, errors.Is(err, ErrNotExist), must.Sprintf("err: %v", err))
	t.Logf("error: %v", err)
}

func TestExecCommandNotFound(t *testing.T) {
	r := newRunc(t)
	id := runningContainer(t, r)
	_, err := r.Exec(context.Background(), id, ExecOptions{
		Process: specs.Process{Args: []string{"/nope"}},
	})
	must.Error(t, err)
	must.StrContains(t, err.Error(), "/nope")
	t.Logf("error: %v", err)
}

// uptime is the machine's uptime in seconds, as /proc/uptime gives it
// (a container reads the same).
func uptime(t *testing.T) float64 {
	data, err := os.ReadFile("/proc/uptime")
	must.NoError(t, err)
	var up float64
	_, err = fmt.Sscan(string(data), &up)
	must.NoError(t, err)
	return up
}
