package load

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

func TestPolicy_Validate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		policy   Policy
		interval time.Duration
		want     []string
	}{
		{name: "defaults", policy: DefaultPolicy(), interval: 5 * time.Second},
		{name: "zero is the default", policy: Policy{}, interval: 5 * time.Second},
		{name: "every sample", policy: Policy{Heartbeat: 5 * time.Second}, interval: 5 * time.Second},
		{name: "heartbeat below the interval", policy: Policy{Heartbeat: 10 * time.Second}, interval: 30 * time.Second,
			want: []string{"heartbeat: 10s must be at least the sample interval 30s"}},
		{name: "heartbeat too short", policy: Policy{Heartbeat: time.Second},
			want: []string{"heartbeat: 1s must be between 5s and 12h0m0s"}},
		{name: "heartbeat too long", policy: Policy{Heartbeat: 13 * time.Hour},
			want: []string{"heartbeat: 13h0m0s must be between 5s and 12h0m0s"}},
		{name: "dead band negative", policy: Policy{DeadBand: -0.1},
			want: []string{"dead_band: -0.1 must be a fraction of the node's capacity"}},
		{name: "dead band whole", policy: Policy{Heartbeat: time.Second, DeadBand: 1},
			want: []string{"heartbeat: 1s", "dead_band: 1 must be"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.Validate(tc.interval)
			if len(tc.want) == 0 {
				must.NoError(t, err)
				return
			}
			for _, w := range tc.want {
				must.ErrorContains(t, err, w)
			}
		})
	}
}

func TestPolicy_SessionTTL(t *testing.T) {
	must.Eq(t, 2*time.Minute, DefaultPolicy().SessionTTL())
	must.Eq(t, 2*time.Minute, Policy{}.SessionTTL())
	must.Eq(t, 10*time.Second, Policy{Heartbeat: 5 * time.Second}.SessionTTL())
	must.Eq(t, 24*time.Hour, Policy{Heartbeat: 12 * time.Hour}.SessionTTL())
	// The default policy, whatever the interval up to a minute.
	must.Eq(t, 2*time.Minute, SessionTTL(5*time.Second))
	must.Eq(t, 4*time.Minute, SessionTTL(2*time.Minute))
}

func TestPolicy_Moved(t *testing.T) {
	p := DefaultPolicy() // 5% of 4000 MHz is 200 MHz, of 8192 MiB 409.6 MiB
	w := testRecord("node-1-id", "node-1", 1000)
	for _, tc := range []struct {
		name   string
		change func(r *Record)
		moved  bool
	}{
		{name: "same", change: func(*Record) {}},
		{name: "newer sample, same load", change: func(r *Record) {
			r.SampledAt = r.SampledAt.Add(time.Minute)
			r.Samples++
		}},
		{name: "online CPU within the band", change: func(r *Record) { r.Online.CPU += 199; r.Allocs[0].Usage.CPU += 199 }},
		{name: "online CPU down by the band", change: func(r *Record) { r.Online.CPU -= 200 }, moved: true},
		{name: "offline memory within the band", change: func(r *Record) { r.Offline.MemoryMB += 400 }},
		{name: "offline memory beyond the band", change: func(r *Record) { r.Offline.MemoryMB += 410 }, moved: true},
		{name: "one allocation's usage beyond the band", change: func(r *Record) { r.Allocs[0].Usage.MemoryMB -= 500 }, moved: true},
		{name: "capacity", change: func(r *Record) { r.Capacity.CPU = 3900 }, moved: true},
		{name: "an allocation more", change: func(r *Record) {
			r.Allocs = append(r.Allocs, Alloc{ID: "a2", Name: "batch.g[0]", JobID: "batch", Group: "g", JobType: "batch"})
		}, moved: true},
		{name: "no allocation", change: func(r *Record) { r.Allocs = nil }, moved: true},
		{name: "an allocation turns offline", change: func(r *Record) { r.Allocs[0].Online = false }, moved: true},
		{name: "another allocation in its place", change: func(r *Record) { r.Allocs[0].ID = "a9" }, moved: true},
		{name: "healthy minimum", change: func(r *Record) { r.Allocs[0].MinHealthy = 1 }, moved: true},
		{name: "node name", change: func(r *Record) { r.NodeName = "node-one" }, moved: true},
		{name: "source", change: func(r *Record) { r.Source = SourceHost }, moved: true},
		{name: "window", change: func(r *Record) { r.Window = "1m0s" }, moved: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRecord("node-1-id", "node-1", 1000)
			tc.change(&r)
			must.Eq(t, tc.moved, p.moved(&w, &r))
		})
	}

	// Without a dead band, every change is written; without a capacity,
	// every change of usage.
	r := testRecord("node-1-id", "node-1", 1000.5)
	must.True(t, Policy{}.moved(&w, &r))
	must.False(t, Policy{}.moved(&w, &w))
	noCap := w
	noCap.Capacity = Resources{}
	r.Capacity = Resources{}
	must.True(t, p.moved(&noCap, &r))
}

