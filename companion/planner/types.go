// Package planner is one planning round of the companion's load-aware
// rebalancer, as pure logic: given a snapshot of nodes, allocations and
// moves, it decides which offline allocations leave which hot nodes and
// where they go. It makes no Nomad or Consul calls and keeps no global
// state; hysteresis is carried between rounds in State.
//
// Online work is what the rebalancer protects; each node's agent decides
// what is online when it publishes its record (load.Classify: service and
// system jobs, and jobs at or above online_priority), and the planner takes
// that verdict as it is (Alloc.Online). Offline work is everything else
// (typically batch). A node is hot when its online usage stays at or above the high
// threshold for Config.Consecutive rounds; offline allocations are then
// moved, one policy at a time, to the least-loaded node that can take them:
//
//   - heat.go:       thresholds and hysteresis (which nodes are hot)
//   - candidates.go: which allocations may leave a hot node, in what order
//   - budget.go:     limits on in-flight, per-node, per-job, hourly moves
//   - dest.go:       placement on the least-loaded node with room
package planner

import "time"

// Resources are CPU in MHz and memory in MiB.
type Resources struct {
	CPU      float64 `json:"cpu_mhz"`
	MemoryMB float64 `json:"memory_mb"`
}

func (r Resources) add(o Resources) Resources {
	return Resources{CPU: r.CPU + o.CPU, MemoryMB: r.MemoryMB + o.MemoryMB}
}

// Node is one Nomad client as the planner sees it.
type Node struct {
	ID, Name, Datacenter, Pool string
	Platform                   string // "linux/amd64"

	Ready, Eligible, Draining, CanCheckpoint bool

	Capacity Resources
	// Smoothed measured usage (averaged by the agent), split by work class.
	Online, Offline Resources
}

// Job types the planner distinguishes.
const (
	JobTypeService = "service"
	JobTypeBatch   = "batch"
	JobTypeSystem  = "system"
	JobTypeSysBat  = "sysbatch"
)

// Alloc is one running allocation.
type Alloc struct {
	ID, JobID, Group, NodeID string
	Priority                 int
	JobType                  string // "service" | "batch" | "system" | "sysbatch"
	Online                   bool   // protected work, as its node's agent classified it

	Checkpoint  bool // ferry task with checkpointing: can move live
	RestartMove bool // job opted into a restart move (no checkpoint)
	CrossArch   bool // job allows a cold move to another platform

	Reserved  Resources // what Nomad reserved for it
	Usage     Resources // measured
	LastMoved time.Time

	// A move never takes a group below its healthy minimum.
	GroupRunning, GroupMinHealthy int
}

// MoveKind says how an allocation moves.
type MoveKind string

const (
	// MoveLive checkpoints the task and restores it on the destination.
	MoveLive MoveKind = "live"
	// MoveRestart stops the task and starts it afresh on the destination;
	// every move to another platform is a restart move.
	MoveRestart MoveKind = "restart"
)

// Move is a planned, in-flight or finished migration.
type Move struct {
	AllocID  string    `json:"alloc_id"`
	JobID    string    `json:"job_id"`
	From     string    `json:"from"` // node ID
	To       string    `json:"to"`   // node ID
	Kind     MoveKind  `json:"kind"`
	Reserved Resources `json:"reserved"`
	Started  time.Time `json:"started"`
}

// Snapshot is everything one round looks at.
type Snapshot struct {
	Now      time.Time
	Nodes    []Node
	Allocs   []Alloc
	InFlight []Move
	Recent   []Move // finished within the last hour
}

// State is carried from one round to the next for hysteresis, keyed by
// node ID. The zero State is a valid first round.
type State struct {
	HotStreak map[string]int  `json:"hot_streak"` // consecutive rounds at or above High
	Hot       map[string]bool `json:"hot"`        // nodes currently hot
}

// Decision is one planned move and why it was chosen.
type Decision struct {
	Move   Move   `json:"move"`
	Reason string `json:"reason"`
}

// Rejection says why an allocation (AllocID set) or a node (AllocID empty)
// was skipped, for `ferry-companion plan` to print.
type Rejection struct {
	AllocID string `json:"alloc_id,omitempty"`
	NodeID  string `json:"node_id"`
	Reason  string `json:"reason"`
}

// NodeReport is the heat of one node this round.
type NodeReport struct {
	NodeID   string    `json:"node_id"`
	Name     string    `json:"name"`
	Load     Resources `json:"online"`   // online usage
	Fraction float64   `json:"fraction"` // online usage fraction: max of cpu and memory
	Hot      bool      `json:"hot"`
	Streak   int       `json:"streak"` // consecutive rounds at or above High
}

// Plan is the outcome of one round. State is to be passed to the next.
type Plan struct {
	Moves    []Decision   `json:"moves"`
	Rejected []Rejection  `json:"rejected"`
	Nodes    []NodeReport `json:"nodes"`
	State    State        `json:"state"`
}
