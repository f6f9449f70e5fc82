package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/task"
	"github.com/ferry-nomad/ferry/driver/testutil"
	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// reapWorld is a node's driver environment (real directories) with its
// catalogue on a real Consul.
type reapWorld struct {
	env    *environment
	client *consul.Client
	ctx    context.Context
	n      int
	tasks  *task.Store // the tasks the driver runs
}

const reapSelf = "node-self"

func newReapWorld(t *testing.T) *reapWorld {
	t.Helper()
	client, err := consul.NewClient(&consul.Config{Address: catalogtest.StartConsul(t)})
	must.NoError(t, err)
	l := layout{dataDir: t.TempDir(), stateDir: t.TempDir()}
	must.NoError(t, l.create())
	node := newNodeIdentity()
	node.set(reapSelf, "self", "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &reapWorld{
		env: &environment{
			layout: l, catalog: catalog.New(client, "", testutil.Logger(t, hclog.Off)),
			checkpoints: l.checkpoints(), node: node,
		},
		client: client, ctx: ctx,
	}
}

// record writes a record of state from source, last changed age ago, as
// the catalogue would have (Put would stamp it now), and returns it.
func (w *reapWorld) record(t *testing.T, source string, state catalog.State, age time.Duration) *catalog.Record {
	t.Helper()
	w.n++
	changed := time.Now().Add(-age).UTC()
	r := &catalog.Record{
		AllocID: fmt.Sprintf("%08x-0000-4000-8000-000000000000", w.n), Task: "work",
		SourceNodeID: source, SourceNodeName: source, State: state,
		CreatedAt: changed, UpdatedAt: changed,
	}
	value, err := json.Marshal(r)
	must.NoError(t, err)
	_, err = w.client.KV().Put(&consul.KVPair{Key: w.env.catalog.Key(r.AllocID, r.Task), Value: value}, nil)
	must.NoError(t, err)
	return r
}

// checkpointAt makes a checkpoint of r under root, complete (with its
// manifest) or not, its directory last changed age ago; it returns the
// directory.
func checkpointAt(t *testing.T, root string, r *catalog.Record, complete bool, age time.Duration) string {
	t.Helper()
	dir, err := checkpoint.Dir(root, r.AllocID, r.Task)
	must.NoError(t, err)
	must.NoError(t, os.MkdirAll(dir, 0o700))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte("memory"), 0o600))
	if complete {
		must.NoError(t, os.WriteFile(filepath.Join(dir, checkpoint.ManifestName), []byte("{}"), 0o600))
	}
	at := time.Now().Add(-age)
	must.NoError(t, os.Chtimes(dir, at, at))
	return dir
}

func (w *reapWorld) pass(t *testing.T) []catalog.Reaped {
	t.Helper()
	recs, err := w.env.catalog.List(w.ctx)
	must.NoError(t, err)
	if w.tasks == nil {
		w.tasks = task.NewStore()
	}
	return (&Driver{tasks: w.tasks}).reapPass(w.ctx, w.env, defaultCheckpointReap(), recs, time.Now(), testutil.Logger(t, hclog.Debug))
}

func (w *reapWorld) exists(t *testing.T, r *catalog.Record) bool {
	t.Helper()
	_, err := w.env.catalog.Get(w.ctx, r.AllocID, r.Task)
	if err == nil {
		return true
	}
	must.ErrorIs(t, err, catalog.ErrNotFound)
	return false
}

