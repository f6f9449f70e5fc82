package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Record is one requested or finished live migration of an allocation
// (written by `ferry-companion migrate` and the rebalancer), kept as JSON at
// sdk.PrefixMigrations<ID>.
type Record struct {
	ID         string `json:"id"`
	AllocID    string `json:"alloc_id"`
	JobID      string `json:"job_id,omitempty"`
	SourceNode string `json:"source_node,omitempty"`
	TargetNode string `json:"target_node,omitempty"`
	// Node IDs, set as soon as they are known (the target once chosen).
	SourceNodeID string `json:"source_node_id,omitempty"`
	TargetNodeID string `json:"target_node_id,omitempty"`
	// Kind is "live" (checkpoint and restore) or "restart"; empty for
	// moves requested without a plan.
	Kind string `json:"kind,omitempty"`
	// What the allocation reserves: a move in flight holds it on its target.
	CPU      float64 `json:"cpu_mhz,omitempty"`
	MemoryMB float64 `json:"memory_mb,omitempty"`
	// Deadline is when the mover gives up; a record still in progress
	// well after it was abandoned by a mover that died.
	Deadline time.Time `json:"deadline,omitempty"`
	// What the mover changed to steer the replacement, and must undo:
	// the source made ineligible, the target given the steering metadata.
	// Each is recorded before the change is made, so a record may name a
	// change its mover died before making; undoing it is harmless.
	SourceMadeIneligible bool `json:"source_made_ineligible,omitempty"`
	TargetMarked         bool `json:"target_marked,omitempty"`
	// AllocStopped is recorded before the mover stops the allocation: a
	// move abandoned without it left the allocation running on its source.
	AllocStopped bool   `json:"alloc_stopped,omitempty"`
	NewAllocID   string `json:"new_alloc_id,omitempty"`
	// Result is ResultInProgress while the migration runs.
	Result     string        `json:"result,omitempty"`
	Reason     string        `json:"reason,omitempty"`
	Downtime   time.Duration `json:"downtime,omitempty"`
	Bytes      int64         `json:"bytes,omitempty"`
	StartedAt  time.Time     `json:"started_at"`
	FinishedAt time.Time     `json:"finished_at"`
}

// Records keeps migration records in Consul KV under sdk.PrefixMigrations.
type Records struct {
	Consul *consul.Client
	Logger hclog.Logger // nil discards
}

func (s *Records) logger() hclog.Logger {
	if s.Logger == nil {
		return hclog.NewNullLogger()
	}
	return s.Logger
}

// key is the KV key of record id.
func key(id string) string { return sdk.PrefixMigrations + id }

// Put creates or overwrites m's record (m.ID must be set), only while
// fence's session holds its lock (any time when fence is nil); otherwise it
// returns an error matching ErrFenced and writes nothing. It sets
// m.StartedAt to now when zero.
func (s *Records) Put(ctx context.Context, m *Record, fence *Fence) error {
	if m == nil {
		return errors.New("put migration: nil record")
	}
	if err := catalog.CheckName("migration ID", m.ID); err != nil {
		return fmt.Errorf("put migration: %w", err)
	}
	if m.StartedAt.IsZero() {
		m.StartedAt = time.Now().UTC()
	}
	value, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("put migration %s: encode: %w", m.ID, err)
	}
	if err := WriteFenced(ctx, s.Consul, fence, key(m.ID), value); err != nil {
		return fmt.Errorf("put migration %s: %w", key(m.ID), err)
	}
	s.logger().Debug("migration written", "migration_id", m.ID, "alloc_id", m.AllocID, "result", m.Result)
	return nil
}

// Get returns record id, or an error matching catalog.ErrNotFound.
func (s *Records) Get(ctx context.Context, id string) (*Record, error) {
	if err := catalog.CheckName("migration ID", id); err != nil {
		return nil, fmt.Errorf("get migration: %w", err)
	}
	pair, _, err := s.Consul.KV().Get(key(id), (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("get migration %s: %w", key(id), err)
	}
	if pair == nil {
		return nil, fmt.Errorf("get migration %s: %w", key(id), catalog.ErrNotFound)
	}
	var m Record
	if err := json.Unmarshal(pair.Value, &m); err != nil {
		return nil, fmt.Errorf("get migration %s: decode: %w", key(id), err)
	}
	return &m, nil
}

// Delete removes record id; a missing one is not an error.
func (s *Records) Delete(ctx context.Context, id string) error {
	if err := catalog.CheckName("migration ID", id); err != nil {
		return fmt.Errorf("delete migration: %w", err)
	}
	if _, err := s.Consul.KV().Delete(key(id), (&consul.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("delete migration %s: %w", key(id), err)
	}
	return nil
}

// List returns every record, oldest first (by StartedAt, then ID).
// Undecodable entries are skipped with a warning.
func (s *Records) List(ctx context.Context) ([]*Record, error) {
	pairs, _, err := s.Consul.KV().List(sdk.PrefixMigrations, (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list migrations %s: %w", sdk.PrefixMigrations, err)
	}
	out := make([]*Record, 0, len(pairs))
	for _, pair := range pairs {
		var m Record
		if err := json.Unmarshal(pair.Value, &m); err != nil {
			s.logger().Warn("skipping undecodable migration record", "key", pair.Key, "error", err)
			continue
		}
		out = append(out, &m)
	}
	slices.SortFunc(out, func(a, b *Record) int {
		if n := a.StartedAt.Compare(b.StartedAt); n != 0 {
			return n
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}