func TestRecord_Stale(t *testing.T) {
	r := testRecord("node-1-id", "node-1", 100)
	must.False(t, r.Stale(r.SampledAt.Add(time.Hour))) // no heartbeat: never
	r.Heartbeat = "1m0s"
	must.False(t, r.Stale(r.SampledAt.Add(-time.Minute))) // a clock behind
	must.False(t, r.Stale(r.SampledAt.Add(2*time.Minute)))
	must.True(t, r.Stale(r.SampledAt.Add(2*time.Minute+time.Second)))
	r.Heartbeat = "bad"
	must.False(t, r.Stale(r.SampledAt.Add(time.Hour)))
}

// countedConsul starts a Consul agent and returns a client of it whose
// writes are counted.
func countedConsul(t *testing.T) (*consulapi.Client, *WriteCounter) {
	t.Helper()
	addr := catalogtest.StartConsul(t)
	wc := NewWriteCounter(http.DefaultTransport)
	client, err := consulapi.NewClient(&consulapi.Config{Address: addr, HttpClient: &http.Client{Transport: wc}})
	must.NoError(t, err)
	return client, wc
}

// fakeClock is a publisher's clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// modifyIndex is the ModifyIndex of key's pair, 0 if there is none.
func modifyIndex(t *testing.T, consul *consulapi.Client, key string) uint64 {
	t.Helper()
	pair, _, err := consul.KV().Get(key, nil)
	must.NoError(t, err)
	if pair == nil {
		return 0
	}
	return pair.ModifyIndex
}

// offerSteady offers a record of cpu MHz (of 4000), with noise within a
// quarter of the dead band, every 5s of the clock for d, and returns why
// each was written, leaving out WroteNothing.
func offerSteady(ctx context.Context, t *testing.T, p *Publisher, clock *fakeClock, cpu float64, d time.Duration) []string {
	t.Helper()
	var wrote []string
	for i := 0; d > 0; i, d = i+1, d-5*time.Second {
		clock.advance(5 * time.Second)
		noise := float64(i%5-2) * 20 // -40 to +40 MHz: 1% of capacity
		r := testRecord("node-1-id", "node-1", cpu+noise)
		r.SampledAt = clock.Now()
		r.Samples = min(i+1, 6)
		why, err := p.Offer(ctx, r)
		must.NoError(t, err)
		if why != WroteNothing {
			wrote = append(wrote, why)
		}
	}
	return wrote
}

