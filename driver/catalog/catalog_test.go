package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// newCatalog starts a Consul dev agent and returns a catalogue on it under
// the default prefix, and the agent's client.
func newCatalog(t *testing.T) (*catalog.Catalog, *api.Client) {
	t.Helper()
	addr := catalogtest.StartConsul(t)
	client, err := api.NewClient(&api.Config{Address: addr})
	must.NoError(t, err)
	return catalog.New(client, "", testutil.Logger(t, hclog.Off)), client
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func sampleRecord(alloc, task string, state catalog.State) *catalog.Record {
	return &catalog.Record{
		AllocID:        alloc,
		Task:           task,
		JobID:          "web",
		Namespace:      "default",
		SourceNodeID:   "node-1-id",
		SourceNodeName: "node-1",
		State:          state,
		ImageRef:       "registry.local/app:1",
		ImageDigest:    "sha256:" + strings.Repeat("ab", 32),
		Platform:       "linux/amd64",
		Bytes:          5 << 20,
		Files:          12,
		ManifestSHA256: strings.Repeat("cd", 32),
		DumpDuration:   1500 * time.Millisecond,
		Push:           &catalog.Grant{NodeID: "node-2-id", SHA256: strings.Repeat("01", 32), Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)},
		Network: catalog.Network{
			Mode:      "group",
			NetNSPath: "/var/run/netns/" + alloc,
			Addresses: []string{"172.26.64.5/20"},
			MAC:       "02:42:ac:1a:40:05",
			Gateway:   "172.26.64.1",
			Routes:    []string{"0.0.0.0/0 via 172.26.64.1"},
			Ports:     []catalog.Port{{Label: "http", Value: 25123, To: 8080, HostIP: "10.97.0.11"}},
			Hostname:  "web-1",
			DNS:       &catalog.DNS{Servers: []string{"10.97.0.1"}, Searches: []string{"service.consul"}, Options: []string{"ndots:2"}},
		},
	}
}

func TestPutGet(t *testing.T) {
	cat, client := newCatalog(t)
	ctx := testContext(t)

	_, err := cat.Get(ctx, "alloc-1", "app")
	must.ErrorIs(t, err, catalog.ErrNotFound)

	r := sampleRecord("alloc-1", "app", catalog.StateCheckpointing)
	must.NoError(t, cat.Put(ctx, r))
	must.NotEq(t, 0, r.ModifyIndex)
	must.False(t, r.CreatedAt.IsZero())
	must.Eq(t, r.CreatedAt, r.UpdatedAt)

	got, err := cat.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, r.ModifyIndex, got.ModifyIndex)
	must.True(t, r.CreatedAt.Equal(got.CreatedAt))
	// Times round-trip through JSON; compare the rest field by field.
	got.CreatedAt, got.UpdatedAt = r.CreatedAt, r.UpdatedAt
	must.Eq(t, r, got)

	// The record is JSON at <prefix><alloc>/<task>.
	pair, _, err := client.KV().Get("ferry/checkpoints/alloc-1/app", nil)
	must.NoError(t, err)
	must.NotNil(t, pair)
	must.StrContains(t, string(pair.Value), `"state":"checkpointing"`)
	must.StrContains(t, string(pair.Value), `"addresses":["172.26.64.5/20"]`)
	must.Eq(t, pair.ModifyIndex, r.ModifyIndex)

	// Overwriting keeps CreatedAt and moves UpdatedAt and the index.
	created, firstIndex := r.CreatedAt, r.ModifyIndex
	time.Sleep(5 * time.Millisecond)
	r.State = catalog.StateReady
	must.NoError(t, cat.Put(ctx, r))
	must.Eq(t, created, r.CreatedAt)
	must.True(t, r.UpdatedAt.After(created))
	must.Greater(t, firstIndex, r.ModifyIndex)
	got, err = cat.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, catalog.StateReady, got.State)

	// Another task of the same allocation is another record.
	_, err = cat.Get(ctx, "alloc-1", "sidecar")
	must.ErrorIs(t, err, catalog.ErrNotFound)
}

func TestPutRejectsInvalidRecords(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)

	for name, r := range map[string]*catalog.Record{
		"empty alloc":   {Task: "app", State: catalog.StateReady},
		"empty task":    {AllocID: "a", State: catalog.StateReady},
		"slash in task": {AllocID: "a", Task: "x/y", State: catalog.StateReady},
		"dot-dot alloc": {AllocID: "..", Task: "app", State: catalog.StateReady},
		"no state":      {AllocID: "a", Task: "app"},
		"bad state":     {AllocID: "a", Task: "app", State: "paused"},
	} {
		t.Run(name, func(t *testing.T) {
			must.Error(t, cat.Put(ctx, r))
		})
	}
	must.Error(t, cat.Put(ctx, nil))
	_, err := cat.Get(ctx, "a", "../../x")
	must.ErrorContains(t, err, "invalid task name")
}

