package planner

import (
	"cmp"
	"fmt"
	"slices"
)

// candidates returns the allocations of hot node ni that may move, in the
// order to try them: batch before other offline job types, then lowest
// priority, then smallest reserved memory, then ID. Online allocations are
// skipped silently (they are what is being protected); every other skipped
// allocation gets a rejection.
func (r *round) candidates(ni int) []int {
	var out []int
	for _, ai := range r.onHot[ni] {
		a := &r.snap.Allocs[ai]
		if a.Online {
			continue
		}
		if why := r.unmovable(a); why != "" {
			r.reject(a, why)
			continue
		}
		out = append(out, ai)
	}
	allocs := r.snap.Allocs
	slices.SortFunc(out, func(i, j int) int {
		a, b := &allocs[i], &allocs[j]
		if c := cmp.Compare(rankType(a), rankType(b)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Reserved.MemoryMB, b.Reserved.MemoryMB); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

func rankType(a *Alloc) int {
	if a.JobType == JobTypeBatch {
		return 0
	}
	return 1
}

// unmovable says why offline allocation a may never move this round.
func (r *round) unmovable(a *Alloc) string {
	switch {
	case a.JobType == JobTypeSystem || a.JobType == JobTypeSysBat:
		return a.JobType + " jobs run on every node and are never moved"
	case !a.Checkpoint && !a.RestartMove:
		return "cannot move: not a checkpointing ferry task and the job has not opted into restart moves"
	case r.budget.moving[a.ID]:
		return "already moving"
	case r.cfg.Cooldown > 0 && !a.LastMoved.IsZero() && r.snap.Now.Sub(a.LastMoved) < r.cfg.Cooldown:
		return fmt.Sprintf("cooldown: moved %s ago, cooldown is %s",
			r.snap.Now.Sub(a.LastMoved).Round(1e9), r.cfg.Cooldown)
	}
	return ""
}
