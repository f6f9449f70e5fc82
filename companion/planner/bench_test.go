package planner

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchSnapshot is n nodes with ten allocations each: about 5% of nodes are
// hot with online work, the rest carry random load, and a tenth run arm64.
func benchSnapshot(n int) Snapshot {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	snap := Snapshot{Now: now, Nodes: make([]Node, 0, n), Allocs: make([]Alloc, 0, 10*n)}
	for i := range n {
		name := fmt.Sprintf("ferry-c%05d", i)
		nd := node(name, offline(rng.Float64()*0.3, rng.Float64()*0.3))
		if rng.IntN(20) == 0 {
			hot(&nd)
		} else {
			online(rng.Float64()*0.5, rng.Float64()*0.5)(&nd)
		}
		if rng.IntN(10) == 0 {
			nd.Platform = "linux/arm64"
		}
		nd.Datacenter = fmt.Sprintf("dc%d", i%2)
		snap.Nodes = append(snap.Nodes, nd)
		for j := range 10 {
			a := alloc(fmt.Sprintf("%s-a%d", name, j), name)
			a.JobID = fmt.Sprintf("job-%d", rng.IntN(n))
			switch j % 3 {
			case 0:
				a.JobType, a.Online = JobTypeService, true
			case 1:
				a.Priority = rng.IntN(60) + 10
				a.CrossArch = rng.IntN(4) == 0
			case 2:
				a.Checkpoint = false
				a.RestartMove = rng.IntN(2) == 0
			}
			a.Reserved = Resources{CPU: float64(100 * (1 + rng.IntN(20))), MemoryMB: float64(256 * (1 + rng.IntN(16)))}
			snap.Allocs = append(snap.Allocs, a)
		}
	}
	return snap
}

func BenchmarkRound(b *testing.B) {
	c := DefaultConfig()
	c.Consecutive = 1
	c.Limits = Limits{InFlight: 200, PerNode: 1, PerJob: 2, PerHour: 1000, PerRound: 1}
	for _, n := range []int{1000, 10000} {
		snap := benchSnapshot(n)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var p Plan
			for b.Loop() {
				p = Round(c, State{}, snap)
			}
			// Time per node shows the growth: flat (or falling) is linear.
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/node")
			b.ReportMetric(float64(len(p.Moves)), "moves")
			b.ReportMetric(float64(len(p.Rejected)), "rejections")
		})
	}
	// Worst case for placement: no destination has room, so every
	// candidate is refused.
	full := benchSnapshot(10000)
	for i := range full.Nodes {
		if full.Nodes[i].Online.CPU < 0.8*full.Nodes[i].Capacity.CPU {
			offline(0.99, 0.99)(&full.Nodes[i])
		}
	}
	b.Run("nodes=10000/full", func(b *testing.B) {
		b.ReportAllocs()
		var p Plan
		for b.Loop() {
			p = Round(c, State{}, full)
		}
		b.ReportMetric(float64(len(p.Moves)), "moves")
		b.ReportMetric(float64(len(p.Rejected)), "rejections")
	})
}
