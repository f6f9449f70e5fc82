package plugin

import (
	"errors"
	"fmt"

	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// RecoverTask re-attaches to a task after the driver or the Nomad client
// restarted. The task's shim kept it running; the driver finds the shim
// through the state stored in the handle.
func (d *Driver) RecoverTask(handle *drivers.TaskHandle) error {
	if handle == nil || handle.Config == nil {
		return errors.New("recover: no task handle")
	}
	if _, ok := d.tasks.Get(handle.Config.ID); ok {
		return nil
	}
	conf, env, err := d.current()
	if err != nil {
		return err
	}
	var st task.State
	if err := handle.GetDriverState(&st); err != nil {
		return fmt.Errorf("recover %s: decode task state: %w", handle.Config.ID, err)
	}
	// Tracked until it is in the task store: the reconciler must not take
	// it for dangling meanwhile.
	defer d.tracked.begin(st.ContainerID)()
	logger := d.logger.With("task", handle.Config.Name, "alloc_id", handle.Config.AllocID)
	proc, err := shim.Attach(st.ShimDir)
	if err != nil {
		// Without its shim nobody reports the container's exit or feeds its
		// logs; Nomad will start the task again, so the old container must go
		// to never have two.
		logger.Warn("task cannot be recovered; removing its container", "container", st.ContainerID, "error", err)
		d.cleanup(env, st, logger)
		return fmt.Errorf("recover %s: %w", st.ContainerID, err)
	}
	if h, err := parseDigest(st.ImageDigest); err == nil {
		env.images.Acquire(h)
	}
	h := task.NewHandle(handle.Config, st, proc, logger)
	d.tasks.Set(handle.Config.ID, h)
	logger.Info("task recovered", "container", st.ContainerID, "pid", st.ContainerPID)
	if st.Periodic > 0 {
		h.Background.Go(func() { d.checkpointPeriodically(conf, env, h) })
	}
	return nil
}
