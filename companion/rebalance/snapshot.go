package rebalance

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consul "github.com/hashicorp/consul/api"
	nomad "github.com/hashicorp/nomad/api"
)

// Sources is where a snapshot is read from: the agents' node records in
// Consul, Nomad's node list, and the migration records.
type Sources struct {
	Nomad       *nomad.Client
	Consul      *consul.Client
	Records     *migrate.Records
	NodesPrefix string // sdk.PrefixNodes
}

// history is how long finished migration records are kept.
const history = 24 * time.Hour

// Inputs are the raw reads of one round.
type Inputs struct {
	Now        time.Time
	Records    []load.Record
	Nodes      []*nomad.NodeListStub
	Migrations []*migrate.Record
}

// Read reads everything one round looks at: one KV list of node records,
// one Nomad node list, one KV list of migrations.
func (s *Sources) Read(ctx context.Context) (*Inputs, error) {
	records, _, err := load.List(ctx, s.Consul, s.NodesPrefix)
	if err != nil {
		return nil, fmt.Errorf("read node records: %w", err)
	}
	nodes, _, err := s.Nomad.Nodes().List((&nomad.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list Nomad nodes: %w", err)
	}
	migrations, err := s.Records.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	return &Inputs{Now: time.Now(), Records: records, Nodes: nodes, Migrations: migrations}, nil
}

// Snapshot turns the reads into the planner's view. Only nodes with a live
// node record take part: a node without one, whose agent is not running,
// has no measurements.
func (in *Inputs) Snapshot() planner.Snapshot {
	snap := planner.Snapshot{Now: in.Now}
	stubs := make(map[string]*nomad.NodeListStub, len(in.Nodes))
	for _, n := range in.Nodes {
		stubs[n.ID] = n
	}
	lastMoved := make(map[string]time.Time)
	for _, m := range in.Migrations {
		switch {
		case m.Result == migrate.ResultInProgress:
			if migrate.Abandoned(m, in.Now) {
				continue // its mover died mid-move: see Rebalancer.prune
			}
			snap.InFlight = append(snap.InFlight, moveOf(m))
		case in.Now.Sub(m.FinishedAt) <= time.Hour:
			snap.Recent = append(snap.Recent, moveOf(m))
		}
		// The cooldown holds for the allocation that replaced the moved
		// one, and for one that stayed because its move failed.
		at := m.FinishedAt
		if at.IsZero() {
			at = m.StartedAt
		}
		for _, id := range []string{m.AllocID, m.NewAllocID} {
			if id != "" && at.After(lastMoved[id]) {
				lastMoved[id] = at
			}
		}
	}

	groups := make(map[[2]string]int)
	for _, r := range in.Records {
		for _, a := range r.Allocs {
			groups[[2]string{a.JobID, a.Group}]++
		}
	}
	for _, r := range in.Records {
		stub, ok := stubs[r.NodeID]
		// A stale record's agent stopped publishing: its node is neither
		// measured nor a destination until it publishes again.
		if !ok || r.Stale(in.Now) {
			continue
		}
		snap.Nodes = append(snap.Nodes, nodeOf(stub, &r))
		for _, a := range r.Allocs {
			snap.Allocs = append(snap.Allocs, planner.Alloc{
				ID: a.ID, JobID: a.JobID, Group: a.Group, NodeID: r.NodeID,
				Priority: a.Priority, JobType: a.JobType, Online: a.Online,
				Checkpoint: a.Checkpoint, RestartMove: a.RestartMove, CrossArch: a.CrossArch,
				Reserved:        resources(a.Reserved),
				Usage:           resources(a.Usage),
				LastMoved:       lastMoved[a.ID],
				GroupRunning:    groups[[2]string{a.JobID, a.Group}],
				GroupMinHealthy: a.MinHealthy,
			})
		}
	}
	return snap
}

func nodeOf(stub *nomad.NodeListStub, r *load.Record) planner.Node {
	n := planner.Node{
		ID: stub.ID, Name: stub.Name, Datacenter: stub.Datacenter, Pool: stub.NodePool,
		Ready:    stub.Status == nomad.NodeStatusReady,
		Eligible: stub.SchedulingEligibility == nomad.NodeSchedulingEligible,
		Draining: stub.Drain,
		Capacity: resources(r.Capacity),
		Online:   resources(r.Online),
		Offline:  resources(r.Offline),
	}
	if d := stub.Drivers[sdk.DriverName]; d != nil && d.Detected && d.Healthy {
		n.Platform = d.Attributes[sdk.AttrPlatform]
		n.CanCheckpoint = d.Attributes[sdk.AttrCheckpoint] == "true"
	}
	return n
}

func moveOf(m *migrate.Record) planner.Move {
	return planner.Move{
		AllocID: m.AllocID, JobID: m.JobID,
		From: m.SourceNodeID, To: m.TargetNodeID,
		Kind:     planner.MoveKind(m.Kind),
		Reserved: planner.Resources{CPU: m.CPU, MemoryMB: m.MemoryMB},
		Started:  m.StartedAt,
	}
}

func resources(r load.Resources) planner.Resources {
	return planner.Resources{CPU: r.CPU, MemoryMB: r.MemoryMB}
}
