package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// periodicStamp names a periodic checkpoint's directory by when it was
// taken (UTC): names sort as times do.
const periodicStamp = "20060102T150405.000Z"

// checkpointPeriodically checkpoints h's task every h.State.Periodic while
// it runs (checkpoint.interval), keeping the newest h.State.PeriodicKeep in
// data_dir/periodic/<alloc>/<task>/<time>, and as many copies of them off
// the node (keepOffNode). A checkpoint that fails is reported in a task
// event and tried again at the next interval; the task runs on either way.
func (d *Driver) checkpointPeriodically(conf *Config, env *environment, h *task.Handle) {
	cfg := h.Config
	logger := d.logger.With("task", cfg.Name, "alloc_id", cfg.AllocID)
	if !env.shared {
		d.emit(cfg, "Periodic checkpoints stay on this node: set the plugin's checkpoint_dir to storage every client shares for the task to resume from one after a loss of this node", nil)
	}
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
		taken, err := d.checkpointRunning(conf, env, h, logger)
		if err != nil {
			logger.Warn("periodic checkpoint failed; the task runs on", "error", err)
			d.emit(cfg, fmt.Sprintf("Periodic checkpoint failed, the task runs on (next in %s): %v", h.State.Periodic, err), nil)
			continue
		}
		if taken == nil {
			return // the task ended meanwhile
		}
		where := d.keepOffNode(env, h, taken, logger)
		details := map[string]string{
			sdk.EventBytes:    strconv.FormatInt(taken.Bytes, 10),
			sdk.EventDumpMs:   strconv.FormatInt(taken.created.DumpDuration.Milliseconds(), 10),
			sdk.EventFrozenMs: strconv.FormatInt(taken.Frozen.Milliseconds(), 10),
		}
		for _, c := range taken.Copies {
			details[sdk.EventCopyMs] = strconv.FormatInt(c.Took.Milliseconds(), 10)
		}
		d.emit(cfg, fmt.Sprintf("Periodic checkpoint: %s, the task frozen %s; %s", humanBytes(taken.Bytes),
			taken.Frozen.Round(time.Millisecond), where), details)
	}
}

// periodicTaken is a periodic checkpoint just taken, in dir.
type periodicTaken struct {
	catalog.PeriodicCheckpoint
	dir     string
	created *checkpoint.Created
}

// checkpointRunning takes one periodic checkpoint of h's running task and
// removes the ones beyond its keep. The task is paused across CRIU's dump
// (which leaves it paused) and the pack of its rootfs, so that the rootfs
// is the one its memory was dumped with, and runs again before the dump's
// files are hashed (checkpoint.CreateRunning). It returns the checkpoint,
// with how long the task was paused; nil when the task is no longer
// running.
func (d *Driver) checkpointRunning(conf *Config, env *environment, h *task.Handle, logger hclog.Logger) (*periodicTaken, error) {
	defer h.LockDump()()
	if !h.Running() {
		return nil, nil
	}
	cfg, cid := h.Config, h.State.ContainerID
	root, err := checkpoint.Dir(env.layout.periodic(), cfg.AllocID, cfg.Name)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	name := now.Format(periodicStamp)
	dir := filepath.Join(root, name)
	ctx, cancel := context.WithTimeout(d.ctx, checkpointTimeout)
	defer cancel()
	meta := d.checkpointMeta(ctx, conf, env, h)
	paused := time.Now()
	if err := env.runc.Pause(ctx, cid); err != nil {
		return nil, fmt.Errorf("pause: %w", err)
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
		return nil, err
	}
	if err := checkpoint.Sync(dir); err != nil {
		_ = checkpoint.Remove(dir)
		return nil, err
	}
	keepNewest(root, h.State.PeriodicKeep, logger)
	return &periodicTaken{
		PeriodicCheckpoint: catalog.PeriodicCheckpoint{
			Name: name, TakenAt: now, Bytes: created.Bytes, ManifestSHA256: created.Digest, Frozen: frozen,
		},
		dir: dir, created: created,
	}, nil
}

