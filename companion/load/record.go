// Package load is what a node really uses: each companion agent samples its
// own node's allocations through the local Nomad client's API, smooths the
// samples over a window, splits them into online and offline work, and
// publishes one record per node in Consul KV, tied to a session so that the
// record of a dead agent disappears. The planner reads every record in one
// query (List).
//
// The record of node ID is the JSON of Record at the key
// <prefix><node ID> (prefix sdk.PrefixNodes, "ferry/nodes/", by default),
// acquired by a TTL session named "ferry-load-<node ID>" whose invalidation
// deletes it (behavior "delete", no lock delay). The agent samples every
// interval but writes (Publisher.Offer, after Policy) only when a value the
// planner reads moved beyond the dead band (DefaultDeadBand: 5 points of a
// usage fraction of the node's capacity), when its allocations or capacity
// changed, and at every heartbeat (DefaultHeartbeat: 60s), which renews the
// session too; the session TTL is two heartbeats. A record's sampled_at is
// thus at most a heartbeat and a sample interval old while its agent runs,
// and its heartbeat field says how long that is (Record.Stale). A dead
// agent's record is deleted by Consul three to four heartbeats after the
// agent died (Policy.SessionTTL); one that stops cleanly deletes it at
// once (Publisher.Close).
package load

import "time"

// Source says what a record's usage was measured from.
const (
	// SourceAllocations sums the allocations' own measured usage: the
	// default, and the only one that tells online from offline work.
	SourceAllocations = "allocations"
	// SourceHost takes whole-host usage from the Nomad client's host stats;
	// everything not accounted to an offline allocation counts as online.
	SourceHost = "host"
)

// Resources are CPU in MHz and memory in MiB, as Nomad counts them.
type Resources struct {
	CPU      float64 `json:"cpu_mhz"`
	MemoryMB float64 `json:"memory_mb"`
}

// Record is one node's smoothed load as its agent last published it.
type Record struct {
	NodeID    string    `json:"node_id"`
	NodeName  string    `json:"node_name"`
	SampledAt time.Time `json:"sampled_at"`
	Source    string    `json:"source"`  // SourceAllocations or SourceHost
	Samples   int       `json:"samples"` // samples in the smoothing window
	Window    string    `json:"window"`  // e.g. "30s"
	// Heartbeat is the publisher's heartbeat, e.g. "1m0s": the record is
	// written again within a heartbeat and a sample interval while its
	// agent runs (see Stale). Empty in records of agents that wrote every
	// sample.
	Heartbeat string `json:"heartbeat,omitempty"`

	// Capacity is the node's, as Nomad fingerprinted it, less what the
	// client reserves for the system.
	Capacity Resources `json:"capacity"`
	// Online and Offline are the smoothed usage of online and offline work:
	// the sums of the allocations' Usage, except that with SourceHost
	// Online is the host's smoothed usage less Offline.
	Online  Resources `json:"online"`
	Offline Resources `json:"offline"`

	Allocs []Alloc `json:"allocs"`
}

// staleAfter is the age, in heartbeats, past which a record is stale: one
// heartbeat late, whatever the sample interval (at most a heartbeat).
const staleAfter = 2

// Stale reports whether r should have been written again by now: its
// SampledAt is more than two heartbeats before now. Its agent has stopped
// (or cannot reach Consul), though its session, and so the record, may
// live on for up to two more heartbeats. A record without a heartbeat is
// never stale. SampledAt is the agent's clock and now the reader's: a
// clock skew of a fraction of the heartbeat does not matter.
func (r Record) Stale(now time.Time) bool {
	hb, err := time.ParseDuration(r.Heartbeat)
	if err != nil || hb <= 0 || r.SampledAt.IsZero() {
		return false
	}
	return now.Sub(r.SampledAt) > staleAfter*hb
}

// Alloc is one running allocation on the node, with what the planner needs
// to decide whether and how it may move.
type Alloc struct {
	ID       string `json:"id"`
	Name     string `json:"name"` // e.g. "job.group[0]"
	JobID    string `json:"job_id"`
	Group    string `json:"group"`
	JobType  string `json:"job_type"` // service, batch, system, sysbatch
	Priority int    `json:"priority"`
	Online   bool   `json:"online"` // service or system job, or priority >= online_priority

	// Checkpoint: every task uses the ferry driver with checkpoint.enabled.
	Checkpoint bool `json:"checkpoint,omitempty"`
	// RestartMove: the job's meta ferry_restart_move = "true".
	RestartMove bool `json:"restart_move,omitempty"`
	// CrossArch: the job's meta ferry_cross_arch = "true".
	CrossArch bool `json:"cross_arch,omitempty"`

	Reserved Resources `json:"reserved"` // what Nomad reserved for it
	Usage    Resources `json:"usage"`    // smoothed measured usage

	// GroupCount is the group's count in the job; MinHealthy is the count
	// the group must keep running during a move (count - migrate.max_parallel
	// for service jobs, 0 otherwise).
	GroupCount int `json:"group_count"`
	MinHealthy int `json:"min_healthy"`
}
