// Package runc is a thin wrapper over the runc command line. Every call runs
// the runc binary with the configured state root and turns its failures into
// Go errors that carry runc's own message.
package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/hashicorp/go-hclog"
)

var (
	// ErrNotExist is returned (wrapped) when runc reports that the
	// container does not exist.
	ErrNotExist = errors.New("container does not exist")
	// ErrNotRunning is returned (wrapped) when runc reports that the
	// container is not running, e.g. when signalling a stopped container.
	ErrNotRunning = errors.New("container not running")
)

// Runc runs the runc binary at Path with Root as its state directory.
type Runc struct {
	// Path is the runc binary.
	Path string
	// Root is runc's --root state directory, e.g. /run/ferry/runc.
	Root string
	// Logger receives debug output about the commands run. May be nil.
	Logger hclog.Logger
}

func (r *Runc) logger() hclog.Logger {
	if r.Logger == nil {
		return hclog.NewNullLogger()
	}
	return r.Logger
}

func (r *Runc) path() string {
	if r.Path == "" {
		return "runc"
	}
	return r.Path
}

// globalArgs are the flags placed before the runc sub-command.
func (r *Runc) globalArgs() []string {
	args := []string{"--log-format", "json"}
	if r.Root != "" {
		args = append(args, "--root", r.Root)
	}
	return args
}

// command builds a runc command: runc <global flags> args...
func (r *Runc) command(ctx context.Context, args ...string) *exec.Cmd {
	full := append(r.globalArgs(), args...)
	return exec.CommandContext(ctx, r.path(), full...)
}

// GlobalArgs returns the flags that this Runc puts before every sub-command
// (state root and log format), for callers that start runc themselves.
func (r *Runc) GlobalArgs() []string {
	return r.globalArgs()
}

// output runs runc with args and returns its stdout. A failure is returned as
// an error naming the sub-command and carrying runc's message; ErrNotExist is
// wrapped in when runc says the container does not exist.
func (r *Runc) output(ctx context.Context, what string, args ...string) ([]byte, error) {
	cmd := r.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	r.logger().Trace("running runc", "args", cmd.Args)
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), r.wrapErr(ctx, what, err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// wrapErr builds the error for a failed runc invocation.
func (r *Runc) wrapErr(ctx context.Context, what string, err error, stderr []byte) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("runc %s: %w", what, ctxErr)
	}
	msg := ParseLog(stderr)
	if isNotExist(msg) {
		return fmt.Errorf("runc %s: %w", what, ErrNotExist)
	}
	if strings.Contains(msg, "container not running") {
		return fmt.Errorf("runc %s: %w", what, ErrNotRunning)
	}
	if msg == "" {
		return fmt.Errorf("runc %s: %w", what, err)
	}
	return fmt.Errorf("runc %s: %w: %s", what, err, msg)
}

func isNotExist(msg string) bool {
	return strings.Contains(msg, "container does not exist")
}