// keepOffNode copies the periodic checkpoint just taken off this node,
// into the shared checkpoint_dir (periodic/<alloc>/<task>/<time>, the
// newest h.State.PeriodicKeep kept), and records it in the task's periodic
// record in Consul with its copy, or why it has none: a replacement
// resumes only from a checkpoint with a copy. It returns where the
// checkpoint is kept, for the task event.
func (d *Driver) keepOffNode(env *environment, h *task.Handle, taken *periodicTaken, logger hclog.Logger) string {
	cfg := h.Config
	where := "kept on this node only"
	root, err := env.periodicCopies(cfg.AllocID, cfg.Name)
	switch {
	case err != nil:
		taken.CopyError = err.Error()
	case root == "":
		taken.CopyError = "no shared checkpoint_dir"
	default:
		start := time.Now()
		if err := checkpoint.Copy(taken.dir, filepath.Join(root, taken.Name)); err != nil {
			logger.Warn("copy a periodic checkpoint to the shared checkpoint_dir", "error", err)
			taken.CopyError = err.Error()
			where = "kept on this node only, its copy failed: " + err.Error()
			break
		}
		took := time.Since(start)
		taken.Copies = []catalog.Copy{{Where: catalog.CopySharedDir, Took: took, CompletedAt: time.Now().UTC()}}
		where = fmt.Sprintf("copied to the shared checkpoint_dir in %s", took.Round(10*time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(d.ctx, recordTimeout)
	defer cancel()
	if err := d.recordPeriodic(ctx, env, h, taken.PeriodicCheckpoint); err != nil {
		logger.Warn("record a periodic checkpoint in Consul", "error", err)
		return where + "; not recorded in Consul, so no replacement can resume from it: " + err.Error()
	}
	if len(taken.Copies) > 0 {
		// Only now: until the record names the new copy, the older ones
		// are what a replacement would resume.
		keepNewest(root, h.State.PeriodicKeep, logger)
	}
	return where
}

// recordPeriodic adds c to the periodic record of h's task, which keeps
// the newest h.State.PeriodicKeep.
func (d *Driver) recordPeriodic(ctx context.Context, env *environment, h *task.Handle, c catalog.PeriodicCheckpoint) error {
	cfg := h.Config
	p, err := env.catalog.GetPeriodic(ctx, cfg.AllocID, cfg.Name)
	if errors.Is(err, catalog.ErrNotFound) {
		network, nerr := networkOf(cfg)
		if nerr != nil {
			d.logger.Warn("network configuration incomplete in the periodic record", "alloc_id", cfg.AllocID, "task", cfg.Name, "error", nerr)
		}
		p, err = &catalog.Periodic{
			AllocID: cfg.AllocID, Task: cfg.Name, JobID: cfg.JobID, Namespace: cfg.Namespace,
			NodeID: cfg.NodeID, NodeName: cfg.NodeName,
			ImageRef: h.State.ImageRef, ImageDigest: h.State.ImageDigest, Platform: h.State.Platform,
			Network: network,
		}, nil
	}
	if err != nil {
		return err
	}
	p.Checkpoints = keepRecorded(append(p.Checkpoints, c), h.State.PeriodicKeep)
	return env.catalog.PutPeriodic(ctx, p)
}

// keepRecorded is the newest keep of a task's recorded periodic
// checkpoints (oldest first), and the newest one copied off the node when
// none of those was: the copy a replacement would resume stays recorded
// until a newer one is copied.
func keepRecorded(all []catalog.PeriodicCheckpoint, keep int) []catalog.PeriodicCheckpoint {
	kept := all[max(0, len(all)-keep):]
	if slices.ContainsFunc(kept, func(c catalog.PeriodicCheckpoint) bool { return len(c.Copies) > 0 }) {
		return kept
	}
	dropped := all[:len(all)-len(kept)]
	for i := len(dropped) - 1; i >= 0; i-- {
		if len(dropped[i].Copies) > 0 {
			return append([]catalog.PeriodicCheckpoint{dropped[i]}, kept...)
		}
	}
	return kept
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

// destroyPeriodic removes the periodic checkpoints of cfg's task, once the
// task is destroyed, unless Nomad holds its allocation lost: this node was
// cut off, and a replacement elsewhere may be resuming one of them (it
// removes them then). This node's own go either way.
func (d *Driver) destroyPeriodic(env *environment, cfg *drivers.TaskConfig, logger hclog.Logger) {
	ctx, cancel := context.WithTimeout(d.ctx, recordTimeout)
	defer cancel()
	a, _, err := env.nomad.Allocations().Info(cfg.AllocID, (&nomadapi.QueryOptions{Namespace: cfg.Namespace}).WithContext(ctx))
	if err == nil && nodeLost(a) {
		if local, err := checkpoint.Dir(env.layout.periodic(), cfg.AllocID, cfg.Name); err == nil {
			removeTaskDir(local, logger)
		}
		logger.Info("periodic checkpoints of an allocation Nomad holds lost left to its replacement")
		return
	}
	d.removePeriodic(env, cfg.AllocID, cfg.Name, logger)
}

// removePeriodic removes the periodic checkpoints of allocID's task: this
// node's, their copies in the shared checkpoint_dir, and their record. It
// runs when the task is destroyed, once a replacement resumed from them (or
// started fresh for good), and when no replacement will resume them. It
// reports whether all of it went: the record stays while it names copies
// in a checkpoint_dir this node does not mount, for a node that does.
func (d *Driver) removePeriodic(env *environment, allocID, task string, logger hclog.Logger) bool {
	local, err := checkpoint.Dir(env.layout.periodic(), allocID, task)
	if err != nil {
		return false // names no task of this driver's
	}
	if !removeTaskDir(local, logger) {
		return false
	}
	ctx, cancel := context.WithTimeout(d.ctx, recordTimeout)
	defer cancel()
	copies, _ := env.periodicCopies(allocID, task)
	if copies == "" {
		if p, err := env.catalog.GetPeriodic(ctx, allocID, task); err == nil {
			if copied, _ := p.Newest(); copied != nil {
				return false // in a checkpoint_dir this node does not mount
			}
		}
	} else if !removeTaskDir(copies, logger) {
		return false
	}
	if err := env.catalog.DeletePeriodic(ctx, allocID, task); err != nil {
		logger.Warn("delete the periodic checkpoints record", "error", err)
		return false
	}
	return true
}

// removeTaskDir removes a task's directory of periodic checkpoints,
// <root>/<alloc>/<task>, and the allocation's once empty.
func removeTaskDir(dir string, logger hclog.Logger) bool {
	if err := os.RemoveAll(dir); err != nil {
		logger.Warn("remove periodic checkpoints", "dir", dir, "error", err)
		return false
	}
	_ = os.Remove(filepath.Dir(dir))
	return true
}
