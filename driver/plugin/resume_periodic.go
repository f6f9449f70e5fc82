package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// predecessorLost is the allocation a replacement replaces, lost with its
// node: nothing will move it, and only a periodic checkpoint of it can be
// resumed.
type predecessorLost struct {
	alloc *nomadapi.Allocation
}

func (e *predecessorLost) Error() string {
	return fmt.Sprintf("allocation %s was lost with its node %s", shortID(e.alloc.ID), e.alloc.NodeName)
}

// nodeLost reports whether Nomad gave a up on a's node: a is lost, or
// unknown (its node disconnected) while a replacement runs.
func nodeLost(a *nomadapi.Allocation) bool {
	return a.ClientStatus == nomadapi.AllocClientStatusLost || a.ClientStatus == nomadapi.AllocClientStatusUnknown
}

// lostAt is when Nomad marked the allocation lost (its last change).
func (e *predecessorLost) lostAt() time.Time {
	return time.Unix(0, e.alloc.ModifyTime)
}

// periodicCheckpoint finds the newest periodic checkpoint of the lost
// allocation's task that has a complete copy off its node, and returns the
// record to restore it from (catalog.Periodic.Restorable). Without one it
// returns errNoCheckpoint, with a task event saying why the task starts
// fresh when it has periodic checkpoints configured.
func (d *Driver) periodicCheckpoint(ctx context.Context, env *environment, cfg *drivers.TaskConfig, req *taskRequest, lost *predecessorLost) (*catalog.Record, error) {
	fresh := func(why string) (*catalog.Record, error) {
		if req.Checkpoint.Interval != "" {
			d.emit(cfg, "Starting fresh: "+why, map[string]string{sdk.EventColdStart: "periodic"})
		}
		return nil, fmt.Errorf("%w: %s", errNoCheckpoint, why)
	}
	p, err := env.catalog.GetPeriodic(ctx, lost.alloc.ID, cfg.Name)
	if errors.Is(err, catalog.ErrNotFound) {
		return fresh(fmt.Sprintf("%v, and no periodic checkpoint of it was recorded", lost))
	}
	if err != nil {
		return fresh(fmt.Sprintf("%v, and its periodic checkpoints cannot be read: %v", lost, err))
	}
	copied, newest := p.Newest()
	switch {
	case newest == nil:
		return fresh(fmt.Sprintf("%v, and no periodic checkpoint of it was recorded", lost))
	case copied == nil:
		return fresh(fmt.Sprintf("%v, and its newest periodic checkpoint (%s) has no complete copy off that node: %s",
			lost, clock(newest.TakenAt), newest.CopyError))
	}
	if _, err := time.Parse(periodicStamp, copied.Name); err != nil {
		return fresh(fmt.Sprintf("%v, and its periodic record names a checkpoint %q that is not one", lost, copied.Name))
	}
	if copied != newest {
		d.logger.Warn("resuming an older periodic checkpoint: the newest has no copy off its node",
			"alloc_id", cfg.AllocID, "task", cfg.Name, "newest", newest.Name, "why", newest.CopyError)
	}
	rec := p.Restorable(copied)
	d.emit(cfg, fmt.Sprintf("Resuming from the periodic checkpoint of %s (%s): %v", clock(copied.TakenAt), humanBytes(copied.Bytes), lost), nil)
	return rec, nil
}

// resumed is the task event of a task resumed from rec, a periodic
// checkpoint of the lost allocation.
func (e *predecessorLost) resumed(rec *catalog.Record, got *obtained) string {
	return fmt.Sprintf("Resumed from the checkpoint of %s, %s before its node was lost: %s %s, restored in %s",
		clock(rec.CreatedAt), roughly(e.lostAt().Sub(rec.CreatedAt)), humanBytes(rec.Bytes), got.how,
		got.restore.Round(10*time.Millisecond))
}

// clock is t's time of day, UTC, for task events.
func clock(t time.Time) string { return t.UTC().Format("15:04:05") }

// roughly says a duration in whole minutes, or seconds under one.
func roughly(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%d s", int(max(d, 0).Seconds()))
	}
	return fmt.Sprintf("%d min", int(d.Minutes()))
}
