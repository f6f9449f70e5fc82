package planner

import (
	"cmp"
	"slices"
)

// heat is a node's online usage against the thresholds.
type heat struct {
	cpu, mem float64 // online usage fractions of capacity
	pressure float64 // max of cpu/High and mem/High: >= 1 is over
	over     bool    // either resource at or above High
	cool     bool    // both resources below Low
}

func fraction(used, capacity float64) float64 {
	if capacity <= 0 {
		return 0
	}
	return used / capacity
}

func (t Thresholds) heat(n *Node) heat {
	h := heat{
		cpu: fraction(n.Online.CPU, n.Capacity.CPU),
		mem: fraction(n.Online.MemoryMB, n.Capacity.MemoryMB),
	}
	h.pressure = max(h.cpu/t.CPU.High, h.mem/t.Memory.High)
	h.over = h.cpu >= t.CPU.High || h.mem >= t.Memory.High
	h.cool = h.cpu < t.CPU.Low && h.mem < t.Memory.Low
	return h
}

// step advances one node's hysteresis by a round: the streak counts rounds
// in a row over High; a node turns hot once the streak reaches consecutive
// and stays hot until it is cool (below Low on both resources).
func step(h heat, consecutive int, prevStreak int, prevHot bool) (streak int, hot bool) {
	if h.over {
		streak = prevStreak + 1
	}
	if prevHot {
		return streak, !h.cool
	}
	return streak, streak >= consecutive
}

// assess computes heat for every node, fills the node reports and the next
// state, and returns the hot nodes' indexes, hottest first.
func (r *round) assess() {
	nodes := r.snap.Nodes
	r.heat = make([]heat, len(nodes))
	r.isHot = make([]bool, len(nodes))
	r.out.Nodes = make([]NodeReport, len(nodes))
	r.out.State = State{HotStreak: map[string]int{}, Hot: map[string]bool{}}
	for i := range nodes {
		n := &nodes[i]
		h := r.cfg.Thresholds.heat(n)
		streak, hot := step(h, r.cfg.Consecutive, r.prev.HotStreak[n.ID], r.prev.Hot[n.ID])
		r.heat[i], r.isHot[i] = h, hot
		if streak > 0 {
			r.out.State.HotStreak[n.ID] = streak
		}
		if hot {
			r.out.State.Hot[n.ID] = true
			r.hot = append(r.hot, i)
		}
		r.out.Nodes[i] = NodeReport{
			NodeID: n.ID, Name: n.Name,
			Load:     n.Online,
			Fraction: max(h.cpu, h.mem),
			Hot:      hot, Streak: streak,
		}
	}
	slices.SortFunc(r.hot, func(a, b int) int {
		if c := cmp.Compare(r.heat[b].pressure, r.heat[a].pressure); c != 0 {
			return c
		}
		if c := cmp.Compare(nodes[a].Name, nodes[b].Name); c != 0 {
			return c
		}
		return cmp.Compare(nodes[a].ID, nodes[b].ID)
	})
}
