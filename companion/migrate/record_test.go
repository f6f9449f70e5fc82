package migrate

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	consul "github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
)

// newRecords starts a Consul dev agent and returns the records kept there.
func newRecords(t *testing.T) (*Records, *consul.Client, context.Context) {
	t.Helper()
	client, err := consul.NewClient(&consul.Config{Address: catalogtest.StartConsul(t)})
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return &Records{Consul: client}, client, ctx
}

func TestRecords(t *testing.T) {
	records, client, ctx := newRecords(t)

	list, err := records.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, list)

	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for i, id := range []string{"m-3", "m-1", "m-2"} {
		must.NoError(t, records.Put(ctx, &Record{
			ID:         id,
			AllocID:    "alloc-" + id,
			JobID:      "web",
			SourceNode: "node-1",
			TargetNode: "node-2",
			StartedAt:  base.Add(time.Duration(i) * time.Minute),
		}, nil))
	}
	// Finishing one overwrites it.
	m, err := records.Get(ctx, "m-1")
	must.NoError(t, err)
	m.Result, m.NewAllocID, m.Downtime, m.Bytes = "migrated", "alloc-new", 850*time.Millisecond, 1<<20
	m.FinishedAt = base.Add(5 * time.Minute)
	must.NoError(t, records.Put(ctx, m, nil))

	got, err := records.Get(ctx, "m-1")
	must.NoError(t, err)
	must.Eq(t, m, got)

	list, err = records.List(ctx)
	must.NoError(t, err)
	var ids []string
	for _, m := range list {
		ids = append(ids, m.ID)
	}
	must.Eq(t, []string{"m-3", "m-1", "m-2"}, ids)
	must.Eq(t, "migrated", list[1].Result)

	pair, _, err := client.KV().Get("ferry/migrations/m-1", nil)
	must.NoError(t, err)
	must.NotNil(t, pair)
	must.StrContains(t, string(pair.Value), `"result":"migrated"`)

	// A migration without a start time gets one.
	fresh := &Record{ID: "m-4", AllocID: "alloc-4"}
	must.NoError(t, records.Put(ctx, fresh, nil))
	must.False(t, fresh.StartedAt.IsZero())

	_, err = records.Get(ctx, "m-9")
	must.ErrorIs(t, err, catalog.ErrNotFound)
	must.Error(t, records.Put(ctx, &Record{AllocID: "x"}, nil))
	// Checkpoint records and migrations do not mix.
	checkpoints, err := catalog.New(client, "", nil).List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, checkpoints)
}

func TestRecordsPutFenced(t *testing.T) {
	records, client, ctx := newRecords(t)

	session, _, err := client.Session().Create(&consul.SessionEntry{TTL: "30s", Behavior: consul.SessionBehaviorRelease}, nil)
	must.NoError(t, err)
	t.Cleanup(func() { _, _ = client.Session().Destroy(session, nil) })
	fence := &Fence{Key: "ferry/leader", Session: session}

	// Nobody holds the lock yet: nothing is written.
	err = records.Put(ctx, &Record{ID: "m-1", AllocID: "a"}, fence)
	must.ErrorIs(t, err, ErrFenced)
	_, err = records.Get(ctx, "m-1")
	must.ErrorIs(t, err, catalog.ErrNotFound)

	ok, _, err := client.KV().Acquire(&consul.KVPair{Key: fence.Key, Session: session}, nil)
	must.NoError(t, err)
	must.True(t, ok)
	must.NoError(t, records.Put(ctx, &Record{ID: "m-1", AllocID: "a"}, fence))

	// Once the lock is released, the holder is fenced off again.
	_, _, err = client.KV().Release(&consul.KVPair{Key: fence.Key, Session: session}, nil)
	must.NoError(t, err)
	err = records.Put(ctx, &Record{ID: "m-2", AllocID: "b"}, fence)
	must.ErrorIs(t, err, ErrFenced)

	must.NoError(t, records.Delete(ctx, "m-1"))
	must.NoError(t, records.Delete(ctx, "m-1"))
	list, err := records.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, list)
}
