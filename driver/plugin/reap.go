package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/hashicorp/go-hclog"
)

// reap removes, until ctx ends, what live moves leave on this node once no
// restore needs it, and every periodicSweepEvery the periodic records no
// replacement will resume. It runs a reapPass at start (what a crash left behind
// goes then), on every change of the catalogue, when the next record is
// due, and at least every few minutes (Consul's blocking wait).
func (d *Driver) reap(ctx context.Context, env *environment, policy checkpointReap, logger hclog.Logger) {
	var index uint64
	var next time.Time  // when the next record is due; zero: none is
	var swept time.Time // when periodic records were last looked at
	for ctx.Err() == nil {
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if !next.IsZero() {
			wctx, cancel = context.WithDeadline(ctx, next)
		}
		recs, nextIndex, err := env.catalog.ListWait(wctx, index)
		cancel()
		if err != nil && ctx.Err() == nil && wctx.Err() != nil {
			// The next record is due: list again without waiting.
			recs, nextIndex, err = env.catalog.ListWait(ctx, 0)
		}
		if err != nil {
			if ctx.Err() == nil {
				logger.Debug("list checkpoint records", "error", err)
				index = 0
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
				}
			}
			continue
		}
		index = nextIndex
		now := time.Now()
		d.reapPass(ctx, env, policy, recs, now, logger)
		next = nextDue(recs, now)
		if now.Sub(swept) >= periodicSweepEvery {
			d.sweepPeriodicRecords(ctx, env, policy, logger)
			swept = now
		}
	}
}

