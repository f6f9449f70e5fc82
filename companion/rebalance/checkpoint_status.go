package rebalance

import (
	"context"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	consul "github.com/hashicorp/consul/api"
)

// CheckpointStatus counts the drivers' checkpoint records by state, those
// due for reaping (by the ages each carries), and what the reapers (every
// node's driver, and the planner) reaped within catalog.ReapedWindow.
type CheckpointStatus struct {
	States []CheckpointState `json:"states"` // in the order of a move's life
	Total  int               `json:"total"`
	// Reaped counts, by state, the records reaped lately; ReapedTotal
	// sums them.
	Reaped      map[catalog.State]int `json:"reaped"`
	ReapedTotal int                   `json:"reaped_total"`
	Window      time.Duration         `json:"window"`
}

// CheckpointState is the records in one state.
type CheckpointState struct {
	State catalog.State `json:"state"`
	Count int           `json:"count"`
	// Due are reaped at the next pass of their reaper: older than their
	// age since their last change. Age is how long the records in this
	// state are kept (the longest, when their sources' ages differ; the
	// default without records).
	Due int           `json:"due"`
	Age time.Duration `json:"age"`
}

// checkpointStates is the order states are shown in.
var checkpointStates = []catalog.State{
	catalog.StateCheckpointing, catalog.StateReady, catalog.StateRestoring, catalog.StateRestoringLazy,
	catalog.StateRestored, catalog.StateColdStart, catalog.StateFailed,
}

// ReadCheckpointStatus reads the checkpoint records and the reap logs.
func ReadCheckpointStatus(ctx context.Context, c *consul.Client, now time.Time) (*CheckpointStatus, error) {
	recs, err := catalog.New(c, "", nil).List(ctx)
	if err != nil {
		return nil, err
	}
	logs, err := catalog.ReadReaped(ctx, c)
	if err != nil {
		return nil, err
	}
	return summarizeCheckpoints(recs, logs, now), nil
}

// summarizeCheckpoints counts recs by state and what logs reaped within
// the window.
func summarizeCheckpoints(recs []*catalog.Record, logs []catalog.ReapLog, now time.Time) *CheckpointStatus {
	st := &CheckpointStatus{Reaped: map[catalog.State]int{}, Window: catalog.ReapedWindow}
	index := map[catalog.State]int{}
	defaults := catalog.DefaultReapPolicy()
	for _, s := range checkpointStates {
		age, _ := defaults.Age(s)
		index[s] = len(st.States)
		st.States = append(st.States, CheckpointState{State: s, Age: age})
	}
	seen := map[catalog.State]bool{}
	for _, r := range recs {
		i, ok := index[r.State]
		if !ok {
			index[r.State] = len(st.States)
			i = len(st.States)
			st.States = append(st.States, CheckpointState{State: r.State})
		}
		st.States[i].Count++
		st.Total++
		if age, ok := r.ReapPolicy().Age(r.State); ok && (!seen[r.State] || age > st.States[i].Age) {
			st.States[i].Age = age
			seen[r.State] = true
		}
		if r.Due(now) {
			st.States[i].Due++
		}
	}
	for _, log := range logs {
		for _, e := range log.Reaped {
			if now.Sub(e.At) <= catalog.ReapedWindow {
				st.Reaped[e.State]++
				st.ReapedTotal++
			}
		}
	}
	return st
}
