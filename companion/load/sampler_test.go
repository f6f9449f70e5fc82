package load

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// newTestSampler returns a sampler of fake's node whose clock the test
// advances with the returned function.
func newTestSampler(t *testing.T, fake *fakeNomad, cfg SamplerConfig) (*Sampler, func(time.Duration)) {
	t.Helper()
	s := NewSampler(startFakeNomad(t, fake), cfg, testutil.Logger(t, hclog.Debug))
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	s.now = func() time.Time { return now }
	return s, func(d time.Duration) { now = now.Add(d) }
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestSampler_Allocations(t *testing.T) {
	ctx := testContext(t)
	done := runningAlloc("done-id", "done", "batch", 30)
	done.ClientStatus = api.AllocClientStatusComplete
	fake := &fakeNomad{
		node: testNode(),
		allocs: []*api.Allocation{
			runningAlloc("web-id", "web", "service", 50),
			runningAlloc("batch1-id", "batch1", "batch", 30),
			done,
		},
		stats: map[string]*api.AllocResourceUsage{
			"web-id":    usageStats(1000, 512),
			"batch1-id": usageStats(600, 1024),
			"done-id":   usageStats(9999, 9999),
		},
	}
	s, advance := newTestSampler(t, fake, SamplerConfig{
		NodeID: "node-1-id", Window: 30 * time.Second, OnlinePriority: 70,
	})

	// First sample: the means are the sample.
	r, err := s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, "node-1-id", r.NodeID)
	must.Eq(t, "node-1", r.NodeName) // from Nomad
	must.Eq(t, SourceAllocations, r.Source)
	must.Eq(t, "30s", r.Window)
	must.Eq(t, 1, r.Samples)
	must.Eq(t, time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), r.SampledAt)
	must.Eq(t, Resources{CPU: 3500, MemoryMB: 7168}, r.Capacity)
	must.Eq(t, Resources{CPU: 1000, MemoryMB: 512}, r.Online)
	must.Eq(t, Resources{CPU: 600, MemoryMB: 1024}, r.Offline)
	must.SliceLen(t, 2, r.Allocs)
	must.Eq(t, Alloc{
		ID: "batch1-id", Name: "batch1.g[0]", JobID: "batch1", Group: "g",
		JobType: "batch", Priority: 30, Checkpoint: true,
		Reserved:   Resources{CPU: 500, MemoryMB: 256},
		Usage:      Resources{CPU: 600, MemoryMB: 1024},
		GroupCount: 1,
	}, r.Allocs[0])
	must.Eq(t, "web-id", r.Allocs[1].ID)
	must.True(t, r.Allocs[1].Online)

	// Second sample: batch1's stats fail, so it gets no sample and its mean
	// over the window stands.
	advance(10 * time.Second)
	fake.set(func(f *fakeNomad) {
		f.stats["web-id"] = usageStats(2000, 512)
		delete(f.stats, "batch1-id")
	})
	r, err = s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, 2, r.Samples)
	must.Eq(t, Resources{CPU: 1500, MemoryMB: 512}, r.Online)
	must.Eq(t, Resources{CPU: 600, MemoryMB: 1024}, r.Offline)

	// Third: batch1 is gone and drops out; batch3 starts, its mean covers
	// its own sample only.
	advance(10 * time.Second)
	fake.set(func(f *fakeNomad) {
		f.allocs = []*api.Allocation{
			runningAlloc("web-id", "web", "service", 50),
			runningAlloc("batch3-id", "batch3", "batch", 30),
		}
		f.stats["web-id"] = usageStats(3000, 512)
		f.stats["batch3-id"] = usageStats(100, 100)
	})
	r, err = s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, 3, r.Samples)
	must.Eq(t, Resources{CPU: 2000, MemoryMB: 512}, r.Online)
	must.Eq(t, Resources{CPU: 100, MemoryMB: 100}, r.Offline)
	must.Eq(t, []string{"batch3-id", "web-id"}, []string{r.Allocs[0].ID, r.Allocs[1].ID})
	must.Eq(t, 2, s.allocs.len())

	// Fourth: the first sample leaves the 30s window.
	advance(10 * time.Second)
	r, err = s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, 3, r.Samples)
	must.Eq(t, Resources{CPU: (2000 + 3000 + 3000) / 3.0, MemoryMB: 512}, r.Online)
	must.Eq(t, Resources{CPU: 100, MemoryMB: 100}, r.Offline)
}

