package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// periodicStamp names a periodic checkpoint's directory by when it was
// taken (UTC): names sort as times do.
const periodicStamp = "20060102T150405.000Z"

// checkpointPeriodically checkpoints h's task every h.State.Periodic while
// it runs (checkpoint.interval), keeping the newest h.State.PeriodicKeep in
// data_dir/periodic/<alloc>/<task>/<time>. A checkpoint that fails is
// reported in a task event and tried again at the next interval; the task
// runs on either way.
func (d *Driver) checkpointPeriodically(conf *Config, env *environment, h *task.Handle) {
	cfg := h.Config
	logger := d.logger.With("task", cfg.Name, "alloc_id", cfg.AllocID)
	t := time.NewTicker(h.State.Periodic)
	defer t.Stop()
	for {
		select {
		case <-h.Done():
			return
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		created, frozen, err := d.checkpointRunning(conf, env, h, logger)
		if err != nil {
			logger.Warn("periodic checkpoint failed; the task runs on", "error", err)
			d.emit(cfg, fmt.Sprintf("Periodic checkpoint failed, the task runs on (next in %s): %v", h.State.Periodic, err), nil)
			continue
		}
		if created == nil {
			return // the task ended meanwhile
		}
		d.emit(cfg, fmt.Sprintf("Periodic checkpoint: %s, the task frozen %s", humanBytes(created.Bytes),
			frozen.Round(time.Millisecond)), map[string]string{
			sdk.EventBytes:  strconv.FormatInt(created.Bytes, 10),
			sdk.EventDumpMs: strconv.FormatInt(created.DumpDuration.Milliseconds(), 10),
		})
	}
}

// checkpointRunning takes one periodic checkpoint of h's running task and
// removes the ones beyond its keep. The task is paused across CRIU's dump
// (which leaves it paused) and the pack of its rootfs, so that the rootfs
// is the one its memory was dumped with, and runs again before the dump's
// files are hashed (checkpoint.CreateRunning). It returns the checkpoint
// and how long the task was paused; nil when the task is no longer
// running.
func (d *Driver) checkpointRunning(conf *Config, env *environment, h *task.Handle, logger hclog.Logger) (*checkpoint.Created, time.Duration, error) {
	defer h.LockDump()()
	if !h.Running() {
		return nil, 0, nil
	}
	cfg, cid := h.Config, h.State.ContainerID
	root, err := checkpoint.Dir(env.layout.periodic(), cfg.AllocID, cfg.Name)
	if err != nil {
		return nil, 0, err
	}
	dir := filepath.Join(root, time.Now().UTC().Format(periodicStamp))
	ctx, cancel := context.WithTimeout(d.ctx, checkpointTimeout)
	defer cancel()
	meta := d.checkpointMeta(ctx, conf, env, h)
	paused := time.Now()
	if err := env.runc.Pause(ctx, cid); err != nil {
		return nil, 0, fmt.Errorf("pause: %w", err)
	}
	var resumeErr error
	var frozen time.Duration
	created, err := checkpoint.CreateRunning(ctx, env.runc, cid, h.State.Dir, dir, meta, checkpointOptions(h), func() {
		resumeErr = env.runc.Resume(ctx, cid)
		frozen = time.Since(paused)
		if resumeErr != nil {
			logger.Error("resume after a periodic checkpoint", "error", resumeErr)
		}
	}, logger)
	if err == nil && resumeErr != nil {
		err = fmt.Errorf("resume: %w", resumeErr)
	}
	if err != nil {
		_ = checkpoint.Remove(dir)
		return nil, 0, err
	}
	if err := checkpoint.Sync(dir); err != nil {
		_ = checkpoint.Remove(dir)
		return nil, 0, err
	}
	keepNewest(root, h.State.PeriodicKeep, logger)
	return created, frozen, nil
}

// keepNewest removes all but the newest keep periodic checkpoints in root.
func keepNewest(root string, keep int, logger hclog.Logger) {
	entries, err := os.ReadDir(root)
	if err != nil {
		logger.Warn("list periodic checkpoints", "error", err)
		return
	}
	var names []string
	for _, e := range entries {
		if _, err := time.Parse(periodicStamp, e.Name()); e.IsDir() && err == nil {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	for _, name := range names[:max(0, len(names)-keep)] {
		if err := checkpoint.Remove(filepath.Join(root, name)); err != nil {
			logger.Warn("remove an old periodic checkpoint", "checkpoint", name, "error", err)
		}
	}
}

// removePeriodic removes the periodic checkpoints of cfg's task, once the
// task is destroyed.
func removePeriodic(env *environment, cfg *drivers.TaskConfig, logger hclog.Logger) {
	root, err := checkpoint.Dir(env.layout.periodic(), cfg.AllocID, cfg.Name)
	if err != nil {
		return
	}
	if err := os.RemoveAll(root); err != nil {
		logger.Warn("remove periodic checkpoints", "dir", root, "error", err)
		return
	}
	_ = os.Remove(filepath.Dir(root)) // the allocation's directory, once empty
}
