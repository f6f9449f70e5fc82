package capacity

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkCapacityRound is one capacity round over simulated pools: ten pools of
// nodes with ten allocations each at most (a tenth parked, a few stopping
// with work to move, some running work that cannot move), and work queued
// for half the pools.
func BenchmarkCapacityRound(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			policies, s := simulate(n)
			b.ReportAllocs()
			b.ResetTimer()
			var p Plan
			for b.Loop() {
				p = Round(policies, State{}, s)
			}
			actions := 0
			for _, pp := range p.Pools {
				actions += len(pp.Actions)
			}
			b.ReportMetric(float64(actions), "actions")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/node")
		})
	}
}

func simulate(n int) (map[string]Policy, Snapshot) {
	rng := rand.New(rand.NewPCG(1, 2))
	policies := map[string]Policy{}
	const pools = 10
	for i := range pools {
		p := DefaultPolicy()
		p.Min, p.Max, p.ScaleInIdle = n/pools/10, n/pools, 0
		policies[fmt.Sprintf("pool-%d", i)] = p
	}
	s := Snapshot{Now: time.Unix(1e9, 0), MoveBudget: 20, InFlight: map[string]bool{}}
	for i := range n {
		nd := Node{ID: fmt.Sprintf("n%05d", i), Name: fmt.Sprintf("node-%05d", i), Pool: fmt.Sprintf("pool-%d", i%pools),
			Ready: true, Eligible: true, Capacity: Resources{CPU: 16000, MemoryMB: 65536}}
		switch {
		case i%10 == 0:
			nd.Eligible, nd.Mark = false, MarkParked
		case i%97 == 0:
			nd.Eligible, nd.Mark = false, MarkParking
			fallthrough
		default:
			for j := range rng.IntN(10) {
				nd.Work = append(nd.Work, Work{AllocID: fmt.Sprintf("a%05d-%d", i, j), JobID: fmt.Sprintf("job-%d", rng.IntN(n)),
					Reserved:   Resources{CPU: float64(100 * (1 + rng.IntN(20))), MemoryMB: float64(256 * (1 + rng.IntN(16)))},
					Checkpoint: rng.IntN(4) != 0, RestartMove: rng.IntN(8) == 0})
			}
		}
		s.Nodes = append(s.Nodes, nd)
	}
	for i := range pools / 2 {
		s.Queued = append(s.Queued, Queued{Pool: fmt.Sprintf("pool-%d", i), JobID: "queued", Group: "g", Count: n / 20,
			Reserved: Resources{CPU: 2000, MemoryMB: 8192}})
	}
	return policies, s
}
