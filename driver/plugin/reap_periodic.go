package plugin

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/lease"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
)

// periodicSweepEvery is how often a driver looks for periodic records
// that no replacement will resume.
const periodicSweepEvery = 5 * time.Minute

// sweepPeriodicRecords removes the periodic records that no replacement
// will resume, with their copies in the shared checkpoint_dir: a task's
// own go when it is destroyed, but not those of a task lost with its node
// whose job was then stopped for good, nor those a crash kept the node from
// removing. It returns how many it removed.
func (d *Driver) sweepPeriodicRecords(ctx context.Context, env *environment, policy checkpointReap, logger hclog.Logger) int {
	if env.nomad == nil {
		return 0
	}
	recs, err := env.catalog.ListPeriodic(ctx)
	if err != nil {
		logger.Debug("list periodic records", "error", err)
		return 0
	}
	removed := 0
	for _, p := range recs {
		why, err := periodicUnneeded(ctx, env.nomad, p)
		if err != nil {
			logger.Debug("cannot tell whether periodic checkpoints are still needed", "alloc_id", p.AllocID, "task", p.Task, "error", err)
			continue
		}
		if why == "" {
			continue
		}
		if d.removePeriodic(env, p.AllocID, p.Task, logger) {
			logger.Info("periodic checkpoints no replacement will resume removed", "alloc_id", p.AllocID, "task", p.Task, "why", why)
			removed++
		}
	}
	d.sweepPeriodicCopies(env, recs, policy, time.Now(), logger)
	return removed
}

// sweepPeriodicCopies removes the copies in the shared checkpoint_dir
// that no periodic record (of recs, every one) names any more, once
// unchanged for policy.OrphanGrace: what a removal cut short left, or a
// copy whose record was never written.
func (d *Driver) sweepPeriodicCopies(env *environment, recs []*catalog.Periodic, policy checkpointReap, now time.Time, logger hclog.Logger) {
	if !env.shared {
		return
	}
	named := make(map[string]bool, len(recs))
	for _, p := range recs {
		named[p.AllocID+"/"+p.Task] = true
	}
	removeStale(filepath.Join(env.checkpoints, periodicCopiesDir), policy.OrphanGrace, now, func(alloc, task string) bool {
		return named[alloc+"/"+task]
	}, "periodic copies no record names", logger)
}

// periodicUnneeded says why no replacement will resume p's checkpoints,
// or "" while one may: its allocation runs, or was lost with its node and
// its job still runs.
func periodicUnneeded(ctx context.Context, nomad *nomadapi.Client, p *catalog.Periodic) (string, error) {
	q := (&nomadapi.QueryOptions{Namespace: p.Namespace}).WithContext(ctx)
	a, _, err := nomad.Allocations().Info(p.AllocID, q)
	if lease.NotFound(err) {
		return "Nomad no longer knows the allocation", nil
	}
	if err != nil {
		return "", err
	}
	job, _, err := nomad.Jobs().Info(a.JobID, (&nomadapi.QueryOptions{Namespace: a.Namespace}).WithContext(ctx))
	switch {
	case lease.NotFound(err):
		return fmt.Sprintf("job %s was purged", a.JobID), nil
	case err != nil:
		return "", err
	case job.Stop != nil && *job.Stop:
		return fmt.Sprintf("job %s was stopped", a.JobID), nil
	case a.ClientTerminalStatus() && !nodeLost(a):
		return fmt.Sprintf("the allocation ended %s", a.ClientStatus), nil
	}
	return "", nil
}
