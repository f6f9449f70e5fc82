package load

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

func TestRun(t *testing.T) {
	ctx := testContext(t)
	consul := newConsul(t)
	logger := testutil.Logger(t, hclog.Debug)

	// The node is unknown at first: rounds fail and Run keeps going.
	node := testNode()
	node.ID = "not-yet"
	fake := &fakeNomad{
		node:   node,
		allocs: []*api.Allocation{runningAlloc("batch1-id", "batch1", "batch", 30)},
		stats:  map[string]*api.AllocResourceUsage{"batch1-id": usageStats(600, 1024)},
	}
	interval := 20 * time.Millisecond
	s := NewSampler(startFakeNomad(t, fake), SamplerConfig{
		NodeID: "node-1-id", Window: time.Second, OnlinePriority: 70,
	}, logger)
	p := NewPublisher(consul, "", SessionTTL(interval), logger)

	records := make(chan Record, 100)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	errc := make(chan error, 1)
	go func() {
		errc <- Run(runCtx, s, p, interval, func(r Record) {
			select {
			case records <- r:
			default:
			}
		})
	}()

	time.Sleep(5 * interval)
	must.Eq(t, 0, len(records))
	fake.set(func(f *fakeNomad) { f.node.ID = "node-1-id" })

	var got Record
	select {
	case got = <-records:
	case <-ctx.Done():
		t.Fatal("no record")
	}
	must.Eq(t, "node-1-id", got.NodeID)
	must.Eq(t, Resources{CPU: 600, MemoryMB: 1024}, got.Offline)

	// The first record is written at once; a later one only when the load
	// moves beyond the dead band (a heartbeat, a minute away, never comes
	// in this test): a new allocation and its usage are written.
	must.Wait(t, wait.InitialSuccess(
		wait.BoolFunc(func() bool {
			recs, _, err := List(ctx, consul, "")
			return err == nil && len(recs) == 1 && recs[0].NodeID == "node-1-id"
		}),
		wait.Timeout(10*time.Second),
		wait.Gap(interval),
	))
	fake.set(func(f *fakeNomad) {
		f.allocs = append(f.allocs, runningAlloc("web1-id", "web1", "service", 50))
		f.stats["web1-id"] = usageStats(2000, 2048)
	})
	must.Wait(t, wait.InitialSuccess(
		wait.BoolFunc(func() bool {
			recs, _, err := List(ctx, consul, "")
			return err == nil && len(recs) == 1 && len(recs[0].Allocs) == 2 && recs[0].Online.CPU > 0 &&
				recs[0].Heartbeat == DefaultHeartbeat.String()
		}),
		wait.Timeout(10*time.Second),
		wait.Gap(interval),
	))

	// Ending the context removes the record.
	stop()
	select {
	case err := <-errc:
		must.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("Run did not return")
	}
	recs, _, err := List(ctx, consul, "")
	must.NoError(t, err)
	must.SliceEmpty(t, recs)
}

func TestRun_BadInterval(t *testing.T) {
	s := NewSampler(nil, SamplerConfig{NodeID: "n"}, hclog.NewNullLogger())
	err := Run(t.Context(), s, NewPublisher(nil, "", 0, hclog.NewNullLogger()), 0, nil)
	must.ErrorContains(t, err, "sample interval 0s must be positive")
}
