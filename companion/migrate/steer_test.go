package migrate

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate/nomadtest"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/testutil"
	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// killed is what a test hook panics with to stop a mover on the spot, as
// if its process had died: nothing of the move runs after it.
type killed struct{ step string }

// steerWorld is a real Nomad dev agent (one node, steered as both the
// source and the target of a move) and a real Consul keeping the records.
type steerWorld struct {
	nomad   *nomadtest.Agent
	records *Records
	consul  *consul.Client
	ctx     context.Context
}

func newSteerWorld(t *testing.T) *steerWorld {
	t.Helper()
	records, client, _ := newRecords(t)
	agent := nomadtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return &steerWorld{nomad: agent, records: records, consul: client, ctx: ctx}
}

func (w *steerWorld) mover(t *testing.T, hook func(step string)) *Mover {
	return &Mover{Nomad: w.nomad.Client, Records: w.records, Logger: testutil.Logger(t, hclog.Debug), afterChange: hook}
}

// move is the record of a move of an allocation off the agent's node onto
// itself: steering marks and makes ineligible the same node.
func (w *steerWorld) move(t *testing.T, id string) *Record {
	t.Helper()
	rec := &Record{
		ID: id, AllocID: "alloc-" + id, Result: ResultInProgress,
		SourceNode: "source", SourceNodeID: w.nomad.NodeID,
		TargetNode: "target", TargetNodeID: w.nomad.NodeID,
		StartedAt: time.Now(), Deadline: time.Now().Add(time.Minute),
	}
	must.NoError(t, w.records.Put(w.ctx, rec, nil))
	return rec
}

func (w *steerWorld) node(t *testing.T) *nomad.Node {
	t.Helper()
	n, _, err := w.nomad.Client.Nodes().Info(w.nomad.NodeID, (&nomad.QueryOptions{}).WithContext(w.ctx))
	must.NoError(t, err)
	return n
}

// steerUntilKilled runs steer and reports the step at which its hook
// killed it ("" when it was not killed) and the error it returned.
func steerUntilKilled(ctx context.Context, m *Mover, rec *Record, fence *Fence) (step string, err error) {
	defer func() {
		if v := recover(); v != nil {
			k, ok := v.(killed)
			if !ok {
				panic(v)
			}
			step = k.step
		}
	}()
	return "", m.steer(ctx, rec, fence)
}

// TestSteerRecordsEachChangeFirst kills the mover right after each change
// it makes to Nomad: at that moment the record in Consul already names the
// change, and the planner's Abandon, from that record alone, undoes it.
func TestSteerRecordsEachChangeFirst(t *testing.T) {
	w := newSteerWorld(t)
	for _, killAt := range []string{stepTargetMarked, stepSourceIneligible} {
		t.Run(killAt, func(t *testing.T) {
			rec := w.move(t, "m-"+killAt)
			var seen []string
			m := w.mover(t, func(step string) {
				seen = append(seen, step)
				// What Nomad shows now is already recorded.
				got, err := w.records.Get(w.ctx, rec.ID)
				must.NoError(t, err)
				n := w.node(t)
				switch step {
				case stepTargetMarked:
					must.Eq(t, "true", n.Meta[sdk.MetaMigrateTarget])
					must.True(t, got.TargetMarked, must.Sprint("target marked in Nomad before the record says so"))
				case stepSourceIneligible:
					must.Eq(t, nomad.NodeSchedulingIneligible, n.SchedulingEligibility)
					must.True(t, got.SourceMadeIneligible, must.Sprint("source ineligible in Nomad before the record says so"))
				}
				must.Eq(t, ResultInProgress, got.Result)
				if step == killAt {
					panic(killed{step})
				}
			})
			step, err := steerUntilKilled(w.ctx, m, rec, nil)
			must.NoError(t, err)
			must.Eq(t, killAt, step)
			must.Eq(t, killAt, seen[len(seen)-1])

			// The planner finds the record past its deadline and undoes
			// what it names; nothing of the dead mover is left to help.
			left, err := w.records.Get(w.ctx, rec.ID)
			must.NoError(t, err)
			must.True(t, Abandoned(left, left.Deadline.Add(2*abandonGrace)))
			w.mover(t, nil).Abandon(w.ctx, left)

			n := w.node(t)
			must.Eq(t, nomad.NodeSchedulingEligible, n.SchedulingEligibility)
			_, marked := n.Meta[sdk.MetaMigrateTarget]
			must.False(t, marked)
			closed, err := w.records.Get(w.ctx, rec.ID)
			must.NoError(t, err)
			must.Eq(t, ResultAbandoned, closed.Result)
			must.False(t, closed.TargetMarked)
			must.False(t, closed.SourceMadeIneligible)
			must.StrContains(t, closed.Reason, "before stopping the allocation")
		})
	}
}

