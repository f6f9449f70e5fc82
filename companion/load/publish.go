package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
type Publisher struct {
	consul *consulapi.Client
	prefix string
	ttl    time.Duration
	logger hclog.Logger

	mu      sync.Mutex
	session string // empty until the first Publish, and after Close
}

// NewPublisher returns a publisher under prefix (sdk.PrefixNodes when empty)
// whose session expires ttl after its last publish (see SessionTTL; held
// within Consul's bounds of 10s to 24h).
func NewPublisher(consul *consulapi.Client, prefix string, ttl time.Duration, logger hclog.Logger) *Publisher {
	return &Publisher{
		consul: consul,
		prefix: normalizePrefix(prefix),
		ttl:    catalog.ClampTTL(ttl),
		logger: logger,
	}
}

// Key returns the KV key of nodeID's record.
func (p *Publisher) Key(nodeID string) string { return recordKey(p.prefix, nodeID) }

// Publish writes r under its node's key. It creates the session on first
// use and renews it on every publish; if Consul no longer knows the session
// (it expired, or someone destroyed it), Publish creates a new one. A key
// still held by another session, e.g. that of this node's previous agent,
// is taken over: only this node's agent publishes this node's record.
func (p *Publisher) Publish(ctx context.Context, r Record) error {
	if err := checkNodeID(r.NodeID); err != nil {
		return fmt.Errorf("publish load: %w", err)
	}
	key := p.Key(r.NodeID)
	value, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("publish load %s: encode: %w", key, err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	session, err := p.ensureSession(ctx, r.NodeID)
	if err != nil {
		return fmt.Errorf("publish load %s: %w", key, err)
	}
	if err := catalog.AcquireOrTakeOver(ctx, p.consul, key, value, session, p.logger); err != nil {
		return fmt.Errorf("publish load %s: %w", key, err)
	}
	return nil
}

// ensureSession renews the publisher's session, or creates one if there is
// none or Consul no longer knows it. p.mu is held.
func (p *Publisher) ensureSession(ctx context.Context, nodeID string) (string, error) {
	if p.session != "" {
		ok, err := catalog.RenewSession(ctx, p.consul, p.session)
		if err != nil {
			return "", err
		}
		if ok {
			return p.session, nil
		}
		p.logger.Info("load session gone, creating a new one", "session", p.session, "node_id", nodeID)
		p.session = ""
	}
	id, err := catalog.CreateSession(ctx, p.consul, "ferry-load-"+nodeID, p.ttl)
	if err != nil {
		return "", err
	}
	p.session = id
	p.logger.Debug("load session created", "session", id, "node_id", nodeID, "ttl", p.ttl)
	return id, nil
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
	p.session = ""
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