func TestTransition(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)

	_, err := cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateReady}, func(r *catalog.Record) error { return nil })
	must.ErrorIs(t, err, catalog.ErrNotFound)

	r := sampleRecord("alloc-1", "app", catalog.StateCheckpointing)
	must.NoError(t, cat.Put(ctx, r))

	ready, err := cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State = catalog.StateReady
		r.Bytes = 42
		return nil
	})
	must.NoError(t, err)
	must.Eq(t, catalog.StateReady, ready.State)
	must.Eq(t, 42, ready.Bytes)
	must.Greater(t, r.ModifyIndex, ready.ModifyIndex)
	must.True(t, ready.CreatedAt.Equal(r.CreatedAt))
	got, err := cat.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, ready.ModifyIndex, got.ModifyIndex)
	must.Eq(t, int64(42), got.Bytes)

	// Not from a state outside from: the error tells the current state.
	_, err = cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		t.Error("mutate called for a record in the wrong state")
		return nil
	})
	must.ErrorIs(t, err, catalog.ErrConflict)
	var se *catalog.StateError
	must.True(t, errors.As(err, &se))
	must.Eq(t, catalog.StateReady, se.Current.State)
	must.ErrorContains(t, err, "state is ready")

	// An error from mutate aborts the transition and comes back wrapped.
	boom := errors.New("boom")
	_, err = cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
		r.State = catalog.StateRestoring
		return boom
	})
	must.ErrorIs(t, err, boom)
	got, err = cat.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, catalog.StateReady, got.State)

	// mutate may not rename the record nor set an unknown state.
	_, err = cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
		r.Task = "other"
		return nil
	})
	must.ErrorContains(t, err, "renamed")
	_, err = cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
		r.State = "paused"
		return nil
	})
	must.ErrorContains(t, err, "invalid state")
}

// claim moves the record from ready to restoring for dest.
func claim(ctx context.Context, cat *catalog.Catalog, dest string, before func()) (*catalog.Record, error) {
	return cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateReady}, func(r *catalog.Record) error {
		if before != nil {
			before()
		}
		r.State = catalog.StateRestoring
		r.DestAllocID = dest
		r.DestNodeName = "node-" + dest
		return nil
	})
}

func TestTransitionConcurrentClaimsOneWins(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateReady)))

	// Both claims read the record at the same index before either writes
	// (each one's first mutate waits for the other's), so both attempt
	// the check-and-set and one must lose it.
	var arrived sync.WaitGroup
	arrived.Add(2)
	both := make(chan struct{})
	go func() { arrived.Wait(); close(both) }()
	var calls atomic.Int32

	type result struct {
		dest string
		rec  *catalog.Record
		err  error
	}
	results := make(chan result, 2)
	for _, dest := range []string{"dest-a", "dest-b"} {
		go func() {
			first := true
			rec, err := claim(ctx, cat, dest, func() {
				calls.Add(1)
				if first {
					first = false
					arrived.Done()
					select {
					case <-both:
					case <-time.After(10 * time.Second):
					}
				}
			})
			results <- result{dest, rec, err}
		}()
	}
	var winners, losers []result
	for range 2 {
		res := <-results
		if res.err == nil {
			winners = append(winners, res)
		} else {
			losers = append(losers, res)
		}
	}
	must.SliceLen(t, 1, winners)
	must.SliceLen(t, 1, losers)
	// The loser retried after losing the check-and-set and then found the
	// record claimed; mutate ran only on the two first reads.
	must.Eq(t, int32(2), calls.Load())
	must.ErrorIs(t, losers[0].err, catalog.ErrConflict)
	var se *catalog.StateError
	must.True(t, errors.As(losers[0].err, &se))
	must.Eq(t, catalog.StateRestoring, se.Current.State)
	must.Eq(t, winners[0].dest, se.Current.DestAllocID)

	got, err := cat.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, catalog.StateRestoring, got.State)
	must.Eq(t, winners[0].dest, got.DestAllocID)
	must.Eq(t, winners[0].rec.ModifyIndex, got.ModifyIndex)
}

func TestTransitionManyClaimersOneWins(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)

	for round := range 5 {
		must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateReady)))
		const n = 8
		start := make(chan struct{})
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				_, errs[i] = claim(ctx, cat, fmt.Sprintf("dest-%d", i), nil)
			})
		}
		close(start)
		wg.Wait()
		won := -1
		for i, err := range errs {
			if err == nil {
				must.Eq(t, -1, won, must.Sprintf("round %d: dest-%d and dest-%d both won", round, won, i))
				won = i
				continue
			}
			must.ErrorIs(t, err, catalog.ErrConflict, must.Sprintf("round %d", round))
		}
		must.NotEq(t, -1, won, must.Sprintf("round %d: nobody won", round))
		got, err := cat.Get(ctx, "alloc-1", "app")
		must.NoError(t, err)
		must.Eq(t, fmt.Sprintf("dest-%d", won), got.DestAllocID)
	}
}

