package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"
)

// endpointTTL is the TTL of the session holding an endpoint: a node that
// died is forgotten this long after.
const endpointTTL = 15 * time.Second

// Endpoint is where the driver of one Nomad node serves and receives
// checkpoints, over mutual TLS.
type Endpoint struct {
	NodeID   string `json:"node_id"`
	NodeName string `json:"node_name,omitempty"`
	// Address is host:port, e.g. "10.97.0.11:4701".
	Address      string    `json:"address"`
	RegisteredAt time.Time `json:"registered_at"`
}

// Host returns the host part of e.Address.
func (e *Endpoint) Host() string {
	host, _, err := net.SplitHostPort(e.Address)
	if err != nil {
		return e.Address
	}
	return host
}

// EndpointKey returns the KV key of the endpoint of nodeID.
func (c *Catalog) EndpointKey(nodeID string) string { return sdk.PrefixDrivers + nodeID }

// HoldEndpoint records e under its node's key, held by a session, until ctx
// ends (see Hold): the endpoint of a node whose driver stopped or died
// disappears.
func (c *Catalog) HoldEndpoint(ctx context.Context, e Endpoint) error {
	if err := CheckName("node ID", e.NodeID); err != nil {
		return fmt.Errorf("catalog: endpoint: %w", err)
	}
	if _, _, err := net.SplitHostPort(e.Address); err != nil {
		return fmt.Errorf("catalog: endpoint of %s: address %q: %w", e.NodeID, e.Address, err)
	}
	e.RegisteredAt = time.Now().UTC()
	value, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("catalog: endpoint of %s: encode: %w", e.NodeID, err)
	}
	logger := c.logger.With("node_id", e.NodeID, "address", e.Address)
	Hold(ctx, c.client, "ferry-driver-"+e.NodeID, c.EndpointKey(e.NodeID), value, endpointTTL, logger)
	return nil
}

// GetEndpoint returns the endpoint of nodeID, or an error matching
// ErrNotFound when that node's driver serves none (not running, or no
// transfer configured).
func (c *Catalog) GetEndpoint(ctx context.Context, nodeID string) (*Endpoint, error) {
	if err := CheckName("node ID", nodeID); err != nil {
		return nil, fmt.Errorf("catalog: get endpoint: %w", err)
	}
	key := c.EndpointKey(nodeID)
	pair, err := c.getPair(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("catalog: get endpoint %s: %w", key, err)
	}
	var e Endpoint
	if err := json.Unmarshal(pair.Value, &e); err != nil {
		return nil, fmt.Errorf("catalog: get endpoint %s: decode: %w", key, err)
	}
	if e.NodeID != nodeID {
		return nil, fmt.Errorf("catalog: get endpoint %s: record names node %q", key, e.NodeID)
	}
	return &e, nil
}
