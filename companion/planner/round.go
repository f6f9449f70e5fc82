package planner

import "fmt"

// round is the working state of one call to Round.
type round struct {
	cfg  Config
	prev State
	snap Snapshot
	out  Plan

	heat  []heat // by node index
	isHot []bool // by node index
	hot   []int  // hot node indexes, hottest first

	onHot map[int][]int // hot node index -> indexes of its allocations

	budget budget
	dests  destinations
}

// Round plans one round: which offline allocations leave which hot nodes,
// and where to. It is pure: the same inputs give the same plan. The
// configuration is assumed valid (see Config.Validate).
func Round(cfg Config, prev State, snap Snapshot) Plan {
	r := &round{cfg: cfg, prev: prev, snap: snap}
	r.assess()
	r.budget = newBudget(cfg.Limits, &snap)
	r.index()
	r.dests = newDestinations(r)
	for _, ni := range r.hot {
		r.relieve(ni)
	}
	return r.out
}

// index buckets the allocations of hot nodes by node, and counts in-flight
// moves per task group, in one pass over the allocations.
func (r *round) index() {
	nodeIdx := make(map[string]int, len(r.hot))
	for _, ni := range r.hot {
		nodeIdx[r.snap.Nodes[ni].ID] = ni
	}
	r.onHot = make(map[int][]int, len(r.hot))
	for i := range r.snap.Allocs {
		a := &r.snap.Allocs[i]
		if r.budget.moving[a.ID] {
			r.budget.groups[groupKey(a)]++
		}
		if ni, ok := nodeIdx[a.NodeID]; ok {
			r.onHot[ni] = append(r.onHot[ni], i)
		}
	}
}

// relieve plans moves off one hot node.
func (r *round) relieve(ni int) {
	src := &r.snap.Nodes[ni]
	if why := r.budget.sourceBlocked(src); why != "" {
		r.rejectNode(src, "hot, but "+why)
		return
	}
	cands := r.candidates(ni)
	moved := 0
	for _, ai := range cands {
		a := &r.snap.Allocs[ai]
		if why := r.budget.blocked(src, a, moved); why != "" {
			r.reject(a, why)
			continue
		}
		pl, kind, why := r.dests.place(src, a)
		if pl.list == nil {
			r.reject(a, why)
			continue
		}
		d := pl.dest()
		m := Move{
			AllocID: a.ID, JobID: a.JobID,
			From: src.ID, To: d.node.ID,
			Kind:     kind,
			Reserved: a.Reserved,
			Started:  r.snap.Now,
		}
		r.budget.commit(a, m)
		before := d.load
		r.dests.commit(pl, a.Reserved, r.budget.destFull(d.node.ID))
		h := r.heat[ni]
		r.out.Moves = append(r.out.Moves, Decision{Move: m, Reason: fmt.Sprintf(
			"%s is hot (online cpu %.0f%%, memory %.0f%%); %s/%s is offline work (%s, priority %d); %s move to %s (load %.0f%% -> %.0f%%)",
			src.Name, 100*h.cpu, 100*h.mem, a.JobID, a.Group, a.JobType, a.Priority,
			kind, d.node.Name, 100*before, 100*d.load)})
		moved++
	}
	if moved == 0 {
		r.rejectNode(src, "hot, but no allocation moves off it this round (see the allocations' reasons)")
	}
}

func (r *round) reject(a *Alloc, why string) {
	r.out.Rejected = append(r.out.Rejected, Rejection{AllocID: a.ID, NodeID: a.NodeID, Reason: why})
}

func (r *round) rejectNode(n *Node, why string) {
	r.out.Rejected = append(r.out.Rejected, Rejection{NodeID: n.ID, Reason: why})
}
