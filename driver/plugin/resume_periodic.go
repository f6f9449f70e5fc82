package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// nodeLost reports whether Nomad gave up on a's node: a is lost. An
// allocation unknown (its node disconnected, within the group's
// disconnect.lost_after) may come back; it is lost once that ends.
func nodeLost(a *nomadapi.Allocation) bool {
	return a.ClientStatus == nomadapi.AllocClientStatusLost
}

// lostAt is when Nomad marked the allocation lost (its last change).
func (e *predecessorLost) lostAt() time.Time {
	return time.Unix(0, e.alloc.ModifyTime)
}

// errPeriodicUnread is a lost allocation's periodic record that could not
// be read: its checkpoints are kept for a later start.
var errPeriodicUnread = errors.New("the periodic checkpoints cannot be read")

// periodicCheckpoint finds the newest periodic checkpoint of the lost
// allocation's task that has a complete copy off its node, and returns the
// record to restore it from (catalog.Periodic.Restorable), its copy
// claimed for cfg's allocation (claimCopy). Without one it returns
// errNoCheckpoint, with a task event saying why the task starts fresh
// when it has periodic checkpoints configured.
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
		return nil, fmt.Errorf("%w: %v: %w", errPeriodicUnread, lost, err)
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
	if rec.Periodic, err = claimCopy(env, rec, cfg.AllocID); err != nil {
		return nil, err
	}
	d.emit(cfg, fmt.Sprintf("Resuming from the periodic checkpoint of %s (%s): %v", clock(copied.TakenAt), humanBytes(copied.Bytes), lost), nil)
	return rec, nil
}

// claimCopy sets the copy of rec's periodic checkpoint in the shared
// checkpoint_dir aside for allocID, renaming it <name>.claimed.<alloc>: a
// lost node may yet be alive, cut off from Nomad but not from the storage,
// and prune its old copies meanwhile (it prunes only names of times). It
// returns the copy's name as claimed; a claim of allocID's own earlier
// start is taken again.
func claimCopy(env *environment, rec *catalog.Record, allocID string) (string, error) {
	root, err := env.periodicCopies(rec.AllocID, rec.Task)
	if err != nil {
		return "", err
	}
	if root == "" {
		return "", fmt.Errorf("the checkpoint is in the shared checkpoint_dir of %s, and this node has no checkpoint_dir: set it to the same shared storage", rec.SourceNodeName)
	}
	claimed := rec.Periodic + ".claimed." + allocID
	if _, err := os.Stat(filepath.Join(root, claimed)); err == nil {
		return claimed, nil
	}
	if err := os.Rename(filepath.Join(root, rec.Periodic), filepath.Join(root, claimed)); err != nil {
		return "", fmt.Errorf("claim the copy of the periodic checkpoint %s: %w", rec.Periodic, err)
	}
	return claimed, nil
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