func present(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestReapByAge: this node's records and checkpoints are reaped by state
// and age, both where moves write them (state_dir) and where they are
// kept (data_dir); younger ones, and other nodes' records, stay.
func TestReapByAge(t *testing.T) {
	w := newReapWorld(t)
	scratch, kept := w.env.layout.scratch(), w.env.checkpoints
	type tc struct {
		state catalog.State
		age   time.Duration
		root  string
		reap  bool
	}
	cases := []tc{
		{catalog.StateCheckpointing, 2 * time.Hour, scratch, true},
		{catalog.StateCheckpointing, 20 * time.Minute, scratch, false},
		{catalog.StateRestoring, 2 * time.Hour, kept, true},
		{catalog.StateRestoring, 5 * time.Minute, kept, false},
		{catalog.StateReady, 25 * time.Hour, kept, true},
		{catalog.StateReady, 23 * time.Hour, kept, false},
		{catalog.StateFailed, 8 * 24 * time.Hour, kept, true},
		{catalog.StateFailed, 6 * 24 * time.Hour, kept, false}, // kept for the operator
		{catalog.StateRestored, time.Minute, scratch, true},    // restored elsewhere: removed at once
	}
	recs := make([]*catalog.Record, len(cases))
	dirs := make([]string, len(cases))
	for i, c := range cases {
		recs[i] = w.record(t, reapSelf, c.state, c.age)
		dirs[i] = checkpointAt(t, c.root, recs[i], true, c.age)
	}
	// Another node's old records are its own to reap.
	other := w.record(t, "node-other", catalog.StateFailed, 30*24*time.Hour)

	reaped := w.pass(t)
	states := map[catalog.State]int{}
	for _, r := range reaped {
		states[r.State]++
		must.NotEq(t, "", r.Why)
	}
	must.Eq(t, map[catalog.State]int{catalog.StateCheckpointing: 1, catalog.StateRestoring: 1, catalog.StateReady: 1, catalog.StateFailed: 1}, states)
	for i, c := range cases {
		what := must.Sprintf("%s, %s old", c.state, c.age)
		must.Eq(t, !c.reap, w.exists(t, recs[i]), what)
		must.Eq(t, !c.reap, present(dirs[i]), what)
	}
	must.True(t, w.exists(t, other))

	// What was reaped by age is in this node's reap log.
	logs, err := catalog.ReadReaped(w.ctx, w.client)
	must.NoError(t, err)
	must.Len(t, 1, logs)
	must.Eq(t, reapSelf, logs[0].Reaper)
	must.Eq(t, "self", logs[0].Name)
	must.Len(t, 4, logs[0].Reaped)

	// A second pass finds nothing more to reap.
	must.SliceEmpty(t, w.pass(t))
}

// TestReapLeftByCrash: after a crash, the first pass removes pushed
// checkpoints no live record needs (complete or cut short), checkpoint
// directories no record names once old enough, and keeps in data_dir the
// ready checkpoints left in state_dir.
func TestReapLeftByCrash(t *testing.T) {
	w := newReapWorld(t)
	incoming, scratch, kept := w.env.layout.incoming(), w.env.layout.scratch(), w.env.checkpoints

	// Pushed here: for a live record (stays), for a failed one, for one
	// due for reaping (its source is gone: not this node's to reap), for
	// one another node claimed, and for none at all, cut short.
	liveRec := w.record(t, "node-other", catalog.StateReady, time.Hour)
	liveIn := checkpointAt(t, incoming, liveRec, true, time.Hour)
	failedIn := checkpointAt(t, incoming, w.record(t, "node-other", catalog.StateFailed, time.Minute), true, 0)
	staleIn := checkpointAt(t, incoming, w.record(t, "node-gone", catalog.StateReady, 30*time.Hour), true, 30*time.Hour)
	claimed := w.record(t, "node-other", catalog.StateRestoring, time.Minute)
	claimed.DestNodeID = "node-third"
	value, err := json.Marshal(claimed)
	must.NoError(t, err)
	_, err = w.client.KV().Put(&consul.KVPair{Key: w.env.catalog.Key(claimed.AllocID, claimed.Task), Value: value}, nil)
	must.NoError(t, err)
	claimedIn := checkpointAt(t, incoming, claimed, true, 0)
	cutIn := checkpointAt(t, incoming, &catalog.Record{AllocID: "0000abcd-0000-4000-8000-000000000000", Task: "work"}, false, 0)

	// This node's directories no record names: an old one goes, a recent
	// one stays (its record may not be listed yet).
	oldOrphan := checkpointAt(t, kept, &catalog.Record{AllocID: "0000beef-0000-4000-8000-000000000000", Task: "work"}, true, 2*time.Hour)
	newOrphan := checkpointAt(t, scratch, &catalog.Record{AllocID: "0000cafe-0000-4000-8000-000000000000", Task: "work"}, false, time.Minute)

	// A ready checkpoint the crash left in state_dir moves to data_dir.
	left := w.record(t, reapSelf, catalog.StateReady, time.Hour)
	leftDir := checkpointAt(t, scratch, left, true, time.Hour)
	keptDir, err := checkpoint.Dir(kept, left.AllocID, left.Task)
	must.NoError(t, err)

	// Periodic checkpoints of a task that died with this node: old ones
	// go, recent ones stay, and so do those of a task this node runs.
	periodic := w.env.layout.periodic()
	lostPeriodic := checkpointAt(t, periodic, &catalog.Record{AllocID: "0000dead-0000-4000-8000-000000000000", Task: "work"}, true, 2*time.Hour)
	newPeriodic := checkpointAt(t, periodic, &catalog.Record{AllocID: "0000f00d-0000-4000-8000-000000000000", Task: "work"}, true, time.Minute)
	runningPeriodic := checkpointAt(t, periodic, &catalog.Record{AllocID: "0000abba-0000-4000-8000-000000000000", Task: "work"}, true, 2*time.Hour)
	w.tasks = task.NewStore()
	w.tasks.Set("t1", &task.Handle{State: task.State{ContainerID: containerPrefix("0000abba-0000-4000-8000-000000000000", "work") + "1a2b3c4d"}})

	must.SliceEmpty(t, w.pass(t))
	must.False(t, present(lostPeriodic))
	must.True(t, present(newPeriodic))
	must.True(t, present(runningPeriodic))
	must.True(t, present(liveIn))
	for _, dir := range []string{failedIn, staleIn, claimedIn, cutIn, oldOrphan} {
		must.False(t, present(dir), must.Sprint(dir))
	}
	must.True(t, present(newOrphan))
	must.False(t, present(leftDir))
	must.True(t, present(filepath.Join(keptDir, checkpoint.ManifestName)))
	must.True(t, w.exists(t, left))
}

// TestReapRecordChangedMeanwhile: a record due for reaping that changed
// since it was read (a destination claimed it) is left, with its
// checkpoint.
func TestReapRecordChangedMeanwhile(t *testing.T) {
	w := newReapWorld(t)
	r := w.record(t, reapSelf, catalog.StateReady, 25*time.Hour)
	dir := checkpointAt(t, w.env.checkpoints, r, true, 25*time.Hour)
	recs, err := w.env.catalog.List(w.ctx)
	must.NoError(t, err)
	_, err = w.env.catalog.Transition(w.ctx, r.AllocID, r.Task, []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
		r.State, r.DestNodeID = catalog.StateRestoring, "node-dest"
		return nil
	})
	must.NoError(t, err)

	reaped := (&Driver{tasks: task.NewStore()}).reapPass(w.ctx, w.env, defaultCheckpointReap(), recs, time.Now(), testutil.Logger(t, hclog.Debug))
	must.SliceEmpty(t, reaped)
	must.True(t, w.exists(t, r))
	must.True(t, present(dir))
}