// TestSteerUndoesIntentNeverMade: a record naming changes its mover died
// before making (the node was never touched) is abandoned harmlessly.
func TestSteerUndoesIntentNeverMade(t *testing.T) {
	w := newSteerWorld(t)
	rec := w.move(t, "m-intent")
	rec.TargetMarked, rec.SourceMadeIneligible = true, true
	must.NoError(t, w.records.Put(w.ctx, rec, nil))

	w.mover(t, nil).Abandon(w.ctx, rec)
	n := w.node(t)
	must.Eq(t, nomad.NodeSchedulingEligible, n.SchedulingEligibility)
	_, marked := n.Meta[sdk.MetaMigrateTarget]
	must.False(t, marked)
	closed, err := w.records.Get(w.ctx, rec.ID)
	must.NoError(t, err)
	must.Eq(t, ResultAbandoned, closed.Result)
}

// TestSteerFenced: when the intent cannot be recorded under the planner's
// fence, the change is not made and steer fails with ErrFenced; what was
// made before is undone as a failed move undoes it.
func TestSteerFenced(t *testing.T) {
	w := newSteerWorld(t)
	session, _, err := w.consul.Session().Create(&consul.SessionEntry{TTL: "30s", Behavior: consul.SessionBehaviorRelease}, nil)
	must.NoError(t, err)
	t.Cleanup(func() { _, _ = w.consul.Session().Destroy(session, nil) })
	fence := &Fence{Key: "ferry/leader", Session: session}

	// The lock is not held: nothing is touched.
	rec := w.move(t, "m-fenced")
	_, err = steerUntilKilled(w.ctx, w.mover(t, nil), rec, fence)
	must.ErrorIs(t, err, ErrFenced)
	must.False(t, rec.TargetMarked)
	n := w.node(t)
	must.Eq(t, nomad.NodeSchedulingEligible, n.SchedulingEligibility)
	_, marked := n.Meta[sdk.MetaMigrateTarget]
	must.False(t, marked)

	// The lock is lost after the target was marked: the source is left
	// alone, and the mark is undone.
	ok, _, err := w.consul.KV().Acquire(&consul.KVPair{Key: fence.Key, Session: session}, nil)
	must.NoError(t, err)
	must.True(t, ok)
	rec = w.move(t, "m-lost")
	m := w.mover(t, func(step string) {
		if step == stepTargetMarked {
			_, _, err := w.consul.KV().Release(&consul.KVPair{Key: fence.Key, Session: session}, nil)
			must.NoError(t, err)
		}
	})
	_, err = steerUntilKilled(w.ctx, m, rec, fence)
	must.ErrorIs(t, err, ErrFenced)
	must.True(t, rec.TargetMarked)
	must.False(t, rec.SourceMadeIneligible)
	must.Eq(t, nomad.NodeSchedulingEligible, w.node(t).SchedulingEligibility)
	m.unsteer(rec)
	_, marked = w.node(t).Meta[sdk.MetaMigrateTarget]
	must.False(t, marked)
	must.False(t, rec.TargetMarked)
}
