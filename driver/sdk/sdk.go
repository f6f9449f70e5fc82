// Package sdk is the contract the ferry task driver publishes for whatever
// reads what it leaves in Nomad and Consul: ferry-companion, dashboards,
// operators' scripts. It holds names only, each defined once here; both
// binaries import it, as Nomad's api package is the contract of its agent.
//
// What the driver publishes:
//
//   - its name in jobspecs (DriverName) and the node attributes it
//     fingerprints (Attr*), which Nomad shows under
//     node.Drivers[DriverName].Attributes and as ${attr.driver.ferry.*};
//   - the details of the task events it emits when a task moves (Event*),
//     read by the companion's mover and the migration benchmark;
//   - its records in Consul KV, under the keys below (the record formats
//     are driver/catalog's).
//
// What operators and the companion write for it to read, or for each other:
// the job and node meta keys (Meta*), and the companion's own keys.
//
// The Consul KV layout, every key under "ferry/":
//
//	ferry/checkpoints/<alloc ID>/<task>  driver: a task's checkpoint record (catalog.Record)
//	ferry/periodic/<alloc ID>/<task>     driver: a task's periodic checkpoints and their copies (catalog.Periodic)
//	ferry/drivers/<node ID>              driver: where its transfer server listens (catalog.Endpoint), held by a session
//	ferry/net/<network>/...              the Ferry CNI plugin: address leases (driver/lease)
//	ferry/nodes/<node ID>                companion agent: the node's load record, held by a session
//	ferry/migrations/<ID>                companion: a live migration, requested or done
//	ferry/reaped/<node ID>|planner       driver, companion planner: what each reaped in the last 24h
//	ferry/leader                         companion: the rebalancer's lock
//	ferry/planner/state                  companion: the rebalancer's saved state
//	ferry/capacity/state                 companion: the pool capacity rounds' saved state
package sdk

// DriverName is the name jobspecs give the driver: `driver = "ferry"`.
const DriverName = "ferry"

// Node attributes the driver fingerprints.
const (
	AttrDriver     = "driver.ferry"            // true when the driver is detected
	AttrVersion    = "driver.ferry.version"    // the driver's version
	AttrPlatform   = "driver.ferry.platform"   // os/arch[/variant] images are chosen for
	AttrCheckpoint = "driver.ferry.checkpoint" // true when CRIU can checkpoint here
	// AttrCheckpointLazy is true when a lazy (post-copy) migration works
	// here: CRIU's lazy pages (userfaultfd) and pipes large enough for its
	// page transfer (fs.pipe-max-size >= 4 MiB, or CAP_SYS_RESOURCE).
	AttrCheckpointLazy = "driver.ferry.checkpoint.lazy"
	AttrCheckpointDir  = "driver.ferry.checkpoint_dir" // where checkpoints kept for later are stored
	AttrCriuVersion    = "driver.ferry.criu.version"   // CRIU's version, when found
	AttrRuncVersion    = "driver.ferry.runc.version"   // runc's version
)

// Meta keys.
const (
	// MetaRestartMove, in a job's meta, set to "true": the rebalancer may
	// move the job's allocations by restarting them elsewhere when they
	// cannot be checkpointed.
	MetaRestartMove = "ferry_restart_move"
	// MetaCrossArch, in a job's meta, set to "true": the rebalancer may
	// move the job's allocations to a node of another architecture (they
	// start fresh there).
	MetaCrossArch = "ferry_cross_arch"
	// MetaMigrateTarget is node meta the companion sets on the destination
	// of a move it steers; jobs that move to a chosen node carry an
	// affinity on ${meta.ferry_migrate_target}.
	MetaMigrateTarget = "ferry_migrate_target"
	// MetaCapacity is node meta the companion sets on a node it takes out
	// of service to size its pool: CapacityParking while its work moves
	// off, CapacityParked once it runs none (ready, ineligible, kept for
	// when the pool grows again).
	MetaCapacity = "ferry_capacity"
)

// Values of MetaCapacity.
const (
	CapacityParking = "parking"
	CapacityParked  = "parked"
)

// Details of the driver's task events when a task is checkpointed for a
// move (on the source) and when it starts from a checkpoint (on the
// destination). Durations are in whole milliseconds.
const (
	// EventRestore says how a task that had a checkpoint to restore
	// started: catalog.StateRestored, StateColdStart (moved across
	// architectures) or StateFailed (it started fresh, or failed).
	EventRestore = "ferry_restore"
	// EventRestoredFrom is the allocation whose checkpoint was restored.
	EventRestoredFrom = "restored_from"
	// EventPeriodic is when the periodic checkpoint a task resumed from
	// was taken (RFC 3339), once its node was lost.
	EventPeriodic = "ferry_periodic"
	// EventSourceNode is the name of the node the checkpoint came from.
	EventSourceNode = "source_node"
	// EventColdStart says why the task started fresh: "cross_arch", or
	// "periodic" (its node was lost with no periodic checkpoint to resume).
	EventColdStart = "cold_start"
	// EventReceived is how the destination got the checkpoint:
	// "shared" (a shared checkpoint_dir), "local", "pushed" or "fetched".
	EventReceived = "ferry_received"
	// EventRestoreMs is the restore's duration on the destination.
	EventRestoreMs = "ferry_restore_ms"
	// EventFetchMs is how long the destination fetched what the push had
	// not brought.
	EventFetchMs = "ferry_fetch_ms"
	// EventBytes is the checkpoint's size, on the source.
	EventBytes = "checkpoint_bytes"
	// EventDumpMs is CRIU's dump, on the source: the task is frozen.
	EventDumpMs = "ferry_dump_ms"
	// EventFrozenMs is how long a periodic checkpoint paused the task;
	// EventCopyMs how long copying it off the node took (absent when it
	// was not copied).
	EventFrozenMs = "ferry_frozen_ms"
	EventCopyMs   = "ferry_copy_ms"
	// EventTransferMs is the source's part of the transfer after the dump.
	EventTransferMs = "ferry_transfer_ms"
	// EventLazy is set ("true") on the events of a lazy (post-copy)
	// move: the task ran on the destination before its memory arrived.
	EventLazy = "ferry_lazy"
	// EventLazyPages is how many pages of memory a lazy move brought;
	// EventLazyOnDemand how many of them the task faulted on (the rest
	// came in the background).
	EventLazyPages    = "ferry_lazy_pages"
	EventLazyOnDemand = "ferry_lazy_on_demand"
	// EventLazyMs is how long after the restore the last page arrived.
	EventLazyMs = "ferry_lazy_ms"
)

// Consul KV keys (see the package comment for the layout).
const (
	PrefixCheckpoints = "ferry/checkpoints/"
	PrefixPeriodic    = "ferry/periodic/"
	PrefixDrivers     = "ferry/drivers/"
	PrefixNetworks    = "ferry/net/"
	PrefixNodes       = "ferry/nodes/"
	PrefixMigrations  = "ferry/migrations/"
	PrefixReaped      = "ferry/reaped/"
	KeyLeader         = "ferry/leader"
	KeyPlannerState   = "ferry/planner/state"
	KeyCapacityState  = "ferry/capacity/state"
)

// FixedPrefixes are the KV prefixes no setting moves: keys an operator
// configures (the companion's sample.prefix, lock_key, state_key) must stay
// out of them.
var FixedPrefixes = []string{PrefixCheckpoints, PrefixPeriodic, PrefixDrivers, PrefixNetworks, PrefixMigrations, PrefixReaped}