func TestWaitStateWakesOnChange(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateCheckpointing)))

	type result struct {
		rec *catalog.Record
		err error
	}
	done := make(chan result, 1)
	go func() {
		rec, err := cat.WaitState(ctx, "alloc-1", "app", catalog.StateReady, catalog.StateFailed, catalog.StateColdStart)
		done <- result{rec, err}
	}()

	// Unrelated writes (another task, the same state again) do not end
	// the wait.
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "other", catalog.StateReady)))
	_, err := cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.Files = 3
		return nil
	})
	must.NoError(t, err)
	select {
	case res := <-done:
		t.Fatalf("WaitState returned before the record was ready: %+v, %v", res.rec, res.err)
	case <-time.After(300 * time.Millisecond):
	}

	changed := time.Now()
	var writer sync.WaitGroup
	defer writer.Wait()
	writer.Go(func() {
		_, err := cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
			r.State = catalog.StateReady
			return nil
		})
		if err != nil {
			t.Errorf("transition: %v", err)
		}
	})
	select {
	case res := <-done:
		must.NoError(t, res.err)
		must.Eq(t, catalog.StateReady, res.rec.State)
		must.Eq(t, 3, res.rec.Files)
		// Woken by the blocking query, not by polling.
		must.Less(t, 2*time.Second, time.Since(changed))
	case <-time.After(10 * time.Second):
		t.Fatal("WaitState did not wake on the change")
	}
}

func TestWaitStateMissingThenAppears(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)

	done := make(chan *catalog.Record, 1)
	go func() {
		rec, err := cat.WaitState(ctx, "alloc-1", "app", catalog.StateReady)
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		done <- rec
	}()
	time.Sleep(200 * time.Millisecond)
	// Written first in a state not waited for, then ready.
	r := sampleRecord("alloc-1", "app", catalog.StateCheckpointing)
	must.NoError(t, cat.Put(ctx, r))
	select {
	case rec := <-done:
		t.Fatalf("WaitState returned a record in state %s", rec.State)
	case <-time.After(200 * time.Millisecond):
	}
	r.State = catalog.StateReady
	must.NoError(t, cat.Put(ctx, r))
	select {
	case rec := <-done:
		must.NotNil(t, rec)
		must.Eq(t, catalog.StateReady, rec.State)
		must.Eq(t, r.ModifyIndex, rec.ModifyIndex)
	case <-time.After(10 * time.Second):
		t.Fatal("WaitState did not see the record appear")
	}
}

func TestWaitStateAlreadyThere(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateColdStart)))
	start := time.Now()
	rec, err := cat.WaitState(ctx, "alloc-1", "app", catalog.StateReady, catalog.StateColdStart)
	must.NoError(t, err)
	must.Eq(t, catalog.StateColdStart, rec.State)
	must.Less(t, time.Second, time.Since(start))

	_, err = cat.WaitState(ctx, "alloc-1", "app")
	must.ErrorContains(t, err, "no state to wait for")
}

func TestWaitStateContextEnds(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)

	// Missing record: nothing seen.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	rec, err := cat.WaitState(short, "alloc-1", "app", catalog.StateReady)
	must.Nil(t, rec)
	must.ErrorIs(t, err, context.DeadlineExceeded)
	must.ErrorContains(t, err, "no record yet")

	// A record that stays in another state: the last one seen comes back.
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateCheckpointing)))
	short, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	rec, err = cat.WaitState(short, "alloc-1", "app", catalog.StateReady)
	must.ErrorIs(t, err, context.DeadlineExceeded)
	must.ErrorContains(t, err, "last state checkpointing")
	must.NotNil(t, rec)
	must.Eq(t, catalog.StateCheckpointing, rec.State)
	must.Less(t, 5*time.Second, time.Since(start))
}

func TestWaitStateRetriesWhileConsulIsDown(t *testing.T) {
	agent := catalogtest.RunConsul(t)
	client, err := api.NewClient(&api.Config{Address: agent.Addr})
	must.NoError(t, err)
	cat := catalog.New(client, "", testutil.Logger(t, hclog.Off))
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateCheckpointing)))

	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	var rec *catalog.Record
	go func() {
		var err error
		rec, err = cat.WaitState(short, "alloc-1", "app", catalog.StateReady)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	agent.Stop()
	select {
	case err := <-done:
		// Connection errors are retried until the context ends.
		must.ErrorIs(t, err, context.DeadlineExceeded)
		must.NotNil(t, rec)
		must.Eq(t, catalog.StateCheckpointing, rec.State)
	case <-time.After(10 * time.Second):
		t.Fatal("WaitState did not return when its context ended")
	}
}