// TestReapByRecordsOwnAges: each record is reaped by the ages its source
// wrote into it (gc.checkpoints when it was made), not by the defaults;
// and the reaper wakes when the first record falls due, not at its next
// blocking wait minutes later.
func TestReapByRecordsOwnAges(t *testing.T) {
	w := newReapWorld(t)
	short := &catalog.ReapPolicy{Stale: 3 * time.Second, Unclaimed: 3 * time.Second, Retention: 3 * time.Second}
	put := func(r *catalog.Record) {
		value, err := json.Marshal(r)
		must.NoError(t, err)
		_, err = w.client.KV().Put(&consul.KVPair{Key: w.env.catalog.Key(r.AllocID, r.Task), Value: value}, nil)
		must.NoError(t, err)
	}
	// A ready record an hour old: kept by the defaults (a day), reaped by
	// its own ages.
	own := w.record(t, reapSelf, catalog.StateReady, time.Hour)
	own.Reap = short
	put(own)
	dflt := w.record(t, reapSelf, catalog.StateReady, time.Hour)
	ownDir := checkpointAt(t, w.env.checkpoints, own, true, time.Hour)
	dfltDir := checkpointAt(t, w.env.checkpoints, dflt, true, time.Hour)
	// A failed record changed just now, due in three seconds.
	fresh := w.record(t, reapSelf, catalog.StateFailed, 0)
	fresh.Reap = short
	put(fresh)
	freshDir := checkpointAt(t, w.env.checkpoints, fresh, true, 0)

	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	go (&Driver{tasks: task.NewStore()}).reap(ctx, w.env, defaultCheckpointReap(), testutil.Logger(t, hclog.Debug))

	deadline := time.Now().Add(20 * time.Second)
	for (w.exists(t, own) || w.exists(t, fresh)) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	must.False(t, w.exists(t, own), must.Sprint("reaped by its own ages"))
	must.False(t, present(ownDir))
	must.False(t, w.exists(t, fresh), must.Sprint("reaped once due, without waiting for a change"))
	must.False(t, present(freshDir))
	must.True(t, w.exists(t, dflt), must.Sprint("kept by the default ages"))
	must.True(t, present(dfltDir))
}
