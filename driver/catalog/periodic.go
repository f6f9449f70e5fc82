package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/consul/api"
)

// Periodic is the catalogue entry of one task's periodic checkpoints
// (checkpoint.interval), at sdk.PrefixPeriodic<alloc ID>/<task>: written by
// the node that runs the task after each checkpoint, read by the node that
// runs its replacement once Nomad lost the task's node.
type Periodic struct {
	AllocID   string `json:"alloc_id"`
	Task      string `json:"task"`
	JobID     string `json:"job_id,omitempty"`
	Namespace string `json:"namespace,omitempty"`

	NodeID   string `json:"node_id"`
	NodeName string `json:"node_name,omitempty"`

	ImageRef    string  `json:"image_ref,omitempty"`
	ImageDigest string  `json:"image_digest,omitempty"`
	Platform    string  `json:"platform,omitempty"`
	Network     Network `json:"network"`

	// Checkpoints are the newest ones, oldest first.
	Checkpoints []PeriodicCheckpoint `json:"checkpoints"`
	UpdatedAt   time.Time            `json:"updated_at"`
}

// PeriodicCheckpoint is one periodic checkpoint of a task.
type PeriodicCheckpoint struct {
	// Name is its directory's name: the UTC time it was taken.
	Name    string    `json:"name"`
	TakenAt time.Time `json:"taken_at"`
	Bytes   int64     `json:"bytes"`
	// ManifestSHA256 is the sha256 (hex) of its manifest, which the node
	// restoring it checks first.
	ManifestSHA256 string `json:"manifest_sha256"`
	// Frozen is how long the task was paused for it.
	Frozen time.Duration `json:"frozen"`
	// Copies are its copies off the node, each complete and synced;
	// CopyError is why it has none, when copying it failed.
	Copies    []Copy `json:"copies,omitempty"`
	CopyError string `json:"copy_error,omitempty"`
}

// Copy is where a periodic checkpoint is kept off its node.
type Copy struct {
	// Where is CopySharedDir: the shared checkpoint_dir every node mounts.
	Where string `json:"where"`
	// Took is how long copying it took.
	Took        time.Duration `json:"took"`
	CompletedAt time.Time     `json:"completed_at"`
}

// CopySharedDir is a copy in the shared checkpoint_dir.
const CopySharedDir = "checkpoint_dir"

// Newest returns the newest of p's checkpoints with a copy off its node, and
// the newest one of all; either may be nil.
func (p *Periodic) Newest() (copied, newest *PeriodicCheckpoint) {
	for i := len(p.Checkpoints) - 1; i >= 0; i-- {
		c := &p.Checkpoints[i]
		if newest == nil {
			newest = c
		}
		if len(c.Copies) > 0 {
			return c, newest
		}
	}
	return nil, newest
}

// Restorable is the record a replacement restores c from: ready, as if p's
// node had checkpointed the task for a move. It is never stored.
func (p *Periodic) Restorable(c *PeriodicCheckpoint) *Record {
	return &Record{
		AllocID:        p.AllocID,
		Task:           p.Task,
		JobID:          p.JobID,
		Namespace:      p.Namespace,
		SourceNodeID:   p.NodeID,
		SourceNodeName: p.NodeName,
		State:          StateReady,
		ImageRef:       p.ImageRef,
		ImageDigest:    p.ImageDigest,
		Platform:       p.Platform,
		Bytes:          c.Bytes,
		ManifestSHA256: c.ManifestSHA256,
		Shared:         true,
		Periodic:       c.Name,
		Network:        p.Network,
		CreatedAt:      c.TakenAt,
	}
}

// PutPeriodic writes p, setting its UpdatedAt.
func (c *Catalog) PutPeriodic(ctx context.Context, p *Periodic) error {
	key, err := taskKey(sdk.PrefixPeriodic, p.AllocID, p.Task)
	if err != nil {
		return err
	}
	p.UpdatedAt = time.Now().UTC()
	value, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("catalog: put %s: encode: %w", key, err)
	}
	err = c.retry(ctx, "put", key, func() error {
		_, err := c.client.KV().Put(&api.KVPair{Key: key, Value: value}, (&api.WriteOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog: put %s: %w", key, err)
	}
	return nil
}

// GetPeriodic reads the periodic checkpoints of allocID's task; none
// recorded is ErrNotFound.
func (c *Catalog) GetPeriodic(ctx context.Context, allocID, task string) (*Periodic, error) {
	key, err := taskKey(sdk.PrefixPeriodic, allocID, task)
	if err != nil {
		return nil, err
	}
	pair, err := c.getPair(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("catalog: get %s: %w", key, err)
	}
	var p Periodic
	if err := json.Unmarshal(pair.Value, &p); err != nil {
		return nil, fmt.Errorf("catalog: get %s: decode: %w", key, err)
	}
	if p.AllocID != allocID || p.Task != task {
		return nil, fmt.Errorf("catalog: get %s: the record names %s/%s", key, p.AllocID, p.Task)
	}
	return &p, nil
}

// DeletePeriodic removes the periodic checkpoints record of allocID's
// task; a missing one is not an error.
func (c *Catalog) DeletePeriodic(ctx context.Context, allocID, task string) error {
	key, err := taskKey(sdk.PrefixPeriodic, allocID, task)
	if err != nil {
		return err
	}
	return c.deleteKey(ctx, key)
}

// ListPeriodic returns every task's periodic record; entries that do not
// decode are skipped with a warning.
func (c *Catalog) ListPeriodic(ctx context.Context) ([]*Periodic, error) {
	pairs, _, err := c.client.KV().List(sdk.PrefixPeriodic, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("catalog: list %s: %w", sdk.PrefixPeriodic, err)
	}
	out := make([]*Periodic, 0, len(pairs))
	for _, pair := range pairs {
		var p Periodic
		if err := json.Unmarshal(pair.Value, &p); err != nil || pair.Key != sdk.PrefixPeriodic+p.AllocID+"/"+p.Task {
			c.logger.Warn("skipping entry that is not a periodic record", "key", pair.Key, "error", err)
			continue
		}
		out = append(out, &p)
	}
	return out, nil
}
