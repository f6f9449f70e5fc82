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
