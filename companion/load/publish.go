package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Publisher writes a node's record to Consul KV under prefix+node ID, held
// by a Consul session of its own: the record is deleted when the session is
// destroyed (Close) or expires because its agent stopped renewing it.
// Offer writes only what its Policy asks for; Publish writes every time.
type Publisher struct {
	consul *consulapi.Client
	prefix string
	ttl    time.Duration
	logger hclog.Logger
	now    func() time.Time

	mu      sync.Mutex
	policy  Policy
	session string    // empty until the first write, and after Close
	written *Record   // the record last written, nil before the first
	beat    time.Time // when the next heartbeat is due
}

// Why Offer wrote a record.
const (
	// WroteNothing: the load held within the dead band and no heartbeat
	// was due.
	WroteNothing = ""
	// WroteFirst: the first record of this publisher, or the first since
	// its session was lost, closed or a write failed.
	WroteFirst = "first"
	// WroteChange: a value the planner reads moved beyond the dead band.
	WroteChange = "change"
	// WroteHeartbeat: a heartbeat was due; the session was renewed too.
	WroteHeartbeat = "heartbeat"
)

// NewPublisher returns a publisher under prefix (sdk.PrefixNodes when empty)
// whose session expires ttl after its last renewal (see SessionTTL; held
// within Consul's bounds of 10s to 24h). Its policy is DefaultPolicy, with
// the heartbeat shortened to half the TTL if that is less; SetPolicy sets
// another.
func NewPublisher(consul *consulapi.Client, prefix string, ttl time.Duration, logger hclog.Logger) *Publisher {
	ttl = catalog.ClampTTL(ttl)
	return &Publisher{
		consul: consul,
		prefix: normalizePrefix(prefix),
		ttl:    ttl,
		logger: logger,
		now:    time.Now,
		policy: Policy{Heartbeat: heartbeatFor(ttl), DeadBand: DefaultDeadBand},
	}
}

