package catalog_test

import (
	"testing"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/shoenig/test/must"
)

func TestAgents(t *testing.T) {
	cat, client := newCatalog(t)
	ctx := testContext(t)

	_, err := cat.GetAgent(ctx, "node-1-id")
	must.ErrorIs(t, err, catalog.ErrNotFound)

	deregister1, err := cat.RegisterAgent(ctx, catalog.Agent{NodeID: "node-1-id", NodeName: "node-1", Address: "http://127.0.0.1:4700"})
	must.NoError(t, err)
	deregister2, err := cat.RegisterAgent(ctx, catalog.Agent{NodeID: "node-2-id", NodeName: "node-0", Address: "http://127.0.0.1:4701"})
	must.NoError(t, err)

	a, err := cat.GetAgent(ctx, "node-1-id")
	must.NoError(t, err)
	must.Eq(t, "http://127.0.0.1:4700", a.Address)
	must.Eq(t, "node-1", a.NodeName)
	must.False(t, a.RegisteredAt.IsZero())
	pair, _, err := client.KV().Get("ferry/agents/node-1-id", nil)
	must.NoError(t, err)
	must.NotNil(t, pair)

	agents, err := cat.ListAgents(ctx)
	must.NoError(t, err)
	must.SliceLen(t, 2, agents)
	must.Eq(t, "node-0", agents[0].NodeName)
	must.Eq(t, "node-1", agents[1].NodeName)

	deregister2()
	_, err = cat.GetAgent(ctx, "node-2-id")
	must.ErrorIs(t, err, catalog.ErrNotFound)

	// A restarted agent registers again before the old one deregisters:
	// the old one's deregistration leaves the new record alone.
	_, err = cat.RegisterAgent(ctx, catalog.Agent{NodeID: "node-1-id", NodeName: "node-1", Address: "http://127.0.0.1:4800"})
	must.NoError(t, err)
	deregister1()
	a, err = cat.GetAgent(ctx, "node-1-id")
	must.NoError(t, err)
	must.Eq(t, "http://127.0.0.1:4800", a.Address)

	_, err = cat.RegisterAgent(ctx, catalog.Agent{NodeID: "node-3-id"})
	must.ErrorContains(t, err, "no address")
	_, err = cat.RegisterAgent(ctx, catalog.Agent{Address: "http://127.0.0.1:1"})
	must.Error(t, err)
	// Agents are not checkpoint records.
	records, err := cat.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, records)
}
