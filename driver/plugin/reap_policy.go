package plugin

import (
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
)

// checkpointReap is how this node's driver reaps checkpoint records and
// checkpoints by age (see reap): the ages of catalog.DefaultReapPolicy,
// and the driver's own delays.
type checkpointReap struct {
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

// defaultCheckpointReap is the driver's reaping policy. The ages are
// meant to become the plugin options gc { checkpoints { stale,
// unclaimed, failed, orphan } } (keep_after stays fixed).
func defaultCheckpointReap() checkpointReap {
	return checkpointReap{
		ReapPolicy:  catalog.DefaultReapPolicy(),
		OrphanGrace: catalog.DefaultReapStale,
		KeepAfter:   10 * time.Minute,
	}
}