func TestSampler_Host(t *testing.T) {
	ctx := testContext(t)
	fake := &fakeNomad{
		node: testNode(),
		allocs: []*api.Allocation{
			runningAlloc("web-id", "web", "service", 50),
			runningAlloc("batch1-id", "batch1", "batch", 30),
		},
		stats: map[string]*api.AllocResourceUsage{
			"web-id":    usageStats(1000, 512),
			"batch1-id": usageStats(600, 1024),
		},
		// 75% of 4 x 1000 MHz busy, 4 GiB used.
		host: &api.HostStats{
			CPU:    []*api.HostCPUStats{{Idle: 25}, {Idle: 25}, {Idle: 25}, {Idle: 25}},
			Memory: &api.HostMemoryStats{Used: 4 << 30},
		},
	}
	s, advance := newTestSampler(t, fake, SamplerConfig{
		NodeID: "node-1-id", NodeName: "given", Window: time.Minute, Source: SourceHost, OnlinePriority: 70,
	})

	r, err := s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, "given", r.NodeName)
	must.Eq(t, SourceHost, r.Source)
	must.Eq(t, 1, r.Samples)
	// Online is everything the offline allocations do not account for.
	must.Eq(t, Resources{CPU: 2400, MemoryMB: 3072}, r.Online)
	must.Eq(t, Resources{CPU: 600, MemoryMB: 1024}, r.Offline)

	advance(10 * time.Second)
	fake.set(func(f *fakeNomad) {
		f.host = &api.HostStats{CPUTicksConsumed: 1000, Memory: &api.HostMemoryStats{Used: 512 << 20}}
	})
	r, err = s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, 2, r.Samples)
	// Host means 2000 MHz and 2304 MiB, less offline 600 MHz and 1024 MiB.
	must.Eq(t, Resources{CPU: 1400, MemoryMB: 1280}, r.Online)
	must.Eq(t, Resources{CPU: 600, MemoryMB: 1024}, r.Offline)

	// Without host stats the sample fails and changes nothing.
	advance(10 * time.Second)
	fake.set(func(f *fakeNomad) { f.host = nil })
	_, err = s.Sample(ctx)
	must.ErrorContains(t, err, "sample node node-1-id: host stats")
	_, n := s.node.mean(nodeKey)
	must.Eq(t, 2, n)
}

func TestSampler_Errors(t *testing.T) {
	ctx := testContext(t)
	fake := &fakeNomad{node: testNode()}

	s, _ := newTestSampler(t, fake, SamplerConfig{NodeID: "node-2-id", OnlinePriority: 70})
	_, err := s.Sample(ctx)
	must.ErrorContains(t, err, "sample node node-2-id: read node")

	s, _ = newTestSampler(t, fake, SamplerConfig{NodeID: "node-1-id", Source: "guess", OnlinePriority: 0})
	_, err = s.Sample(ctx)
	must.ErrorContains(t, err, `source: "guess" is not supported`)
	must.ErrorContains(t, err, "online priority: 0 must be")

	s, _ = newTestSampler(t, fake, SamplerConfig{NodeID: "node-1-id", OnlinePriority: 70})
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.Sample(cancelled)
	must.ErrorIs(t, err, context.Canceled)
	must.Eq(t, 0, s.node.len())

	// A node without allocations is a valid, empty record.
	r, err := s.Sample(ctx)
	must.NoError(t, err)
	must.NotNil(t, r.Allocs)
	must.SliceEmpty(t, r.Allocs)
	must.Eq(t, "0s", r.Window)
}

// An allocation Nomad is stopping still uses the node, but is not offered
// for a move.
func TestSampler_Stopping(t *testing.T) {
	ctx := testContext(t)
	stopping := runningAlloc("old-id", "old", "batch", 30)
	stopping.DesiredStatus = api.AllocDesiredStatusStop
	fake := &fakeNomad{
		node:   testNode(),
		allocs: []*api.Allocation{stopping, runningAlloc("new-id", "new", "batch", 30)},
		stats: map[string]*api.AllocResourceUsage{
			"old-id": usageStats(400, 100),
			"new-id": usageStats(200, 100),
		},
	}
	s, _ := newTestSampler(t, fake, SamplerConfig{NodeID: "node-1-id", Window: 30 * time.Second, OnlinePriority: 70})
	r, err := s.Sample(ctx)
	must.NoError(t, err)
	must.Eq(t, Resources{CPU: 600, MemoryMB: 200}, r.Offline)
	must.SliceLen(t, 1, r.Allocs)
	must.Eq(t, "new-id", r.Allocs[0].ID)
}
