package runc

import (
	"context"
	"errors"
	"strconv"
	"syscall"
)

// Kill sends sig to the init process of container id, or to every process
// of the container when all is set.
func (r *Runc) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	args = append(args, id, strconv.Itoa(int(sig)))
	r.logger().Debug("killing container", "id", id, "signal", sig, "all", all)
	_, err := r.output(ctx, "kill "+id, args...)
	return err
}

// Delete removes container id and its resources. With force a running
// container is killed first. A container that does not exist is not an
// error.
func (r *Runc) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	args = append(args, id)
	r.logger().Debug("deleting container", "id", id, "force", force)
	_, err := r.output(ctx, "delete "+id, args...)
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	return err
}

// Pause freezes every process of container id (its freezer cgroup). A
// source serving its memory lazily is paused once its page server is
// ready: if the transfer then fails, CRIU's resuming of the task leaves it
// frozen, never running beside its copy; and CRIU ends a successful
// transfer only once the container is resumed.
func (r *Runc) Pause(ctx context.Context, id string) error {
	r.logger().Debug("pausing container", "id", id)
	_, err := r.output(ctx, "pause "+id, "pause", id)
	return err
}

// Resume thaws the processes of container id that Pause froze.
func (r *Runc) Resume(ctx context.Context, id string) error {
	r.logger().Debug("resuming container", "id", id)
	_, err := r.output(ctx, "resume "+id, "resume", id)
	return err
}
