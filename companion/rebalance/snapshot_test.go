package rebalance

import (
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

func TestSnapshot(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	ferry := func(platform string) map[string]*nomad.DriverInfo {
		return map[string]*nomad.DriverInfo{sdk.DriverName: {Detected: true, Healthy: true,
			Attributes: map[string]string{sdk.AttrPlatform: platform, sdk.AttrCheckpoint: "true"}}}
	}
	in := &Inputs{
		Now: now,
		Nodes: []*nomad.NodeListStub{
			{ID: "n1", Name: "a", Datacenter: "dc1", NodePool: "default", Status: "ready", SchedulingEligibility: "eligible", Drivers: ferry("linux/amd64")},
			{ID: "n2", Name: "b", Datacenter: "dc1", NodePool: "default", Status: "ready", SchedulingEligibility: "ineligible", Drain: true,
				Drivers: map[string]*nomad.DriverInfo{"ferry": {Detected: true, Healthy: false}}},
			{ID: "n3", Name: "c", Status: "ready"}, // its record is stale: left out
		},
		Records: []load.Record{
			{NodeID: "n1", Capacity: load.Resources{CPU: 4000, MemoryMB: 8000}, Online: load.Resources{CPU: 3000}, Offline: load.Resources{CPU: 500},
				Allocs: []load.Alloc{
					{ID: "x1", JobID: "sim", Group: "g", JobType: "batch", Priority: 40, Checkpoint: true, MinHealthy: 0,
						Reserved: load.Resources{CPU: 100, MemoryMB: 64}, Usage: load.Resources{CPU: 500}},
					{ID: "w1", JobID: "web", Group: "g", JobType: "service", Priority: 50, Online: true, MinHealthy: 1},
				}},
			{NodeID: "n2", Allocs: []load.Alloc{{ID: "w2", JobID: "web", Group: "g", JobType: "service", MinHealthy: 1}}},
			{NodeID: "gone"}, // a node Nomad no longer knows
			// An agent that stopped publishing three heartbeats ago.
			{NodeID: "n3", Heartbeat: "1m0s", SampledAt: now.Add(-3 * time.Minute)},
		},
		Migrations: []*migrate.Record{
			// In flight, and abandoned long ago.
			{ID: "m1", AllocID: "y1", JobID: "sim", SourceNodeID: "n1", TargetNodeID: "n2", Kind: "live", CPU: 100, MemoryMB: 64,
				Result: "in_progress", StartedAt: now.Add(-time.Minute)},
			{ID: "m2", AllocID: "y2", Result: "in_progress", StartedAt: now.Add(-time.Hour)},
			// Finished: x1 replaced x0 ten minutes ago; an old one is not recent.
			{ID: "m3", AllocID: "x0", NewAllocID: "x1", JobID: "sim", Result: "restored",
				StartedAt: now.Add(-11 * time.Minute), FinishedAt: now.Add(-10 * time.Minute)},
			{ID: "m4", AllocID: "z", Result: "failed", StartedAt: now.Add(-3 * time.Hour), FinishedAt: now.Add(-3 * time.Hour)},
		},
	}
	snap := in.Snapshot()

	must.Eq(t, now, snap.Now)
	must.SliceLen(t, 2, snap.Nodes)
	must.Eq(t, planner.Node{ID: "n1", Name: "a", Datacenter: "dc1", Pool: "default", Platform: "linux/amd64",
		Ready: true, Eligible: true, CanCheckpoint: true,
		Capacity: planner.Resources{CPU: 4000, MemoryMB: 8000}, Online: planner.Resources{CPU: 3000}, Offline: planner.Resources{CPU: 500}}, snap.Nodes[0])
	// An unhealthy driver is no platform: never a destination.
	must.Eq(t, "", snap.Nodes[1].Platform)
	must.True(t, snap.Nodes[1].Draining)
	must.False(t, snap.Nodes[1].Eligible)

	must.SliceLen(t, 3, snap.Allocs)
	x1 := snap.Allocs[0]
	must.Eq(t, "x1", x1.ID)
	must.Eq(t, "n1", x1.NodeID)
	must.True(t, x1.Checkpoint)
	must.Eq(t, now.Add(-10*time.Minute), x1.LastMoved)
	must.Eq(t, planner.Resources{CPU: 100, MemoryMB: 64}, x1.Reserved)
	must.Eq(t, 1, x1.GroupRunning)
	// The agent's verdict on online work is the planner's.
	must.False(t, x1.Online)
	must.True(t, snap.Allocs[1].Online)
	// web/g runs on two nodes.
	must.Eq(t, 2, snap.Allocs[1].GroupRunning)
	must.Eq(t, 1, snap.Allocs[1].GroupMinHealthy)

	must.Eq(t, []planner.Move{{AllocID: "y1", JobID: "sim", From: "n1", To: "n2", Kind: planner.MoveLive,
		Reserved: planner.Resources{CPU: 100, MemoryMB: 64}, Started: now.Add(-time.Minute)}}, snap.InFlight)
	must.SliceLen(t, 1, snap.Recent)
	must.Eq(t, "x0", snap.Recent[0].AllocID)
}
