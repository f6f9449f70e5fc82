package catalog_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// outageCatalog is a catalogue that reaches a real Consul agent through an
// outage the test controls.
func outageCatalog(t *testing.T) (*catalog.Catalog, *catalogtest.Outage) {
	t.Helper()
	o := catalogtest.NewOutage(t, catalogtest.StartConsul(t))
	client, err := api.NewClient(&api.Config{Address: o.Addr})
	must.NoError(t, err)
	return catalog.New(client, "", testutil.Logger(t, hclog.Off)), o
}

// Each step of a move reads or writes its record; Consul unreachable for a
// few seconds at any of them must not end the move.
func TestConsulOutageIsRetried(t *testing.T) {
	toReady := func(r *catalog.Record) error { r.State = catalog.StateReady; return nil }
	cases := []struct {
		name  string
		op    func(ctx context.Context, cat *catalog.Catalog) error
		check func(t *testing.T, ctx context.Context, cat *catalog.Catalog)
	}{
		{"put", func(ctx context.Context, cat *catalog.Catalog) error {
			return cat.Put(ctx, sampleRecord("alloc-new", "app", catalog.StateCheckpointing))
		}, func(t *testing.T, ctx context.Context, cat *catalog.Catalog) {
			r, err := cat.Get(ctx, "alloc-new", "app")
			must.NoError(t, err)
			must.Eq(t, catalog.StateCheckpointing, r.State)
		}},
		{"get", func(ctx context.Context, cat *catalog.Catalog) error {
			_, err := cat.Get(ctx, "alloc-1", "app")
			return err
		}, nil},
		{"transition", func(ctx context.Context, cat *catalog.Catalog) error {
			_, err := cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateCheckpointing}, toReady)
			return err
		}, func(t *testing.T, ctx context.Context, cat *catalog.Catalog) {
			r, err := cat.Get(ctx, "alloc-1", "app")
			must.NoError(t, err)
			must.Eq(t, catalog.StateReady, r.State)
		}},
		{"delete", func(ctx context.Context, cat *catalog.Catalog) error {
			return cat.Delete(ctx, "alloc-1", "app")
		}, func(t *testing.T, ctx context.Context, cat *catalog.Catalog) {
			_, err := cat.Get(ctx, "alloc-1", "app")
			must.ErrorIs(t, err, catalog.ErrNotFound)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cat, outage := outageCatalog(t)
			ctx := testContext(t)
			must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateCheckpointing)))

			outage.Down()
			done := make(chan error, 1)
			go func() { done <- tc.op(ctx, cat) }()
			time.Sleep(1500 * time.Millisecond)
			select {
			case err := <-done:
				t.Fatalf("%s returned during the outage: %v", tc.name, err)
			default:
			}
			must.Positive(t, outage.Refused())
			outage.Up()
			select {
			case err := <-done:
				must.NoError(t, err)
			case <-time.After(15 * time.Second):
				t.Fatalf("%s did not finish once Consul was back", tc.name)
			}
			if tc.check != nil {
				tc.check(t, ctx, cat)
			}
		})
	}
}

// A retry ends with the caller's context, with an error saying so.
func TestConsulOutageEndsWithTheContext(t *testing.T) {
	cat, outage := outageCatalog(t)
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateCheckpointing)))
	outage.Down()
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := cat.Get(short, "alloc-1", "app")
	must.ErrorIs(t, err, context.DeadlineExceeded)
}

// A transition whose write Consul applied but whose answer was lost is
// done: the retry must not report the record's new state as a conflict.
func TestTransitionAnswerLost(t *testing.T) {
	cat, outage := outageCatalog(t)
	ctx := testContext(t)
	must.NoError(t, cat.Put(ctx, sampleRecord("alloc-1", "app", catalog.StateCheckpointing)))
	outage.LoseAnswer("/v1/txn")
	r, err := cat.Transition(ctx, "alloc-1", "app", []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State, r.Bytes = catalog.StateReady, 42
		return nil
	})
	must.NoError(t, err)
	must.Eq(t, catalog.StateReady, r.State)
	must.Eq(t, 42, r.Bytes)
	got, err := cat.Get(ctx, "alloc-1", "app")
	must.NoError(t, err)
	must.Eq(t, r.ModifyIndex, got.ModifyIndex)
}
