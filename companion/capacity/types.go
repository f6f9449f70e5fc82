// Package capacity sizes node pools within a quota, as pure logic: given
// each pool's nodes (with the work they run and the marks the companion
// left on them), the work Nomad cannot place, and the state carried from
// the last round, it decides which nodes enter service and which leave it.
// It makes no Nomad or Consul calls; companion/rebalance reads the snapshot
// and acts on the plan.
//
// Per pool, the linear add/subtract algorithm:
//
//	VT  nodes needed: max(min, demand over the node size, by CPU or memory,
//	    whichever needs more), where the demand is what runs on the pool's
//	    nodes (system jobs aside) plus what Nomad cannot place, and the node
//	    size is the median capacity of the pool's ready nodes
//	VA  in service: ready, eligible, not draining, not marked
//	VB  starting: machines being created (target "command")
//	VD  stopping: nodes marked parking, whose work is moving off
//	VN = VT - VA - VB
//
// When VN > 0, min(VN, max - VA - VB) nodes enter service: stopping nodes
// first (their scale-in is cancelled), then parked ones, then new machines.
// When VN < 0 has lasted scale_in_idle, min(-VN, VA - min) nodes leave
// service, those whose work is cheapest to move first and never one that
// runs work that cannot move. A node leaving service is first made
// ineligible and marked parking, so it takes no new work (seed 002's
// ispull); its movable allocations are moved live within the move budget;
// while it still runs anything (isdel), it is neither parked nor destroyed,
// however long that takes; then it is parked (ready, ineligible, marked
// parked) or destroyed.
package capacity

import "time"

// Resources are CPU in MHz and memory in MiB, as Nomad counts them.
type Resources struct {
	CPU      float64 `json:"cpu_mhz"`
	MemoryMB float64 `json:"memory_mb"`
}

func (r Resources) add(o Resources) Resources {
	return Resources{CPU: r.CPU + o.CPU, MemoryMB: r.MemoryMB + o.MemoryMB}
}

func (r Resources) scale(n int) Resources {
	return Resources{CPU: r.CPU * float64(n), MemoryMB: r.MemoryMB * float64(n)}
}

// Marks the companion leaves on a node (sdk.MetaCapacity's values).
const (
	MarkNone    = ""
	MarkParking = "parking"
	MarkParked  = "parked"
)

// Node is one Nomad client of a pool.
type Node struct {
	ID, Name, Pool           string
	Ready, Eligible, Drained bool // Drained: a drain is under way
	Mark                     string
	Capacity                 Resources
	Work                     []Work // what it runs, system jobs aside
	// Unknown: what it runs is not known (no agent publishes its record),
	// so it is never taken out of service, nor parked.
	Unknown bool
}

// Work is one allocation a node runs.
type Work struct {
	AllocID, JobID string
	Reserved       Resources
	// Checkpoint: a ferry task with checkpointing, moved live.
	// RestartMove: its job lets it move by restarting elsewhere.
	Checkpoint, RestartMove bool
}

// movable reports whether w can leave its node.
func (w Work) movable() bool { return w.Checkpoint || w.RestartMove }

// Queued is work of a pool that Nomad cannot place: Count allocations of a
// task group, each reserving Reserved.
type Queued struct {
	Pool, JobID, Group string
	Count              int
	Reserved           Resources
}

// Snapshot is what one round looks at.
type Snapshot struct {
	Now    time.Time
	Nodes  []Node
	Queued []Queued
	// InFlight are the moves under way cluster-wide (the rebalancer's
	// too), by allocation; MoveBudget is how many may be, at most.
	InFlight   map[string]bool
	MoveBudget int
}

// State is carried from one round to the next, per pool.
type State struct {
	Pools map[string]PoolState `json:"pools,omitempty"`
}

// PoolState is one pool's memory between rounds.
type PoolState struct {
	// SurplusSince is when the pool first had more nodes in service than
	// it needs, in the current run of such rounds.
	SurplusSince time.Time `json:"surplus_since,omitzero"`
	// Launches are machines being created (target "command").
	Launches []Launch `json:"launches,omitempty"`
	// Destroying are nodes whose scale_in command ran, by ID.
	Destroying map[string]time.Time `json:"destroying,omitempty"`
}

// Launch is one scale_out command: Count machines asked for when the pool
// had Known nodes.
type Launch struct {
	At    time.Time `json:"at"`
	Count int       `json:"count"`
	Known int       `json:"known"`
}

// ActionKind is what an action does to a node or the pool.
type ActionKind string

const (
	// ActUnpark makes a parked node eligible and removes its mark.
	ActUnpark ActionKind = "unpark"
	// ActCancel returns a stopping node to service.
	ActCancel ActionKind = "cancel"
	// ActScaleIn marks a node parking and makes it ineligible.
	ActScaleIn ActionKind = "scale_in"
	// ActMove moves one allocation off a stopping node.
	ActMove ActionKind = "move"
	// ActPark marks a stopping node that runs nothing parked.
	ActPark ActionKind = "park"
	// ActLaunch runs scale_out for Count machines.
	ActLaunch ActionKind = "launch"
	// ActDestroy runs scale_in for a stopping node that runs nothing.
	ActDestroy ActionKind = "destroy"
	// ActClear removes a mark left on a node that is eligible again.
	ActClear ActionKind = "clear"
)

// Action is one step of a plan.
type Action struct {
	Kind     ActionKind `json:"kind"`
	NodeID   string     `json:"node_id,omitempty"`
	NodeName string     `json:"node,omitempty"`
	AllocID  string     `json:"alloc_id,omitempty"`
	Count    int        `json:"count,omitempty"`
	Reason   string     `json:"reason"`
}

// PoolPlan is one pool's round.
type PoolPlan struct {
	Pool   string `json:"pool"`
	Target string `json:"target"`
	// The algorithm's figures: needed, in service, starting, stopping,
	// and the quota; Parked are ready nodes kept out of service.
	VT     int `json:"vt"`
	VA     int `json:"va"`
	VB     int `json:"vb"`
	VD     int `json:"vd"`
	Parked int `json:"parked"`
	Quota  int `json:"quota"`
	// Demand is what runs and what waits; NodeSize the pool's median node.
	Demand   Resources `json:"demand"`
	NodeSize Resources `json:"node_size"`
	Actions  []Action  `json:"actions"`
	// Why says what the round decides for the pool and why, in a line.
	Why string `json:"why"`
	// Waiting are stopping nodes that cannot be parked yet, and why.
	Waiting []Action `json:"waiting,omitempty"`
}

// Plan is one round over every pool with a policy.
type Plan struct {
	Pools []PoolPlan `json:"pools"`
	State State      `json:"state"`
}
