package rebalance

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	nomad "github.com/hashicorp/nomad/api"
)

// checkpointSweep is how often the planner looks for checkpoint records
// whose source node is gone.
const checkpointSweep = 5 * time.Minute

// sweepCheckpoints reaps, while this agent leads, the checkpoint records
// no driver will: see reapOrphanedCheckpoints.
func (r *Rebalancer) sweepCheckpoints(ctx context.Context) {
	tick := time.NewTicker(checkpointSweep)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := r.reapOrphanedCheckpoints(ctx, time.Now()); err != nil && ctx.Err() == nil {
			r.Logger.Warn("reap checkpoint records of gone nodes", "error", err)
		}
	}
}

// reapOrphanedCheckpoints removes the checkpoint records due for reaping
// (by state and age, with the ages each record carries) whose source node
// is gone:
// down, or no longer known to Nomad (garbage-collected or purged). A live
// source reaps its own records with its checkpoints; a gone one never
// will. Its checkpoint goes with the node, or, on a shared checkpoint_dir,
// with the first driver that finds it named by no record. A record is
// removed only if unchanged since it was read. What it reaps is written
// to the planner's reap log; it returns it. In a dry run it only logs.
func (r *Rebalancer) reapOrphanedCheckpoints(ctx context.Context, now time.Time) ([]catalog.Reaped, error) {
	cat := catalog.New(r.Sources.Consul, "", r.Logger)
	recs, err := cat.List(ctx)
	if err != nil {
		return nil, err
	}
	var due []*catalog.Record
	for _, rec := range recs {
		if rec.Due(now) {
			due = append(due, rec)
		}
	}
	if len(due) == 0 {
		return nil, nil
	}
	// Without Nomad's word, every node would look gone: reap nothing.
	nodes, _, err := r.Sources.Nomad.Nodes().List((&nomad.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	status := make(map[string]string, len(nodes))
	for _, n := range nodes {
		status[n.ID] = n.Status
	}
	var reaped []catalog.Reaped
	for _, rec := range due {
		st, known := status[rec.SourceNodeID]
		if known && st != nomad.NodeStatusDown {
			continue
		}
		why := "source node down"
		if !known {
			why = "source node unknown to Nomad"
		}
		age, _ := rec.ReapPolicy().Age(rec.State)
		why = fmt.Sprintf("%s, %s for over %s", why, rec.State, age)
		log := r.Logger.With("alloc_id", rec.AllocID, "task", rec.Task, "state", rec.State, "source", rec.SourceNodeName, "why", why)
		if r.Config.DryRun {
			log.Info("dry run: would reap checkpoint record")
			continue
		}
		removed, err := cat.DeleteUnchanged(ctx, rec)
		if err != nil {
			log.Warn("reap checkpoint record", "error", err)
			continue
		}
		if removed {
			log.Info("checkpoint record of a gone node reaped")
			reaped = append(reaped, catalog.Reaped{AllocID: rec.AllocID, Task: rec.Task, State: rec.State, SourceNode: rec.SourceNodeName, Why: why, At: now.UTC()})
		}
	}
	if len(reaped) > 0 {
		if err := catalog.AppendReaped(ctx, r.Sources.Consul, catalog.ReaperPlanner, r.Config.Node, reaped, now); err != nil {
			r.Logger.Warn("record what was reaped", "error", err)
		}
	}
	return reaped, nil
}