// SetPolicy sets when Offer writes (a zero heartbeat is DefaultHeartbeat).
// The session TTL must be at least two heartbeats (pass the policy's
// SessionTTL to NewPublisher), so that a heartbeat that fails is tried
// again before the session may expire.
func (p *Publisher) SetPolicy(pol Policy) error {
	pol = pol.withDefaults()
	if err := pol.Validate(0); err != nil {
		return fmt.Errorf("load publisher policy: %w", err)
	}
	if pol.Heartbeat*ttlHeartbeats > p.ttl {
		return fmt.Errorf("load publisher policy: heartbeat %s is more than half the session TTL %s", pol.Heartbeat, p.ttl)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.policy = pol
	return nil
}

// Policy returns the publisher's policy.
func (p *Publisher) Policy() Policy {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.policy
}

// Key returns the KV key of nodeID's record.
func (p *Publisher) Key(nodeID string) string { return recordKey(p.prefix, nodeID) }

// Offer writes r if the policy asks for it and says why (WroteNothing when
// it did not): when no record was written yet, when a value the planner
// reads moved beyond the dead band since the record last written, or when
// a heartbeat is due, which renews the session as well. The first
// heartbeat comes at a random point of the second half of the first
// heartbeat period, so that agents started together spread their writes;
// the next ones a heartbeat apart. A failed write is tried again at the
// next Offer.
func (p *Publisher) Offer(ctx context.Context, r Record) (string, error) {
	if err := checkNodeID(r.NodeID); err != nil {
		return WroteNothing, fmt.Errorf("publish load: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	why := WroteNothing
	switch {
	case p.session == "" || p.written == nil || p.written.NodeID != r.NodeID:
		why = WroteFirst
	case !now.Before(p.beat):
		why = WroteHeartbeat
	case p.policy.moved(p.written, &r):
		why = WroteChange
	default:
		return WroteNothing, nil
	}
	if err := p.write(ctx, r, why != WroteChange); err != nil {
		return WroteNothing, err
	}
	return why, nil
}

// Publish writes r under its node's key now, whatever the policy, and
// renews the session. It creates the session on first use; if Consul no
// longer knows the session (it expired, or someone destroyed it), Publish
// creates a new one. A key still held by another session, e.g. that of
// this node's previous agent, is taken over: only this node's agent
// publishes this node's record.
func (p *Publisher) Publish(ctx context.Context, r Record) error {
	if err := checkNodeID(r.NodeID); err != nil {
		return fmt.Errorf("publish load: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.write(ctx, r, true)
}

// write writes r, stamped with the heartbeat, renewing the session first
// when renew is set (or creating one when there is none). Without renew,
// a session Consul no longer knows shows as a failed write: it is then
// replaced and the write tried once more. p.mu is held.
func (p *Publisher) write(ctx context.Context, r Record, renew bool) error {
	key := p.Key(r.NodeID)
	r.Heartbeat = p.policy.Heartbeat.String()
	value, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("publish load %s: encode: %w", key, err)
	}
	now := p.now()
	fresh := p.session == ""
	if renew || fresh {
		if fresh, err = p.ensureSession(ctx, r.NodeID); err != nil {
			return fmt.Errorf("publish load %s: %w", key, err)
		}
	}
	err = catalog.AcquireOrTakeOver(ctx, p.consul, key, value, p.session, p.logger)
	if err != nil && !renew && !fresh {
		// Written without a renewal: the session may have expired
		// unnoticed. Reading it costs no write.
		info, _, ierr := p.consul.Session().Info(p.session, (&consulapi.QueryOptions{}).WithContext(ctx))
		if ierr == nil && info == nil {
			p.logger.Info("load session gone, creating a new one", "session", p.session, "node_id", r.NodeID)
			p.session = ""
			if fresh, err = p.ensureSession(ctx, r.NodeID); err == nil {
				err = catalog.AcquireOrTakeOver(ctx, p.consul, key, value, p.session, p.logger)
			}
		}
	}
	if err != nil {
		p.written = nil
		return fmt.Errorf("publish load %s: %w", key, err)
	}
	p.written = &r
	switch {
	case fresh:
		// A random first heartbeat in the second half of the period
		// spreads the heartbeats of agents started together.
		p.beat = now.Add(p.policy.Heartbeat/2 + rand.N(p.policy.Heartbeat/2+1))
	case renew:
		p.beat = now.Add(p.policy.Heartbeat)
	}
	return nil
}

// ensureSession renews the publisher's session, or creates one if there is
// none or Consul no longer knows it; created says which. p.mu is held.
func (p *Publisher) ensureSession(ctx context.Context, nodeID string) (created bool, err error) {
	if p.session != "" {
		ok, err := catalog.RenewSession(ctx, p.consul, p.session)
		if err != nil {
			return false, err
		}
		if ok {
			return false, nil
		}
		p.logger.Info("load session gone, creating a new one", "session", p.session, "node_id", nodeID)
		p.session = ""
	}
	id, err := catalog.CreateSession(ctx, p.consul, "ferry-load-"+nodeID, p.ttl)
	if err != nil {
		return false, err
	}
	p.session = id
	p.logger.Debug("load session created", "session", id, "node_id", nodeID, "ttl", p.ttl)
	return true, nil
}

// Close destroys the publisher's session, which deletes every record it
// holds. A later Publish starts a new session.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.session == "" {
		return nil
	}
	if err := catalog.DestroySession(ctx, p.consul, p.session); err != nil {
		return fmt.Errorf("close load publisher: %w", err)
	}
	p.logger.Debug("load session destroyed", "session", p.session)
	p.session, p.written = "", nil
	return nil
}

// List returns every node's record under prefix (sdk.PrefixNodes when empty)
// in one KV read, ordered by node name then ID, and the KV index of the
// read, for a blocking query to wait on. Values that are not records of the
// node their key names (undecodable, or naming another node) are skipped.
func List(ctx context.Context, consul *consulapi.Client, prefix string) ([]Record, uint64, error) {
	prefix = normalizePrefix(prefix)
	pairs, meta, err := consul.KV().List(prefix, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("list load records %s: %w", prefix, err)
	}
	var index uint64
	if meta != nil {
		index = meta.LastIndex
	}
	records := make([]Record, 0, len(pairs))
	for _, pair := range pairs {
		var r Record
		if json.Unmarshal(pair.Value, &r) != nil || r.NodeID == "" || recordKey(prefix, r.NodeID) != pair.Key {
			continue
		}
		records = append(records, r)
	}
	slices.SortFunc(records, func(a, b Record) int {
		if n := strings.Compare(a.NodeName, b.NodeName); n != 0 {
			return n
		}
		return strings.Compare(a.NodeID, b.NodeID)
	})
	return records, index, nil
}

// recordKey is the KV key of nodeID's record under prefix.
func recordKey(prefix, nodeID string) string { return prefix + nodeID }

// normalizePrefix makes prefix a KV folder: sdk.PrefixNodes when empty, no
// leading slash, one trailing slash.
func normalizePrefix(prefix string) string {
	prefix = strings.TrimLeft(prefix, "/")
	if prefix == "" {
		return sdk.PrefixNodes
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix
}

// checkNodeID accepts a node ID that is one KV path segment.
func checkNodeID(id string) error {
	if id == "" {
		return errors.New("record has no node ID")
	}
	if strings.Contains(id, "/") || id == "." || id == ".." {
		return fmt.Errorf("node ID %q is not a single key segment", id)
	}
	return nil
}
