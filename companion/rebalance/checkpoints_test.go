package rebalance

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate/nomadtest"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// putCheckpointRecord writes a checkpoint record of state from source,
// last changed age ago (the catalogue's Put would stamp it now), with the
// reap ages its source wrote into it (nil: none, the defaults).
func putCheckpointRecord(t *testing.T, c *api.Client, n int, source string, state catalog.State, age time.Duration, reap *catalog.ReapPolicy) *catalog.Record {
	t.Helper()
	changed := time.Now().Add(-age).UTC()
	r := &catalog.Record{
		AllocID: fmt.Sprintf("%08x-0000-4000-8000-000000000000", n), Task: "work",
		SourceNodeID: source, SourceNodeName: "node-" + source[:4], State: state, CreatedAt: changed, UpdatedAt: changed,
		Reap: reap,
	}
	value, err := json.Marshal(r)
	must.NoError(t, err)
	_, err = c.KV().Put(&api.KVPair{Key: catalog.New(c, "", nil).Key(r.AllocID, r.Task), Value: value}, nil)
	must.NoError(t, err)
	return r
}

// TestReapOrphanedCheckpoints: the planner reaps the records due for
// reaping whose source node Nomad no longer knows, leaves those of live
// nodes to them, and the status counts records and reaps.
func TestReapOrphanedCheckpoints(t *testing.T) {
	c := consulClient(t)
	agent := nomadtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	gone := "0badc0de-0000-4000-8000-000000000000"

	type tc struct {
		source string
		state  catalog.State
		age    time.Duration
		reap   bool
	}
	cases := []tc{
		{agent.NodeID, catalog.StateReady, 30 * time.Hour, false}, // its own driver reaps it
		{gone, catalog.StateReady, 30 * time.Hour, true},
		{gone, catalog.StateReady, time.Hour, false}, // may still be restored
		{gone, catalog.StateFailed, 8 * 24 * time.Hour, true},
		{gone, catalog.StateFailed, 24 * time.Hour, false}, // kept for the operator
		{gone, catalog.StateRestoring, 2 * time.Hour, true},
		// By the ages its source wrote into it: stale after 10 minutes.
		{gone, catalog.StateCheckpointing, 20 * time.Minute, true},
	}
	short := &catalog.ReapPolicy{Stale: 10 * time.Minute, Unclaimed: time.Hour, Retention: time.Hour}
	recs := make([]*catalog.Record, len(cases))
	for i, k := range cases {
		var reap *catalog.ReapPolicy
		if k.state == catalog.StateCheckpointing {
			reap = short
		}
		recs[i] = putCheckpointRecord(t, c, i+1, k.source, k.state, k.age, reap)
	}
	r := &Rebalancer{
		Config:  Config{Node: "planner-node"},
		Sources: &Sources{Nomad: agent.Client, Consul: c},
		Logger:  testutil.Logger(t, hclog.Debug),
	}

	// Before: every record counted, four due.
	st, err := ReadCheckpointStatus(ctx, c, time.Now())
	must.NoError(t, err)
	must.Eq(t, 7, st.Total)
	must.Eq(t, 0, st.ReapedTotal)
	due := 0
	for _, s := range st.States {
		due += s.Due
		if s.State == catalog.StateCheckpointing {
			must.Eq(t, 10*time.Minute, s.Age, must.Sprint("the status shows the records' own ages"))
		}
	}
	must.Eq(t, 5, due) // with the live node's, which its driver reaps

	// A dry run reaps nothing.
	r.Config.DryRun = true
	reaped, err := r.reapOrphanedCheckpoints(ctx, time.Now())
	must.NoError(t, err)
	must.SliceEmpty(t, reaped)

	r.Config.DryRun = false
	reaped, err = r.reapOrphanedCheckpoints(ctx, time.Now())
	must.NoError(t, err)
	must.Len(t, 4, reaped)
	cat := catalog.New(c, "", nil)
	for i, k := range cases {
		_, err := cat.Get(ctx, recs[i].AllocID, recs[i].Task)
		if k.reap {
			must.ErrorIs(t, err, catalog.ErrNotFound, must.Sprintf("case %d", i))
		} else {
			must.NoError(t, err, must.Sprintf("case %d", i))
		}
	}

	st, err = ReadCheckpointStatus(ctx, c, time.Now())
	must.NoError(t, err)
	must.Eq(t, 3, st.Total)
	must.Eq(t, 4, st.ReapedTotal)
	must.Eq(t, map[catalog.State]int{catalog.StateReady: 1, catalog.StateFailed: 1, catalog.StateRestoring: 1, catalog.StateCheckpointing: 1}, st.Reaped)
	for _, s := range st.States {
		switch s.State {
		case catalog.StateReady:
			must.Eq(t, 2, s.Count)
			must.Eq(t, 1, s.Due)
			must.Eq(t, catalog.DefaultReapUnclaimed, s.Age)
		case catalog.StateFailed:
			must.Eq(t, 1, s.Count)
			must.Eq(t, 0, s.Due)
		default:
			must.Eq(t, 0, s.Count, must.Sprint(s.State))
		}
	}
	logs, err := catalog.ReadReaped(ctx, c)
	must.NoError(t, err)
	must.Len(t, 1, logs)
	must.Eq(t, catalog.ReaperPlanner, logs[0].Reaper)
	must.Eq(t, "planner-node", logs[0].Name)
}

// TestReapLogWindow: a reap log keeps what was reaped within the window.
func TestReapLogWindow(t *testing.T) {
	c := consulClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	now := time.Now()
	old := catalog.Reaped{AllocID: "a", Task: "t", State: catalog.StateReady, At: now.Add(-2 * catalog.ReapedWindow)}
	must.NoError(t, catalog.AppendReaped(ctx, c, "node-1", "one", []catalog.Reaped{old}, now.Add(-2*catalog.ReapedWindow)))
	fresh := catalog.Reaped{AllocID: "b", Task: "t", State: catalog.StateFailed, At: now}
	must.NoError(t, catalog.AppendReaped(ctx, c, "node-1", "one", []catalog.Reaped{fresh}, now))
	logs, err := catalog.ReadReaped(ctx, c)
	must.NoError(t, err)
	must.Len(t, 1, logs)
	must.Len(t, 1, logs[0].Reaped)
	must.Eq(t, "b", logs[0].Reaped[0].AllocID)
}
