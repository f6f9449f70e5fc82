package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/nomad/plugins/drivers"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ExecTask runs a command in the task's container and collects its output
// (script checks, `nomad alloc exec` without a terminal stream).
func (d *Driver) ExecTask(taskID string, cmd []string, timeout time.Duration) (*drivers.ExecTaskResult, error) {
	h, env, err := d.execTarget(taskID, cmd)
	if err != nil {
		return nil, err
	}
	proc, err := execProcess(h, cmd, false)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(d.ctx, timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code, err := env.runc.Exec(ctx, h.State.ContainerID, runc.ExecOptions{Process: proc, Stdout: &stdout, Stderr: &stderr})
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("exec in %s: %w", h.State.ContainerID, err)
	}
	return &drivers.ExecTaskResult{
		Stdout:     stdout.Bytes(),
		Stderr:     stderr.Bytes(),
		ExitResult: &drivers.ExitResult{ExitCode: code, Err: ctx.Err()},
	}, nil
}

// ExecTaskStreaming runs an interactive command (`nomad alloc exec -i -t`).
func (d *Driver) ExecTaskStreaming(ctx context.Context, taskID string, opts *drivers.ExecOptions) (*drivers.ExitResult, error) {
	h, env, err := d.execTarget(taskID, opts.Command)
	if err != nil {
		return nil, err
	}
	proc, err := execProcess(h, opts.Command, opts.Tty)
	if err != nil {
		return nil, err
	}
	var resize chan runc.TerminalSize
	if opts.Tty && opts.ResizeCh != nil {
		resize = make(chan runc.TerminalSize, 1)
		go func() {
			defer close(resize)
			for {
				select {
				case s, ok := <-opts.ResizeCh:
					if !ok {
						return
					}
					select {
					case resize <- runc.TerminalSize{Width: uint16(s.Width), Height: uint16(s.Height)}:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	eo := runc.ExecOptions{Process: proc, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.Tty}
	if opts.Stdin != nil {
		eo.Stdin = opts.Stdin
	}
	if resize != nil {
		eo.Resize = resize
	}
	code, err := env.runc.Exec(ctx, h.State.ContainerID, eo)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", h.State.ContainerID, err)
	}
	return &drivers.ExitResult{ExitCode: code}, nil
}

func (d *Driver) execTarget(taskID string, cmd []string) (*task.Handle, *environment, error) {
	if len(cmd) == 0 {
		return nil, nil, errors.New("exec: no command given")
	}
	h, _, env, err := d.lookup(taskID)
	if err != nil {
		return nil, nil, err
	}
	if !h.Running() {
		return nil, nil, fmt.Errorf("exec: task %s is not running", h.Config.Name)
	}
	return h, env, nil
}

// execProcess is the task's own process settings (user, env, capabilities,
// working directory) with another command.
func execProcess(h *task.Handle, cmd []string, tty bool) (specs.Process, error) {
	b, err := os.ReadFile(filepath.Join(h.State.Dir, "config.json"))
	if err != nil {
		return specs.Process{}, fmt.Errorf("exec: read runtime spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil || s.Process == nil {
		return specs.Process{}, fmt.Errorf("exec: runtime spec of %s is unreadable: %v", h.State.ContainerID, err)
	}
	p := *s.Process
	p.Args = cmd
	p.Terminal = tty
	p.ConsoleSize = nil
	if tty {
		p.Env = append(p.Env, "TERM=xterm")
	}
	return p, nil
}
