package e2e

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// interactiveShell runs `nomad alloc exec -i -t ... /bin/sh` on a terminal,
// as an operator would, and types into the shell.
func (c *cluster) interactiveShell(t testing.TB, allocID, task string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nomad", "alloc", "exec", "-i", "-t", "-task", task, allocID, "/bin/sh")
	cmd.Env = os.Environ()
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		t.Fatalf("start nomad alloc exec on a terminal: %v", err)
	}
	defer tty.Close()

	var mu sync.Mutex
	var out bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	seen := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(out.String(), s)
	}
	waitFor := func(s string) {
		deadline := time.Now().Add(30 * time.Second)
		for !seen(s) {
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("interactive shell never printed %q; got:\n%q", s, out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The answer is computed by the shell, so it cannot come from the echo.
	_, _ = io.WriteString(tty, "echo answer=$((6*7)); stty size\r")
	waitFor("answer=42")
	waitFor("40 120")
	_, _ = io.WriteString(tty, "exit 5\r")
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
		t.Fatalf("interactive shell exit: %v, want exit status 5", err)
	}
}
