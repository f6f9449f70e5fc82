package plugin

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/shim"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// taskShim is the shim configuration that runs task cfg's container, as
// its state st names it.
func taskShim(conf *Config, env *environment, cfg *drivers.TaskConfig, st task.State) shim.Config {
	return shim.Config{
		ID:         st.ContainerID,
		Bundle:     st.Dir,
		RuncPath:   conf.RuncPath,
		RuncRoot:   env.layout.runcRoot(),
		StdoutPath: cfg.StdoutPath,
		StderrPath: cfg.StderrPath,
		Mode:       shim.ModeRun,
	}
}

// restoringShim is sc restoring the container from the CRIU images of the
// checkpoint in dir instead, with opts; CRIU's log goes to the task
// directory's restore/.
func restoringShim(sc shim.Config, dir string, opts runc.RestoreOptions) shim.Config {
	sc.Mode = shim.ModeRestore
	sc.ImagePath = checkpoint.ImagesDir(dir)
	sc.WorkPath = filepath.Join(sc.Bundle, "restore")
	sc.RestoreArgs = runc.RestoreArgs(opts)
	return sc
}

// restoreInPlaceTimeout bounds bringing a dumped task back on its node.
const restoreInPlaceTimeout = 2 * time.Minute

// restoreInPlace brings back a task that was dumped for a move whose
// checkpoint could not be completed after the dump (checkpoint.ErrDumped:
// the disk filled up while the rootfs was packed, say). CRIU's images in
// dir are whole and the task directory is untouched, its overlay still
// mounted: the container is restored from them on this node under a new
// shim, and its handle takes the dumped one's place in the task store.
// The caller then stops it as it would have without a checkpoint, so that
// the task ends by its own kill_signal rather than at the dump.
//
// dir is kept whatever happens: if the restore fails too, CRIU's images are
// all that is left of the task's memory.
func (d *Driver) restoreInPlace(conf *Config, env *environment, h *task.Handle, dir string, logger hclog.Logger) (*task.Handle, error) {
	ctx, cancel := context.WithTimeout(d.ctx, restoreInPlaceTimeout)
	defer cancel()
	select {
	case <-h.Done():
	case <-ctx.Done():
		return nil, fmt.Errorf("restore in place: the dumped container's shim did not report its exit: %w", ctx.Err())
	}
	if err := h.ReleaseAndWait(ctx); err != nil {
		return nil, fmt.Errorf("restore in place: %w", err)
	}
	st := h.State
	cfg := h.Config
	opts := runc.RestoreOptions{TCPEstablished: st.TCPEstablished, FileLocks: st.FileLocks}
	sc := restoringShim(taskShim(conf, env, cfg, st), dir, opts)
	proc, err := shim.Start(ctx, env.self, st.ShimDir, sc)
	if err != nil {
		if tail := runc.CriuLogTail(filepath.Join(sc.WorkPath, runc.RestoreLog)); tail != "" {
			return nil, fmt.Errorf("restore in place: %w; %s: %s", err, runc.RestoreLog, tail)
		}
		return nil, fmt.Errorf("restore in place: %w", err)
	}
	st.StartedAt = time.Now()
	st.ShimPID, st.ContainerPID = proc.ShimPID, proc.ContainerPID
	restored := task.NewHandle(cfg, st, proc, logger)
	d.tasks.Set(cfg.ID, restored)
	logger.Info("task restored in place after a failed checkpoint", "container", st.ContainerID, "pid", proc.ContainerPID, "images", sc.ImagePath)
	return restored, nil
}
