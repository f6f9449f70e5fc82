package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// defaultPath is used when the exec'd process has no PATH of its own.
	defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// cancelKillDelay is how long runc has to exit after the exec'd
	// process was killed on cancellation.
	cancelKillDelay = 2 * time.Second
)

// TerminalSize is a terminal window size in character cells.
type TerminalSize struct {
	Width  uint16
	Height uint16
}

// ExecOptions describes a process to run in an existing container.
type ExecOptions struct {
	// Process is the process to run: Args, Env, Cwd, User and so on.
	// Terminal is set from Tty.
	Process specs.Process
	// Stdin is copied to the process; may be nil. With Tty the copy is
	// not waited for: Exec returns when the process exits even if Stdin
	// has not reached EOF.
	Stdin io.Reader
	// Stdout and Stderr receive the process output; nil discards it. With
	// Tty all output goes to Stdout.
	Stdout, Stderr io.Writer
	// Tty runs the process with a terminal.
	Tty bool
	// Resize delivers terminal size changes; only used with Tty.
	Resize <-chan TerminalSize
}

// Exec runs a process in container id and returns its exit code: the
// process's exit status, or 128+N when it was killed by signal N. Without
// Tty, Exec returns once the process has exited and its output has been
// copied. With Tty only the lead process is waited for, like
// `docker exec -it`. Cancelling ctx kills the process and runc.
func (r *Runc) Exec(ctx context.Context, id string, opts ExecOptions) (int, error) {
	dir, err := os.MkdirTemp("", "ferry-exec-")
	if err != nil {
		return -1, fmt.Errorf("runc exec %s: %w", id, err)
	}
	defer os.RemoveAll(dir)

	procFile := filepath.Join(dir, "process.json")
	pidFile := filepath.Join(dir, "pid")
	logFile := filepath.Join(dir, "runc.log")
	if err := writeProcess(procFile, opts.Process, opts.Tty); err != nil {
		return -1, fmt.Errorf("runc exec %s: %w", id, err)
	}

	args := append(r.globalArgs(), "--log", logFile,
		"exec", "--process", procFile, "--pid-file", pidFile, id)
	cmd := exec.CommandContext(ctx, r.path(), args...)
	// On cancellation kill the process and let runc reap it and exit; runc
	// itself is killed if it has not started the process yet, or has not
	// exited cancelKillDelay later.
	cmd.Cancel = func() error {
		if killPidFile(pidFile) {
			return nil
		}
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = cancelKillDelay

	log := r.logger().With("id", id, "tty", opts.Tty)
	log.Debug("exec in container", "args", opts.Process.Args)

	var code int
	if opts.Tty {
		code, err = execTTY(ctx, cmd, opts)
	} else {
		code, err = execPipes(ctx, cmd, opts)
	}
	if err != nil {
		return -1, fmt.Errorf("runc exec %s: %w", id, err)
	}
	// runc exits 1 or 255 when it fails itself; its log tells the two apart
	// from a process that exited with the same status.
	if code == 1 || code == 255 {
		data, _ := os.ReadFile(logFile)
		if msg := ParseLog(data); msg != "" {
			if isNotExist(msg) {
				return -1, fmt.Errorf("runc exec %s: %w", id, ErrNotExist)
			}
			return -1, fmt.Errorf("runc exec %s: %s", id, msg)
		}
	}
	log.Debug("exec finished", "exit_code", code)
	return code, nil
}

// writeProcess writes the process spec for `runc exec --process`.
func writeProcess(path string, p specs.Process, tty bool) error {
	p.Terminal = tty
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if len(p.Args) == 0 {
		return errors.New("no command given")
	}
	hasPath := false
	for _, e := range p.Env {
		if strings.HasPrefix(e, "PATH=") {
			hasPath = true
			break
		}
	}
	if !hasPath {
		p.Env = append(append([]string(nil), p.Env...), defaultPath)
	}
	data, err := json.Marshal(&p)
	if err != nil {
		return fmt.Errorf("encode process: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write process: %w", err)
	}
	return nil
}

// killPidFile sends SIGKILL to the process whose pid runc wrote to path
// and reports whether it did.
func killPidFile(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, syscall.SIGKILL) == nil
}

// exitCode turns the result of waiting for runc into the exit code runc
// reported. runc exits with the process status, 128+N for a signal.
func exitCode(ctx context.Context, cmd *exec.Cmd, waitErr error) (int, error) {
	if ctx.Err() != nil {
		return -1, ctx.Err()
	}
	if cmd.ProcessState == nil {
		return -1, waitErr
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, fmt.Errorf("runc killed by signal %s", ws.Signal())
	}
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return -1, waitErr
	}
	return cmd.ProcessState.ExitCode(), nil
}

// onlyWriter and onlyReader hide optional interfaces so io.Copy uses plain
// reads and writes.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
