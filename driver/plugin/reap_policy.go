package plugin

import (
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/hashicorp/nomad/plugins/shared/hclspec"
)

// checkpointsGCSpec is the `gc { checkpoints { ... } }` block: how long
// this node keeps the checkpoints of its tasks, and their records, in each
// state after their last change.
var checkpointsGCSpec = hclspec.NewObject(map[string]*hclspec.Spec{
	"stale":     hclspec.NewDefault(hclspec.NewAttr("stale", "string", false), hclspec.NewLiteral(`"1h"`)),
	"unclaimed": hclspec.NewDefault(hclspec.NewAttr("unclaimed", "string", false), hclspec.NewLiteral(`"24h"`)),
	"failed":    hclspec.NewDefault(hclspec.NewAttr("failed", "string", false), hclspec.NewLiteral(`"168h"`)),
	"orphan":    hclspec.NewDefault(hclspec.NewAttr("orphan", "string", false), hclspec.NewLiteral(`"1h"`)),
})

// checkpointsGCDefault is the block's default, catalog.DefaultReapPolicy's
// ages.
const checkpointsGCDefault = `{ stale = "1h", unclaimed = "24h", failed = "168h", orphan = "1h" }`

// CheckpointsGC is the `gc { checkpoints { ... } }` block. The ages of the
// first three are written into each checkpoint record this node makes
// (catalog.Record.Reap): whoever reaps the record (this driver, or the
// companion's planner once this node is gone) and the companion's status
// read them there, so a change applies to the checkpoints made after it.
type CheckpointsGC struct {
	// Stale: a record still checkpointing or restoring this long after
	// its last change belongs to a move that died.
	Stale string `codec:"stale"`
	// Unclaimed: a ready checkpoint no destination claimed.
	Unclaimed string `codec:"unclaimed"`
	// Failed: a failed checkpoint or restore, kept for the operator.
	Failed string `codec:"failed"`
	// Orphan: a checkpoint directory of this node's that no record names
	// any more.
	Orphan string `codec:"orphan"`

	reap checkpointReap
}

// validate checks the block and fills reap; an empty field is its default.
func (c *CheckpointsGC) validate() []error {
	var errs []error
	c.reap = defaultCheckpointReap()
	for _, f := range []struct {
		name, value string
		into        *time.Duration
	}{
		{"stale", c.Stale, &c.reap.Stale},
		{"unclaimed", c.Unclaimed, &c.reap.Unclaimed},
		{"failed", c.Failed, &c.reap.Retention},
		{"orphan", c.Orphan, &c.reap.OrphanGrace},
	} {
		if f.value == "" {
			continue
		}
		d, err := time.ParseDuration(f.value)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("gc.checkpoints.%s: %q is not a duration; use a value such as \"1h\"", f.name, f.value))
		case d <= 0:
			errs = append(errs, fmt.Errorf("gc.checkpoints.%s: %q must be positive", f.name, f.value))
		default:
			*f.into = d
		}
	}
	return errs
}

// checkpointReap is how this node's driver reaps checkpoint records and
// checkpoints by age (see reap).
type checkpointReap struct {
	// ReapPolicy is written into the records this node makes; records
	// are reaped by their own (catalog.Record.Due).
	catalog.ReapPolicy
	// OrphanGrace: a checkpoint directory of this node's that no record
	// names any more (its record was reaped elsewhere, or removed by hand)
	// is removed once it has not changed for this long; no restore can
	// use it without its record.
	OrphanGrace time.Duration
	// KeepAfter: a ready or failed checkpoint still in state_dir this long
	// after its record last changed (the driver stopped before it moved it
	// to data_dir) is moved to data_dir, as keepLater would have.
	KeepAfter time.Duration
}

// defaultCheckpointReap is the reaping policy with the options' defaults.
func defaultCheckpointReap() checkpointReap {
	return checkpointReap{
		ReapPolicy:  catalog.DefaultReapPolicy(),
		OrphanGrace: catalog.DefaultReapStale,
		KeepAfter:   10 * time.Minute,
	}
}
