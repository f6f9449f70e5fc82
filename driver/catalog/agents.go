package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultAgentPrefix is the Consul KV prefix of companion agent records.
const DefaultAgentPrefix = "ferry/agents/"

// deregisterTimeout bounds the removal of an agent record.
const deregisterTimeout = 10 * time.Second

// Agent is the record of the companion agent of one Nomad client node, by
// which other nodes find where to fetch that node's checkpoints.
type Agent struct {
	NodeID   string `json:"node_id"`
	NodeName string `json:"node_name,omitempty"`
	// Address is the agent's base URL, e.g. "http://10.97.0.11:4700".
	Address      string    `json:"address"`
	RegisteredAt time.Time `json:"registered_at"`
}

// AgentKey returns the KV key of the agent record of nodeID.
func (c *Catalog) AgentKey(nodeID string) string { return c.agentPrefix + nodeID }

// RegisterAgent writes a's record (a.RegisteredAt set to now) under its node
// ID, replacing any earlier one. The returned function removes the record
// again, unless a later registration for the same node replaced it in the
// meantime; it logs rather than returns its errors.
func (c *Catalog) RegisterAgent(ctx context.Context, a Agent) (deregister func(), err error) {
	if err := checkName("node ID", a.NodeID); err != nil {
		return nil, fmt.Errorf("catalog: register agent: %w", err)
	}
	if a.Address == "" {
		return nil, fmt.Errorf("catalog: register agent %s: no address", a.NodeID)
	}
	key := c.AgentKey(a.NodeID)
	a.RegisteredAt = time.Now().UTC()
	value, err := json.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("catalog: register agent %s: encode: %w", key, err)
	}
	_, index, err := c.write(ctx, &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: value})
	if err != nil {
		return nil, fmt.Errorf("catalog: register agent %s: %w", key, err)
	}
	logger := c.logger.With("node_id", a.NodeID, "address", a.Address)
	logger.Debug("agent registered", "index", index)
	return func() {
		// The caller's context has usually ended by now.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deregisterTimeout)
		defer cancel()
		ok, _, err := c.client.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: index}, (&api.WriteOptions{}).WithContext(dctx))
		switch {
		case err != nil:
			logger.Warn("cannot deregister agent", "key", key, "error", err)
		case !ok:
			logger.Debug("agent record replaced since registration, left in place", "key", key)
		default:
			logger.Debug("agent deregistered")
		}
	}, nil
}

// GetAgent returns the agent record of nodeID, or an error matching
// ErrNotFound.
func (c *Catalog) GetAgent(ctx context.Context, nodeID string) (*Agent, error) {
	if err := checkName("node ID", nodeID); err != nil {
		return nil, fmt.Errorf("catalog: get agent: %w", err)
	}
	key := c.AgentKey(nodeID)
	pair, _, err := c.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("catalog: get agent %s: %w", key, err)
	}
	if pair == nil {
		return nil, fmt.Errorf("catalog: get agent %s: %w", key, ErrNotFound)
	}
	var a Agent
	if err := json.Unmarshal(pair.Value, &a); err != nil {
		return nil, fmt.Errorf("catalog: get agent %s: decode: %w", key, err)
	}
	if a.NodeID != nodeID {
		return nil, fmt.Errorf("catalog: get agent %s: record names node %q", key, a.NodeID)
	}
	return &a, nil
}

// ListAgents returns every agent record, ordered by node name then ID.
// Undecodable entries are skipped with a warning.
func (c *Catalog) ListAgents(ctx context.Context) ([]*Agent, error) {
	pairs, _, err := c.client.KV().List(c.agentPrefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("catalog: list agents %s: %w", c.agentPrefix, err)
	}
	agents := make([]*Agent, 0, len(pairs))
	for _, pair := range pairs {
		var a Agent
		if err := json.Unmarshal(pair.Value, &a); err != nil {
			c.logger.Warn("skipping undecodable agent record", "key", pair.Key, "error", err)
			continue
		}
		agents = append(agents, &a)
	}
	slices.SortFunc(agents, func(x, y *Agent) int {
		if n := strings.Compare(x.NodeName, y.NodeName); n != 0 {
			return n
		}
		return strings.Compare(x.NodeID, y.NodeID)
	})
	return agents, nil
}
