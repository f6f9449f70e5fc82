package load

import (
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/testutil"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

func newConsul(t *testing.T) *consulapi.Client {
	t.Helper()
	addr := catalogtest.StartConsul(t)
	client, err := consulapi.NewClient(&consulapi.Config{Address: addr})
	must.NoError(t, err)
	return client
}

func testRecord(nodeID, nodeName string, cpu float64) Record {
	return Record{
		NodeID:    nodeID,
		NodeName:  nodeName,
		SampledAt: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
		Source:    SourceAllocations,
		Samples:   3,
		Window:    "30s",
		Capacity:  Resources{CPU: 4000, MemoryMB: 8192},
		Online:    Resources{CPU: cpu, MemoryMB: 512},
		Allocs: []Alloc{{
			ID: "a1", Name: "web.g[0]", JobID: "web", Group: "g", JobType: "service",
			Priority: 50, Online: true, GroupCount: 1,
			Usage: Resources{CPU: cpu, MemoryMB: 512},
		}},
	}
}

// stamped is r as p writes it: with p's heartbeat.
func stamped(p *Publisher, r Record) Record {
	r.Heartbeat = p.Policy().Heartbeat.String()
	return r
}

// holder returns the session holding key, "" if none, and whether the key
// exists.
func holder(t *testing.T, consul *consulapi.Client, key string) (string, bool) {
	t.Helper()
	pair, _, err := consul.KV().Get(key, nil)
	must.NoError(t, err)
	if pair == nil {
		return "", false
	}
	return pair.Session, true
}

func TestPublisher(t *testing.T) {
	ctx := testContext(t)
	consul := newConsul(t)
	logger := testutil.Logger(t, hclog.Debug)

	p1 := NewPublisher(consul, "", 15*time.Second, logger)
	p2 := NewPublisher(consul, "ferry/nodes", time.Second, logger) // same prefix; TTL raised to 10s
	must.Eq(t, "ferry/nodes/node-1-id", p1.Key("node-1-id"))
	must.Eq(t, "ferry/nodes/node-2-id", p2.Key("node-2-id"))
	must.Eq(t, 10*time.Second, p2.ttl)
	// The heartbeat is half the TTL, at most DefaultHeartbeat.
	must.Eq(t, 7500*time.Millisecond, p1.Policy().Heartbeat)
	must.Eq(t, 5*time.Second, p2.Policy().Heartbeat)
	must.Eq(t, DefaultDeadBand, p1.Policy().DeadBand)

	recs, _, err := List(ctx, consul, sdk.PrefixNodes)
	must.NoError(t, err)
	must.SliceEmpty(t, recs)

	r1 := testRecord("node-1-id", "zeta", 100)
	r2 := testRecord("node-2-id", "alpha", 200)
	must.NoError(t, p1.Publish(ctx, r1))
	must.NoError(t, p2.Publish(ctx, r2))

	// The session is a TTL session that deletes its keys, without lock
	// delay.
	session1, ok := holder(t, consul, p1.Key("node-1-id"))
	must.True(t, ok)
	must.NotEq(t, "", session1)
	info, _, err := consul.Session().Info(session1, nil)
	must.NoError(t, err)
	must.NotNil(t, info)
	must.Eq(t, consulapi.SessionBehaviorDelete, info.Behavior)
	must.Eq(t, "15s", info.TTL)
	must.Eq(t, time.Duration(0), info.LockDelay)

	recs, index, err := List(ctx, consul, sdk.PrefixNodes)
	must.NoError(t, err)
	must.Positive(t, index)
	must.Eq(t, []Record{stamped(p2, r2), stamped(p1, r1)}, recs) // by node name

	// Republishing renews the session and replaces the record.
	r1.Online.CPU = 150
	must.NoError(t, p1.Publish(ctx, r1))
	session, _ := holder(t, consul, p1.Key("node-1-id"))
	must.Eq(t, session1, session)
	recs, _, err = List(ctx, consul, "")
	must.NoError(t, err)
	must.Eq(t, 150.0, recs[1].Online.CPU)

	// Close deletes the record; closing twice is fine.
	must.NoError(t, p2.Close(ctx))
	must.NoError(t, p2.Close(ctx))
	_, ok = holder(t, consul, p2.Key("node-2-id"))
	must.False(t, ok)
	recs, _, err = List(ctx, consul, "")
	must.NoError(t, err)
	must.Eq(t, []Record{stamped(p1, r1)}, recs)
}

func TestPublisher_SessionLost(t *testing.T) {
	ctx := testContext(t)
	consul := newConsul(t)
	p := NewPublisher(consul, "", SessionTTL(time.Second), testutil.Logger(t, hclog.Debug))
	r := testRecord("node-1-id", "node-1", 100)
	key := p.Key(r.NodeID)

	must.NoError(t, p.Publish(ctx, r))
	session1, ok := holder(t, consul, key)
	must.True(t, ok)

	// The session ends behind the publisher's back (as when it expires):
	// the record disappears with it.
	_, err := consul.Session().Destroy(session1, nil)
	must.NoError(t, err)
	_, ok = holder(t, consul, key)
	must.False(t, ok)
	recs, _, err := List(ctx, consul, "")
	must.NoError(t, err)
	must.SliceEmpty(t, recs)

	// The next publish finds the session gone and starts a new one.
	must.NoError(t, p.Publish(ctx, r))
	session2, ok := holder(t, consul, key)
	must.True(t, ok)
	must.NotEq(t, session1, session2)
	recs, _, err = List(ctx, consul, "")
	must.NoError(t, err)
	must.Eq(t, []Record{stamped(p, r)}, recs)

	must.NoError(t, p.Close(ctx))
	_, ok = holder(t, consul, key)
	must.False(t, ok)
	sessions, _, err := consul.Session().List(nil)
	must.NoError(t, err)
	must.SliceEmpty(t, sessions)
}

func TestPublisher_TakeOver(t *testing.T) {
	ctx := testContext(t)
	consul := newConsul(t)
	logger := testutil.Logger(t, hclog.Debug)
	r := testRecord("node-1-id", "node-1", 100)

	// An agent that died without closing leaves its session until it
	// expires; the node's next agent takes the record over at once.
	old := NewPublisher(consul, "", time.Minute, logger)
	must.NoError(t, old.Publish(ctx, r))
	oldSession, _ := holder(t, consul, old.Key(r.NodeID))

	p := NewPublisher(consul, "", time.Minute, logger)
	r.Online.CPU = 300
	must.NoError(t, p.Publish(ctx, r))
	session, ok := holder(t, consul, p.Key(r.NodeID))
	must.True(t, ok)
	must.NotEq(t, oldSession, session)
	info, _, err := consul.Session().Info(oldSession, nil)
	must.NoError(t, err)
	must.Nil(t, info)
	recs, _, err := List(ctx, consul, "")
	must.NoError(t, err)
	must.Eq(t, []Record{stamped(p, r)}, recs)
}

func TestList_SkipsWhatIsNoRecord(t *testing.T) {
	ctx := testContext(t)
	consul := newConsul(t)
	p := NewPublisher(consul, "test/load/", 0, testutil.Logger(t, hclog.Debug))
	r := testRecord("node-1-id", "node-1", 100)
	must.NoError(t, p.Publish(ctx, r))

	for key, value := range map[string]string{
		"test/load/garbage":      "{not json",
		"test/load/other-id":     `{"node_id":"node-1-id","node_name":"node-1"}`, // names another node
		"test/load/no-id":        `{"node_name":"x"}`,
		"test/load/deeper/x":     `{"node_id":"x"}`,
		"test/loadx/node-9-id":   `{"node_id":"node-9-id"}`, // outside the prefix
		"test/load/node-0-empty": `{"node_id":"node-0-empty","node_name":"a"}`,
	} {
		_, err := consul.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(value)}, nil)
		must.NoError(t, err)
	}
	recs, _, err := List(ctx, consul, "test/load")
	must.NoError(t, err)
	must.SliceLen(t, 2, recs)
	must.Eq(t, "node-0-empty", recs[0].NodeID)
	must.Eq(t, stamped(p, r), recs[1])

	err = p.Publish(ctx, testRecord("a/b", "x", 1))
	must.ErrorContains(t, err, `node ID "a/b" is not a single key segment`)
	err = p.Publish(ctx, testRecord("", "x", 1))
	must.ErrorContains(t, err, "record has no node ID")
}
