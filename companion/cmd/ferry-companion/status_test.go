package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/rebalance"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/shoenig/test/must"
)

// TestPrintStatusCheckpoints: the status says how many checkpoint records
// are in each state, how many are due for reaping, and what was reaped.
func TestPrintStatusCheckpoints(t *testing.T) {
	st := &rebalance.Status{Checkpoints: &rebalance.CheckpointStatus{
		States: []rebalance.CheckpointState{
			{State: catalog.StateCheckpointing, Age: time.Hour},
			{State: catalog.StateReady, Count: 3, Due: 1, Age: 24 * time.Hour},
			{State: catalog.StateRestored, Count: 1, Due: 1},
			{State: catalog.StateFailed, Count: 2, Age: 7 * 24 * time.Hour},
		},
		Total:       6,
		Reaped:      map[catalog.State]int{catalog.StateReady: 1, catalog.StateCheckpointing: 1},
		ReapedTotal: 2,
		Window:      24 * time.Hour,
	}}
	var out strings.Builder
	printStatus(&out, st, time.Now())
	must.StrContains(t, out.String(), `
Checkpoints (6 records):
  3 ready (1 older than 24h: reaped at next pass)
  1 restored (1 to remove: reaped at next pass)
  2 failed (kept 7d for the operator)
Reaped in the last 24h: 2 (1 checkpointing, 1 ready)
`)
	must.StrNotContains(t, out.String(), "0 checkpointing")

	st.Checkpoints = &rebalance.CheckpointStatus{Reaped: map[catalog.State]int{}, Window: 24 * time.Hour}
	out.Reset()
	printStatus(&out, st, time.Now())
	must.StrContains(t, out.String(), "\nCheckpoints (0 records):\nReaped in the last 24h: 0\n")
}