// nextDue is when the first of recs not due at now becomes due; zero when
// none will.
func nextDue(recs []*catalog.Record, now time.Time) time.Time {
	var first time.Time
	for _, r := range recs {
		if at, ok := r.ReapAt(); ok && at.After(now) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first
}

// reapPass reaps, given every checkpoint record, what this node owns and
// no restore needs any more:
//
//   - its checkpoints whose task was restored elsewhere, or started fresh
//     on another architecture, and then their records;
//   - by age (policy, from the record's last change), its records and
//     checkpoints left checkpointing or restoring (a move that died),
//     ready that no destination claimed, and failed ones once the operator
//     had their retention to look at them;
//   - checkpoints pushed to this node that no record still needs: its
//     record gone, ended, due for reaping, or claimed by another node,
//     unless a push into them is still being received (one cut short
//     leaves no manifest; it goes too);
//   - its checkpoint directories (state_dir's and data_dir's or the
//     shared checkpoint_dir's) that no record names any more, once
//     unchanged for policy.OrphanGrace; and it moves to data_dir the ready
//     or failed checkpoints a crash left in state_dir.
//
// It records what it reaped by age in this node's reap log, and returns
// it. Every path is derived from this node's own directories and the
// allocation ID and task of a record's key (checkpoint.Dir), never read
// from a record.
func (d *Driver) reapPass(ctx context.Context, env *environment, policy checkpointReap, recs []*catalog.Record, now time.Time, logger hclog.Logger) []catalog.Reaped {
	self := env.node.ID()
	named := make(map[string]*catalog.Record, len(recs))
	live := make(map[string]bool)
	var reaped []catalog.Reaped
	for _, r := range recs {
		key := r.AllocID + "/" + r.Task
		named[key] = r
		mine := self != "" && r.SourceNodeID == self
		switch {
		case mine && (r.State == catalog.StateRestored || r.State == catalog.StateColdStart):
			if _, ok := d.serving.Load(key); !ok {
				// A lazy move's source reads the outcome first.
				d.removeCheckpoint(ctx, env, r, logger)
			}
			continue
		case mine && r.Due(now):
			if why, ok := d.reapByAge(ctx, env, r, now, logger); ok {
				reaped = append(reaped, catalog.Reaped{AllocID: r.AllocID, Task: r.Task, State: r.State, SourceNode: r.SourceNodeName, Why: why, At: now.UTC()})
			}
			continue
		}
		claimedElsewhere := r.State == catalog.StateRestoring && r.DestNodeID != "" && r.DestNodeID != self
		if !r.State.Terminal() && !r.Due(now) && !claimedElsewhere {
			live[key] = true
		}
	}
	d.sweepIncoming(env, live, logger)
	d.sweepOwn(env, policy, named, now, logger)
	d.sweepPeriodic(env, policy, now, logger)
	if len(reaped) > 0 && self != "" {
		if err := catalog.AppendReaped(ctx, env.catalog.Client(), self, env.node.name, reaped, now); err != nil {
			logger.Debug("record what was reaped", "error", err)
		}
	}
	return reaped
}

// removeCheckpoint removes this node's checkpoint of a task restored
// elsewhere, then its record.
func (d *Driver) removeCheckpoint(ctx context.Context, env *environment, r *catalog.Record, logger hclog.Logger) {
	logger = logger.With("alloc_id", r.AllocID, "task", r.Task)
	for _, root := range env.checkpointRoots() {
		dir, err := checkpoint.Dir(root, r.AllocID, r.Task)
		if err != nil {
			// No checkpoint of this driver is named so; the record is ended.
			logger.Warn("record names no checkpoint this node could hold; removing the record only", "error", err)
			break
		}
		if err := checkpoint.Remove(dir); err != nil {
			logger.Warn("remove restored checkpoint", "dir", dir, "error", err)
			return
		}
	}
	if err := env.catalog.Delete(ctx, r.AllocID, r.Task); err != nil {
		logger.Warn("delete checkpoint record", "error", err)
		return
	}
	logger.Info("checkpoint removed after its restore", "state", r.State, "destination", r.DestNodeName)
}

// reapByAge removes this node's record r, due for reaping, and then its
// checkpoint. The record goes first, and only if unchanged since it was
// read: a destination claiming it meanwhile keeps both. A checkpoint left
// behind by a failed removal has no record any more; sweepOwn removes it
// later. It reports why r was reaped, and whether it was.
func (d *Driver) reapByAge(ctx context.Context, env *environment, r *catalog.Record, now time.Time, logger hclog.Logger) (string, bool) {
	age, _ := r.ReapPolicy().Age(r.State)
	why := reapReason(r.State, age)
	logger = logger.With("alloc_id", r.AllocID, "task", r.Task, "state", r.State, "changed", r.Changed().Format(time.RFC3339))
	removed, err := env.catalog.DeleteUnchanged(ctx, r)
	switch {
	case err != nil:
		logger.Warn("reap checkpoint record", "error", err)
		return why, false
	case !removed:
		logger.Debug("checkpoint record changed since it was read; left for the next pass")
		return why, false
	}
	for _, root := range env.checkpointRoots() {
		dir, err := checkpoint.Dir(root, r.AllocID, r.Task)
		if err != nil {
			break
		}
		if err := checkpoint.Remove(dir); err != nil {
			logger.Warn("remove reaped checkpoint", "dir", dir, "error", err)
		}
	}
	logger.Info("checkpoint reaped", "why", why)
	return why, true
}

// reapReason says why a record in state s, unchanged for age, is reaped.
func reapReason(s catalog.State, age time.Duration) string {
	switch s {
	case catalog.StateCheckpointing, catalog.StateRestoring:
		return fmt.Sprintf("still %s %s after its last change: its move died", s, age)
	case catalog.StateReady:
		return fmt.Sprintf("ready and claimed by no allocation for %s", age)
	case catalog.StateFailed:
		return fmt.Sprintf("failed, kept %s for the operator", age)
	}
	return string(s)
}

// sweepIncoming removes the checkpoints pushed to this node that no record
// in live (alloc/task of records still needed) still needs, whether
// complete or cut short, unless a push into them is being received.
func (d *Driver) sweepIncoming(env *environment, live map[string]bool, logger hclog.Logger) {
	eachTaskDir(env.layout.incoming(), func(alloc, task, dir string) {
		if live[alloc+"/"+task] || (env.transfer != nil && env.transfer.server.Receiving(dir)) {
			return
		}
		if err := checkpoint.Remove(dir); err != nil {
			logger.Warn("remove pushed checkpoint no restore needs", "dir", dir, "error", err)
			return
		}
		logger.Debug("pushed checkpoint removed", "dir", dir)
	})
}

// sweepOwn looks at this node's checkpoint directories, given the records
// by alloc/task: a directory no record names, unchanged for
// policy.OrphanGrace, is removed (no restore can use it without its
// record); a ready or failed checkpoint of this node still in state_dir
// policy.KeepAfter after its record's last change is moved to data_dir.
func (d *Driver) sweepOwn(env *environment, policy checkpointReap, named map[string]*catalog.Record, now time.Time, logger hclog.Logger) {
	self := env.node.ID()
	scratch := env.layout.scratch()
	for _, root := range env.checkpointRoots() {
		eachTaskDir(root, func(alloc, task, dir string) {
			r := named[alloc+"/"+task]
			switch {
			case r == nil:
				fi, err := os.Stat(dir)
				if err != nil || now.Sub(fi.ModTime()) < policy.OrphanGrace {
					return
				}
				if err := checkpoint.Remove(dir); err != nil {
					logger.Warn("remove checkpoint no record names", "dir", dir, "error", err)
					return
				}
				logger.Info("checkpoint no record names removed", "dir", dir, "unchanged_for", now.Sub(fi.ModTime()).Round(time.Second))
			case root == scratch && !env.shared && self != "" && r.SourceNodeID == self &&
				(r.State == catalog.StateReady || r.State == catalog.StateFailed) && now.Sub(r.Changed()) >= policy.KeepAfter:
				if err := keepScratch(env, dir, r); err != nil {
					logger.Warn("keep checkpoint left in state_dir", "dir", dir, "error", err)
					return
				}
				logger.Info("checkpoint left in state_dir kept in data_dir", "alloc_id", r.AllocID, "task", r.Task, "state", r.State)
			}
		})
	}
}

// sweepPeriodic removes this node's periodic checkpoints of tasks it no
// longer runs, once unchanged for policy.OrphanGrace: a task's go when it
// is destroyed, but not those of a task that died with its node, whose
// driver recovers no handle for it once the node is back.
func (d *Driver) sweepPeriodic(env *environment, policy checkpointReap, now time.Time, logger hclog.Logger) {
	running := d.tasks.ContainerIDs()
	removeStale(env.layout.periodic(), policy.OrphanGrace, now, func(alloc, task string) bool {
		return runs(running, containerPrefix(alloc, task))
	}, "periodic checkpoints of a task this node no longer runs", logger)
}

// removeStale removes the task directories under root (see eachTaskDir)
// that needed does not claim, once unchanged for grace; what names them
// in the log.
func removeStale(root string, grace time.Duration, now time.Time, needed func(alloc, task string) bool, what string, logger hclog.Logger) {
	eachTaskDir(root, func(alloc, task, dir string) {
		if needed(alloc, task) {
			return
		}
		fi, err := os.Stat(dir)
		if err != nil || now.Sub(fi.ModTime()) < grace {
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			logger.Warn("remove "+what, "dir", dir, "error", err)
			return
		}
		logger.Info(what+" removed", "dir", dir)
	})
}

// eachTaskDir calls fn with each task's directory under root,
// <root>/<alloc>/<task> as checkpoint.Dir names them (nothing else there
// is looked at: the shared checkpoint_dir's periodic/, say), then removes
// the allocations' directories left empty.
func eachTaskDir(root string, fn func(alloc, task, dir string)) {
	allocs, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, a := range allocs {
		if _, err := checkpoint.Dir(root, a.Name(), "task"); err != nil || !a.IsDir() {
			continue
		}
		tasks, err := os.ReadDir(filepath.Join(root, a.Name()))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			if dir, err := checkpoint.Dir(root, a.Name(), t.Name()); err == nil {
				fn(a.Name(), t.Name(), dir)
			}
		}
		// Removed once its tasks are; a directory not empty stays.
		_ = os.Remove(filepath.Join(root, a.Name()))
	}
}

// runs reports whether one of the containers ids has prefix.
func runs(ids map[string]bool, prefix string) bool {
	for id := range ids {
		if strings.HasPrefix(id, prefix) {
			return true
		}
	}
	return false
}

// keepScratch moves the checkpoint at dir, in state_dir, to data_dir: a
// complete copy already there wins; an incomplete one (no manifest: a
// copy cut short) is replaced.
func keepScratch(env *environment, dir string, r *catalog.Record) error {
	kept, err := checkpoint.Dir(env.checkpoints, r.AllocID, r.Task)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(kept, checkpoint.ManifestName)); err == nil {
		return checkpoint.Remove(dir)
	}
	if err := checkpoint.Remove(kept); err != nil {
		return err
	}
	if err := checkpoint.Move(dir, kept); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("move %s to %s: %w", dir, kept, err)
	}
	return nil
}