// TestOffer_SteadyLoad: a load that holds within the dead band is written
// once, then only at heartbeats, each a record write and a renewal.
func TestOffer_SteadyLoad(t *testing.T) {
	ctx := testContext(t)
	consul, writes := countedConsul(t)
	clock := &fakeClock{now: time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)}
	p := NewPublisher(consul, "", DefaultPolicy().SessionTTL(), testutil.Logger(t, hclog.Debug))
	p.now = clock.Now
	must.NoError(t, p.SetPolicy(DefaultPolicy()))
	key := p.Key("node-1-id")

	// The first record creates the session and is written.
	must.Eq(t, []string{WroteFirst}, offerSteady(ctx, t, p, clock, 1000, 5*time.Second))
	must.Eq(t, map[string]int{"session/create": 1, "kv": 1}, writes.Take())
	first := modifyIndex(t, consul, key)
	must.Positive(t, first)

	// The first heartbeat comes in the second half of the first minute:
	// nothing is written before.
	must.SliceEmpty(t, offerSteady(ctx, t, p, clock, 1000, 25*time.Second))
	must.MapEmpty(t, writes.Take())
	must.Eq(t, first, modifyIndex(t, consul, key))

	// By a minute after the first write (at 5 s), the heartbeat wrote the
	// record and renewed the session, once.
	must.Eq(t, []string{WroteHeartbeat}, offerSteady(ctx, t, p, clock, 1000, 35*time.Second))
	must.Eq(t, map[string]int{"session/renew": 1, "kv": 1}, writes.Take())
	beat := modifyIndex(t, consul, key)
	must.Greater(t, first, beat)

	// Then one heartbeat a minute: ten minutes, ten heartbeats, twenty
	// writes, where writing every sample would take 240.
	wrote := offerSteady(ctx, t, p, clock, 1000, 10*time.Minute)
	must.SliceLen(t, 10, wrote)
	for _, why := range wrote {
		must.Eq(t, WroteHeartbeat, why)
	}
	must.Eq(t, map[string]int{"session/renew": 10, "kv": 10}, writes.Take())

	// The record read back carries the heartbeat and a recent sample.
	recs, _, err := List(ctx, consul, "")
	must.NoError(t, err)
	must.SliceLen(t, 1, recs)
	must.Eq(t, "1m0s", recs[0].Heartbeat)
	must.False(t, recs[0].Stale(clock.Now()))
	must.True(t, recs[0].Stale(clock.Now().Add(3*time.Minute)))
}

// TestOffer_Change: a change beyond the dead band is written at the sample
// that sees it, without renewing the session; one within it waits for the
// heartbeat.
func TestOffer_Change(t *testing.T) {
	ctx := testContext(t)
	consul, writes := countedConsul(t)
	clock := &fakeClock{now: time.Date(2026, 3, 4, 5, 0, 0, 0, time.UTC)}
	p := NewPublisher(consul, "", DefaultPolicy().SessionTTL(), testutil.Logger(t, hclog.Debug))
	p.now = clock.Now
	key := p.Key("node-1-id")
	// Seconds apart: the first heartbeat, at a random point of the second
	// half of its period (30 s at least), never comes within the test.

	r := testRecord("node-1-id", "node-1", 1000)
	why, err := p.Offer(ctx, r)
	must.NoError(t, err)
	must.Eq(t, WroteFirst, why)
	writes.Take()

	// 150 MHz more is within 5% of 4000 MHz: not written.
	clock.advance(time.Second)
	r = testRecord("node-1-id", "node-1", 1150)
	why, err = p.Offer(ctx, r)
	must.NoError(t, err)
	must.Eq(t, WroteNothing, why)
	must.MapEmpty(t, writes.Take())

	// The node turns hot: 1000 MHz more is written at once, and the
	// record in Consul shows it.
	before := modifyIndex(t, consul, key)
	clock.advance(time.Second)
	r = testRecord("node-1-id", "node-1", 2000)
	why, err = p.Offer(ctx, r)
	must.NoError(t, err)
	must.Eq(t, WroteChange, why)
	must.Eq(t, map[string]int{"kv": 1}, writes.Take())
	must.Greater(t, before, modifyIndex(t, consul, key))
	recs, _, err := List(ctx, consul, "")
	must.NoError(t, err)
	must.Eq(t, 2000.0, recs[0].Online.CPU)

	// The dead band counts from the record written, not from the last
	// sample: three steps of 100 MHz are written at the second.
	var wrote []string
	for _, cpu := range []float64{2100, 2200, 2300} {
		clock.advance(time.Second)
		why, err := p.Offer(ctx, testRecord("node-1-id", "node-1", cpu))
		must.NoError(t, err)
		wrote = append(wrote, why)
	}
	must.Eq(t, []string{WroteNothing, WroteChange, WroteNothing}, wrote)

	// A new allocation is written at once, however small.
	clock.advance(time.Second)
	r = testRecord("node-1-id", "node-1", 2200)
	r.Allocs = append(r.Allocs, Alloc{ID: "b1", Name: "batch.g[0]", JobID: "batch", Group: "g", JobType: "batch", Priority: 30})
	why, err = p.Offer(ctx, r)
	must.NoError(t, err)
	must.Eq(t, WroteChange, why)
	recs, _, err = List(ctx, consul, "")
	must.NoError(t, err)
	must.SliceLen(t, 2, recs[0].Allocs)

	// A session gone behind the publisher's back is noticed at the next
	// change, which is written under a new one.
	session, _ := holder(t, consul, key)
	_, err = consul.Session().Destroy(session, nil)
	must.NoError(t, err)
	writes.Take()
	clock.advance(time.Second)
	r.Online.CPU = 3000
	why, err = p.Offer(ctx, r)
	must.NoError(t, err)
	must.Eq(t, WroteChange, why)
	newSession, ok := holder(t, consul, key)
	must.True(t, ok)
	must.NotEq(t, session, newSession)
	must.Eq(t, map[string]int{"kv": 2, "session/create": 1}, writes.Take())
}

