package rebalance

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

func consulClient(t *testing.T) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: catalogtest.StartConsul(t)})
	must.NoError(t, err)
	return c
}

// term is one leadership term as the test sees it.
type term struct {
	name  string
	fence *migrate.Fence
	ended chan struct{}
}

// campaign runs a Leader named name; every term it wins is sent on terms.
func campaign(t *testing.T, ctx context.Context, c *api.Client, name string, terms chan<- term) {
	l := &Leader{Consul: c, Key: "ferry/leader", Holder: Holder{NodeID: name, NodeName: name}, LockDelay: time.Millisecond,
		Logger: testutil.Logger(t, hclog.Off)}
	go func() {
		_ = l.Run(ctx, func(lctx context.Context, f *migrate.Fence) {
			tm := term{name: name, fence: f, ended: make(chan struct{})}
			terms <- tm
			<-lctx.Done()
			close(tm.ended)
		})
	}()
}

func nextTerm(t *testing.T, terms <-chan term) term {
	t.Helper()
	select {
	case tm := <-terms:
		return tm
	case <-time.After(30 * time.Second):
		t.Fatal("nobody became leader")
	}
	return term{}
}

// TestLeaderHandover: one of two agents leads; when it stops, the other
// takes over, and the first one's fence no longer lets it write.
func TestLeaderHandover(t *testing.T) {
	c := consulClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	terms := make(chan term, 4)
	ctxA, stopA := context.WithCancel(ctx)
	campaign(t, ctxA, c, "a", terms)
	first := nextTerm(t, terms)
	must.Eq(t, "a", first.name)
	campaign(t, ctx, c, "b", terms)

	holder, err := ReadHolder(ctx, c, "ferry/leader")
	must.NoError(t, err)
	must.Eq(t, "a", holder.NodeName)
	policy := planner.DefaultConfig()
	must.NoError(t, SaveState(ctx, c, "ferry/planner/state", Saved{State: planner.State{HotStreak: map[string]int{"n1": 2}}, Policy: &policy, By: "a"}, first.fence))

	select {
	case tm := <-terms:
		t.Fatalf("%s leads while a does", tm.name)
	case <-time.After(2 * time.Second):
	}
	stopA()
	<-first.ended
	second := nextTerm(t, terms)
	must.Eq(t, "b", second.name)
	holder, err = ReadHolder(ctx, c, "ferry/leader")
	must.NoError(t, err)
	must.Eq(t, "b", holder.NodeName)

	// The old leader is fenced off; the new one carries the state on.
	err = SaveState(ctx, c, "ferry/planner/state", Saved{}, first.fence)
	must.True(t, errors.Is(err, migrate.ErrFenced), must.Sprintf("old leader's write: %v", err))
	st, err := LoadState(ctx, c, "ferry/planner/state")
	must.NoError(t, err)
	must.Eq(t, 2, st.State.HotStreak["n1"])
	must.Eq(t, &policy, st.Policy)
	must.Eq(t, "a", st.By)
	must.NoError(t, SaveState(ctx, c, "ferry/planner/state", st, second.fence))
}

// TestLeaderLosesSession: when the leader's session is invalidated behind
// its back, its term ends, its fence fails, and it campaigns again.
func TestLeaderLosesSession(t *testing.T) {
	c := consulClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	terms := make(chan term, 4)
	campaign(t, ctx, c, "a", terms)
	first := nextTerm(t, terms)

	_, err := c.Session().Destroy(first.fence.Session, nil)
	must.NoError(t, err)
	select {
	case <-first.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the term did not end when the session was destroyed")
	}
	err = SaveState(ctx, c, "ferry/planner/state", Saved{}, first.fence)
	must.True(t, errors.Is(err, migrate.ErrFenced), must.Sprintf("write after losing the lock: %v", err))

	again := nextTerm(t, terms)
	must.Eq(t, "a", again.name)
	must.NotEq(t, first.fence.Session, again.fence.Session)
}
