package catalog_test

import (
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/shoenig/test/must"
)

// TestPeriodic: a task's periodic record round-trips through Consul under
// sdk.PrefixPeriodic, apart from the move records of the same task; the
// checkpoint a replacement resumes is the newest with a copy off the node,
// restored as a ready checkpoint in the shared checkpoint_dir.
func TestPeriodic(t *testing.T) {
	cat, client := newCatalog(t)
	ctx := testContext(t)
	alloc := "6f1c1b51-0b53-4c9e-9b4a-3b0f9a4c2d11"

	_, err := cat.GetPeriodic(ctx, alloc, "counter")
	must.ErrorIs(t, err, catalog.ErrNotFound)
	must.ErrorContains(t, cat.PutPeriodic(ctx, &catalog.Periodic{AllocID: alloc, Task: "a/b"}), "task name")

	taken := time.Date(2026, 12, 6, 14, 2, 11, 0, time.UTC)
	p := &catalog.Periodic{
		AllocID: alloc, Task: "counter", JobID: "sim", NodeID: "n1", NodeName: "node-1",
		Platform: "linux/amd64",
		Checkpoints: []catalog.PeriodicCheckpoint{
			{Name: "20261206T140211.000Z", TakenAt: taken, Bytes: 1 << 20, ManifestSHA256: "aa",
				Copies: []catalog.Copy{{Where: catalog.CopySharedDir, CompletedAt: taken.Add(time.Second)}}},
			{Name: "20261206T143211.000Z", TakenAt: taken.Add(30 * time.Minute), Bytes: 2 << 20, ManifestSHA256: "bb",
				CopyError: "no space left on device"},
		},
	}
	must.NoError(t, cat.PutPeriodic(ctx, p))
	pair, _, err := client.KV().Get(sdk.PrefixPeriodic+alloc+"/counter", nil)
	must.NoError(t, err)
	must.NotNil(t, pair)
	recs, err := cat.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, recs, must.Sprint("a periodic record is not a move record"))

	got, err := cat.GetPeriodic(ctx, alloc, "counter")
	must.NoError(t, err)
	must.Eq(t, p.Checkpoints, got.Checkpoints)
	copied, newest := got.Newest()
	must.Eq(t, "20261206T140211.000Z", copied.Name)
	must.Eq(t, "20261206T143211.000Z", newest.Name)

	r := got.Restorable(copied)
	must.Eq(t, catalog.StateReady, r.State)
	must.True(t, r.Shared)
	must.Eq(t, copied.Name, r.Periodic)
	must.Eq(t, "aa", r.ManifestSHA256)
	must.Eq(t, "node-1", r.SourceNodeName)
	must.Eq(t, taken, r.CreatedAt)

	must.NoError(t, cat.DeletePeriodic(ctx, alloc, "counter"))
	must.NoError(t, cat.DeletePeriodic(ctx, alloc, "counter"))
	_, err = cat.GetPeriodic(ctx, alloc, "counter")
	must.ErrorIs(t, err, catalog.ErrNotFound)
}