// TestOffer_SessionExpires: the record of an agent that stops writing
// (it died) disappears when its session expires.
func TestOffer_SessionExpires(t *testing.T) {
	ctx := testContext(t)
	consul := newConsul(t)
	pol := Policy{Heartbeat: 5 * time.Second, DeadBand: DefaultDeadBand} // the shortest: a TTL of 10s
	p := NewPublisher(consul, "", pol.SessionTTL(), testutil.Logger(t, hclog.Debug))
	must.NoError(t, p.SetPolicy(pol))
	why, err := p.Offer(ctx, testRecord("node-1-id", "node-1", 100))
	must.NoError(t, err)
	must.Eq(t, WroteFirst, why)
	session, ok := holder(t, consul, p.Key("node-1-id"))
	must.True(t, ok)
	info, _, err := consul.Session().Info(session, nil)
	must.NoError(t, err)
	must.Eq(t, "10s", info.TTL)

	// No more offers: Consul expires the session (at twice its TTL) and
	// deletes the record.
	start := time.Now()
	must.Wait(t, wait.InitialSuccess(
		wait.BoolFunc(func() bool {
			recs, _, err := List(ctx, consul, "")
			return err == nil && len(recs) == 0
		}),
		wait.Timeout(50*time.Second),
		wait.Gap(500*time.Millisecond),
	))
	t.Logf("record deleted %s after the last renewal (session TTL %s)", time.Since(start).Round(time.Second), info.TTL)
}

func TestPublisher_SetPolicy(t *testing.T) {
	p := NewPublisher(nil, "", time.Minute, hclog.NewNullLogger())
	must.Eq(t, 30*time.Second, p.Policy().Heartbeat)
	must.ErrorContains(t, p.SetPolicy(DefaultPolicy()), "heartbeat 1m0s is more than half the session TTL 1m0s")
	must.ErrorContains(t, p.SetPolicy(Policy{Heartbeat: 20 * time.Second, DeadBand: 2}), "dead_band: 2 must be")
	must.NoError(t, p.SetPolicy(Policy{Heartbeat: 20 * time.Second, DeadBand: 0.1}))
	must.Eq(t, Policy{Heartbeat: 20 * time.Second, DeadBand: 0.1}, p.Policy())
}
