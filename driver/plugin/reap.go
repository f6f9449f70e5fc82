package plugin

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/hashicorp/go-hclog"
)

// reap removes, until ctx ends, what live moves leave on this node once no
// restore needs it:
//
//   - this node's checkpoints whose task was restored elsewhere, or started
//     fresh on another architecture, and then their records;
//   - checkpoints pushed to this node whose record is gone or ended, unless
//     a push into them is still being received.
//
// A checkpoint whose restore failed is kept, with its record, for the
// operator. Every path is derived from this node's own directories and the
// allocation ID and task of a record's key (checkpoint.Dir), never read from
// a record.
func (d *Driver) reap(ctx context.Context, env *environment, logger hclog.Logger) {
	self := env.node.ID()
	var index uint64
	for ctx.Err() == nil {
		recs, next, err := env.catalog.ListWait(ctx, index)
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
		index = next
		live := make(map[string]bool)
		for _, r := range recs {
			if r.SourceNodeID == self && (r.State == catalog.StateRestored || r.State == catalog.StateColdStart) {
				d.removeCheckpoint(ctx, env, r, logger)
				continue
			}
			if !r.State.Terminal() {
				live[r.AllocID+"/"+r.Task] = true
			}
		}
		d.sweepIncoming(env, live, logger)
	}
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

// sweepIncoming removes the checkpoints pushed to this node that no record
// in live (alloc/task of records not ended) still needs.
func (d *Driver) sweepIncoming(env *environment, live map[string]bool, logger hclog.Logger) {
	root := env.layout.incoming()
	allocs, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, a := range allocs {
		tasks, err := os.ReadDir(filepath.Join(root, a.Name()))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			dir, err := checkpoint.Dir(root, a.Name(), t.Name())
			if err != nil || live[a.Name()+"/"+t.Name()] {
				continue
			}
			if env.transfer != nil && env.transfer.server.Receiving(dir) {
				continue
			}
			if err := checkpoint.Remove(dir); err != nil {
				logger.Warn("remove pushed checkpoint no restore needs", "dir", dir, "error", err)
				continue
			}
			logger.Debug("pushed checkpoint removed", "dir", dir)
		}
		// Removed once its tasks are; a directory not empty stays.
		_ = os.Remove(filepath.Join(root, a.Name()))
	}
}
