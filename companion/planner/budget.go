package planner

import "fmt"

// budget enforces Config.Limits, counting in-flight moves and the moves
// planned so far this round.
type budget struct {
	limits Limits

	total  int // in flight + planned
	hour   int // finished in the last hour + in flight + planned
	from   map[string]int
	to     map[string]int
	jobs   map[string]int
	groups map[string]int  // task group -> allocations moving out of it
	moving map[string]bool // allocations in flight or planned
}

func newBudget(l Limits, snap *Snapshot) budget {
	b := budget{
		limits: l,
		total:  len(snap.InFlight),
		hour:   len(snap.Recent) + len(snap.InFlight),
		from:   make(map[string]int, len(snap.InFlight)),
		to:     make(map[string]int, len(snap.InFlight)),
		jobs:   make(map[string]int, len(snap.InFlight)),
		groups: make(map[string]int, len(snap.InFlight)),
		moving: make(map[string]bool, len(snap.InFlight)),
	}
	for _, m := range snap.InFlight {
		b.from[m.From]++
		b.to[m.To]++
		b.jobs[m.JobID]++
		b.moving[m.AllocID] = true
	}
	return b
}

func groupKey(a *Alloc) string { return a.JobID + "\x00" + a.Group }

// sourceBlocked says why nothing may leave src this round, if so.
func (b *budget) sourceBlocked(src *Node) string {
	switch {
	case b.total >= b.limits.InFlight:
		return fmt.Sprintf("limits.in_flight reached (%d of %d moves in flight or planned)", b.total, b.limits.InFlight)
	case b.hour >= b.limits.PerHour:
		return fmt.Sprintf("limits.per_hour reached (%d of %d moves in the last hour)", b.hour, b.limits.PerHour)
	case b.from[src.ID] >= b.limits.PerNode:
		return fmt.Sprintf("limits.per_node reached (%d of %d moves already leaving it)", b.from[src.ID], b.limits.PerNode)
	}
	return ""
}

// blocked says why a may not move off src now, if so. moved is the number
// of moves already planned off src this round.
func (b *budget) blocked(src *Node, a *Alloc, moved int) string {
	if why := b.sourceBlocked(src); why != "" {
		return why
	}
	if moved >= b.limits.PerRound {
		return fmt.Sprintf("limits.per_round reached (%d moves planned off %s this round)", moved, src.Name)
	}
	if n := b.jobs[a.JobID]; n >= b.limits.PerJob {
		return fmt.Sprintf("limits.per_job reached (%d of %d moves of job %s in flight or planned)", n, b.limits.PerJob, a.JobID)
	}
	if n := b.groups[groupKey(a)]; a.GroupRunning-n-1 < a.GroupMinHealthy {
		return fmt.Sprintf("group %s/%s must keep %d healthy: %d running, %d already moving",
			a.JobID, a.Group, a.GroupMinHealthy, a.GroupRunning, n)
	}
	return ""
}

// destFull reports whether node id may receive no more moves this round.
func (b *budget) destFull(id string) bool { return b.to[id] >= b.limits.PerNode }

func (b *budget) commit(a *Alloc, m Move) {
	b.total++
	b.hour++
	b.from[m.From]++
	b.to[m.To]++
	b.jobs[m.JobID]++
	b.groups[groupKey(a)]++
	b.moving[m.AllocID] = true
}
