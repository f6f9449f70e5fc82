package catalog_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

// A driver's endpoint is held by a session: it is there while the driver
// holds it, comes back when the session is lost, and is gone when the
// driver stops (or dies, once the session's TTL passed).
func TestHoldEndpoint(t *testing.T) {
	cat, client := newCatalog(t)
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() {
		held <- cat.HoldEndpoint(ctx, catalog.Endpoint{NodeID: "node-1", NodeName: "n1", Address: "10.0.0.1:4701"})
	}()
	session := func() string {
		pair, _, err := client.KV().Get(cat.EndpointKey("node-1"), nil)
		if err != nil || pair == nil {
			return ""
		}
		return pair.Session
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		must.Wait(t, wait.InitialSuccess(wait.BoolFunc(ok), wait.Timeout(20*time.Second), wait.Gap(50*time.Millisecond)),
			must.Sprint(what))
	}
	waitFor("the endpoint", func() bool { return session() != "" })
	ep, err := cat.GetEndpoint(testContext(t), "node-1")
	must.NoError(t, err)
	must.Eq(t, "10.0.0.1:4701", ep.Address)
	must.Eq(t, "10.0.0.1", ep.Host())

	// The session is lost (as when Consul forgets it): the key goes, and
	// comes back under a new session.
	first := session()
	_, err = client.Session().Destroy(first, nil)
	must.NoError(t, err)
	waitFor("the endpoint under a new session", func() bool { s := session(); return s != "" && s != first })

	_, err = cat.GetEndpoint(testContext(t), "node-2")
	must.ErrorIs(t, err, catalog.ErrNotFound)
	must.Error(t, cat.HoldEndpoint(ctx, catalog.Endpoint{NodeID: "node/3", Address: "10.0.0.3:4701"}))
	must.Error(t, cat.HoldEndpoint(ctx, catalog.Endpoint{NodeID: "node-3", Address: "no port"}))

	cancel()
	must.NoError(t, <-held)
	pair, _, err := client.KV().Get(cat.EndpointKey("node-1"), nil)
	must.NoError(t, err)
	must.Nil(t, pair)
}