func TestDeniedToken(t *testing.T) {
	const management = "8c3c2b1e-5a55-4f0e-9d7e-3f1f2c7a9b10"
	agent := catalogtest.RunConsulWith(t, catalogtest.ConsulOptions{ACLManagementToken: management})
	ctx := testContext(t)

	denied, err := catalog.NewFromConfig(agent.Addr, "", testutil.Logger(t, hclog.Off))
	must.NoError(t, err)
	err = denied.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateReady))
	must.ErrorContains(t, err, "ermission denied")
	// A refused blocking query is not retried until the context ends.
	start := time.Now()
	_, err = denied.WaitState(ctx, "alloc-1", "app", catalog.StateReady)
	must.ErrorContains(t, err, "403")
	must.False(t, errors.Is(err, context.DeadlineExceeded))
	must.Less(t, 5*time.Second, time.Since(start))

	// The token given to NewFromConfig is used.
	allowed, err := catalog.NewFromConfig(agent.Addr, management, testutil.Logger(t, hclog.Off))
	must.NoError(t, err)
	must.NoError(t, allowed.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateReady)))
	rec, err := allowed.WaitState(ctx, "alloc-1", "app", catalog.StateReady)
	must.NoError(t, err)
	must.Eq(t, catalog.StateReady, rec.State)
}

func TestDelete(t *testing.T) {
	cat, _ := newCatalog(t)
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateRestored)))
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "sidecar", catalog.StateRestored)))

	must.NoError(t, cat.Delete(ctx, "alloc-1", "app"))
	_, err := cat.Get(ctx, "alloc-1", "app")
	must.ErrorIs(t, err, catalog.ErrNotFound)
	// The other task's record stays.
	_, err = cat.Get(ctx, "alloc-1", "sidecar")
	must.NoError(t, err)
	// Deleting again is fine.
	must.NoError(t, cat.Delete(ctx, "alloc-1", "app"))
}

func TestList(t *testing.T) {
	cat, client := newCatalog(t)
	ctx := testContext(t)

	records, err := cat.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, records)

	for _, k := range [][2]string{{"alloc-b", "app"}, {"alloc-a", "web"}, {"alloc-a", "app"}} {
		must.NoError(t, cat.Put(ctx, sampleRecord(k[0], k[1], catalog.StateReady)))
	}
	// Entries that are not records are skipped.
	_, err = client.KV().Put(&api.KVPair{Key: "ferry/checkpoints/alloc-c/app", Value: []byte("{not json")}, nil)
	must.NoError(t, err)
	_, err = client.KV().Put(&api.KVPair{Key: "ferry/checkpoints/stray", Value: []byte("{}")}, nil)
	must.NoError(t, err)
	_, err = client.KV().Put(&api.KVPair{Key: "ferry/checkpoints/alloc-d/app/extra", Value: []byte("{}")}, nil)
	must.NoError(t, err)
	// A record stored under another allocation's key is refused.
	_, err = client.KV().Put(&api.KVPair{Key: "ferry/checkpoints/alloc-e/app", Value: []byte(`{"alloc_id":"alloc-a","task":"app","state":"ready"}`)}, nil)
	must.NoError(t, err)
	// Records of another catalogue prefix are not listed.
	other := catalog.New(client, "/ferry/other-checkpoints", testutil.Logger(t, hclog.Off))
	must.Eq(t, "ferry/other-checkpoints/", other.Prefix())
	must.NoError(t, other.Put(ctx, sampleRecord("alloc-z", "app", catalog.StateReady)))

	records, err = cat.List(ctx)
	must.NoError(t, err)
	var keys []string
	for _, r := range records {
		keys = append(keys, r.AllocID+"/"+r.Task)
		must.NotEq(t, 0, r.ModifyIndex)
	}
	must.Eq(t, []string{"alloc-a/app", "alloc-a/web", "alloc-b/app"}, keys)

	otherRecords, err := other.List(ctx)
	must.NoError(t, err)
	must.SliceLen(t, 1, otherRecords)
}

func TestNewFromConfig(t *testing.T) {
	addr := catalogtest.StartConsul(t)
	ctx := testContext(t)

	cat, err := catalog.NewFromConfig(addr, "", testutil.Logger(t, hclog.Off))
	must.NoError(t, err)
	must.Eq(t, sdk.PrefixCheckpoints, cat.Prefix())
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateReady)))

	// An empty address falls back to CONSUL_HTTP_ADDR.
	t.Setenv("CONSUL_HTTP_ADDR", "http://"+addr)
	fromEnv, err := catalog.NewFromConfig("", "", testutil.Logger(t, hclog.Off))
	must.NoError(t, err)
	got, err := fromEnv.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, catalog.StateReady, got.State)
}
