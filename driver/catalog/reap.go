package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"

	"github.com/hashicorp/consul/api"
)

// Default ages after which a checkpoint record, and its checkpoint, are
// reaped (see ReapPolicy).
const (
	// DefaultReapStale: a move takes at most a dump (10 minutes), a push
	// or fetch and a restore (restore_wait, then another 10 minutes): a
	// record still checkpointing or restoring an hour after its last
	// change belongs to a move that died.
	DefaultReapStale = time.Hour
	// DefaultReapUnclaimed: a ready checkpoint waits a day for a
	// destination that restores it later (a batch allocation rescheduled
	// with a delay, a fetch after a cut push).
	DefaultReapUnclaimed = 24 * time.Hour
	// DefaultReapRetention: a failed checkpoint or restore is kept a week
	// for the operator to look at.
	DefaultReapRetention = 7 * 24 * time.Hour
)

// ReapPolicy says, by state, how long after its last change (UpdatedAt)
// a checkpoint record is reaped with its checkpoint. The source node reaps
// its own records and checkpoints; the companion's planner reaps the
// records whose source node is gone. Each record carries the policy of its
// source's driver when it was written (Record.Reap, its plugin options gc
// { checkpoints { ... } }): every reaper, and the companion's status, reads
// the ages there. In JSON the ages are nanoseconds.
type ReapPolicy struct {
	Stale     time.Duration `json:"stale"`     // checkpointing, restoring, restoring_lazy
	Unclaimed time.Duration `json:"unclaimed"` // ready
	Retention time.Duration `json:"failed"`    // failed
}

// DefaultReapPolicy is the policy with the default ages.
func DefaultReapPolicy() ReapPolicy {
	return ReapPolicy{Stale: DefaultReapStale, Unclaimed: DefaultReapUnclaimed, Retention: DefaultReapRetention}
}

// Age is how long after its last change a record in state s is kept:
// restored and cold_start records are done with (their source removes
// them at once), and an unknown state is never reaped (ok is false).
func (p ReapPolicy) Age(s State) (age time.Duration, ok bool) {
	switch s {
	case StateCheckpointing, StateRestoring, StateRestoringLazy:
		return p.Stale, true
	case StateReady:
		return p.Unclaimed, true
	case StateFailed:
		return p.Retention, true
	case StateRestored, StateColdStart:
		return 0, true
	}
	return 0, false
}

// ReapPolicy is the policy r is reaped by: the one its source recorded,
// or the defaults for a record written without one.
func (r *Record) ReapPolicy() ReapPolicy {
	if r.Reap != nil {
		return *r.Reap
	}
	return DefaultReapPolicy()
}

// ReapAt is when r is due for reaping, by its own policy (ok is false for
// a state never reaped).
func (r *Record) ReapAt() (at time.Time, ok bool) {
	age, ok := r.ReapPolicy().Age(r.State)
	if !ok {
		return time.Time{}, false
	}
	return r.Changed().Add(age), true
}

// Due reports whether r is due for reaping at now, by its own policy.
func (r *Record) Due(now time.Time) bool {
	at, ok := r.ReapAt()
	return ok && !now.Before(at)
}

// Changed is when r last changed: UpdatedAt, or CreatedAt for a record
// written without it (the zero time, long ago, when neither is set).
func (r *Record) Changed() time.Time {
	if !r.UpdatedAt.IsZero() {
		return r.UpdatedAt
	}
	return r.CreatedAt
}

// DeleteUnchanged removes r's record only if it is still as r was read
// (r.ModifyIndex): a record reaped by age is never removed just as a
// destination claims it. It reports whether the record was removed, or is
// already gone.
func (c *Catalog) DeleteUnchanged(ctx context.Context, r *Record) (bool, error) {
	key, err := c.checkedKey(r.AllocID, r.Task)
	if err != nil {
		return false, err
	}
	if r.ModifyIndex == 0 {
		return false, fmt.Errorf("catalog: delete %s: the record was not read from Consul", key)
	}
	ok, _, err := c.client.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: r.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("catalog: delete %s: %w", key, err)
	}
	if !ok {
		// Changed since, or gone: only the latter counts as removed.
		pair, _, err := c.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return false, fmt.Errorf("catalog: read %s: %w", key, err)
		}
		return pair == nil, nil
	}
	return true, nil
}

// PrefixReaped is where each reaper (a node's driver, by node ID, or the
// companion's planner, ReaperPlanner) keeps the log of what it reaped
// lately, for `ferry-companion status`.
const PrefixReaped = sdk.PrefixReaped

// ReaperPlanner is the reaper name of the companion's planner.
const ReaperPlanner = "planner"

// ReapedWindow is how long a reaper's log keeps what it reaped; at most
// reapedMax entries are kept.
const (
	ReapedWindow = 24 * time.Hour
	reapedMax    = 200
)

// Reaped is one record reaped, with its checkpoint.
type Reaped struct {
	AllocID    string    `json:"alloc_id"`
	Task       string    `json:"task"`
	State      State     `json:"state"` // the state it was reaped in
	SourceNode string    `json:"source_node,omitempty"`
	Why        string    `json:"why,omitempty"`
	At         time.Time `json:"at"`
}

// ReapLog is what one reaper reaped within ReapedWindow, oldest first.
type ReapLog struct {
	Reaper string   `json:"reaper"`
	Name   string   `json:"name,omitempty"` // the reaper's node name
	Reaped []Reaped `json:"reaped"`
}

// AppendReaped adds entries to reaper's log in Consul, dropping what is
// older than ReapedWindow.
func AppendReaped(ctx context.Context, client *api.Client, reaper, name string, entries []Reaped, now time.Time) error {
	if err := CheckName("reaper", reaper); err != nil {
		return fmt.Errorf("reap log: %w", err)
	}
	key := PrefixReaped + reaper
	for attempt := 0; ; attempt++ {
		pair, _, err := client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("reap log %s: %w", key, err)
		}
		log := ReapLog{Reaper: reaper}
		var index uint64
		if pair != nil {
			index = pair.ModifyIndex
			if err := json.Unmarshal(pair.Value, &log); err != nil {
				log = ReapLog{Reaper: reaper} // start over
			}
		}
		log.Name = name
		log.Reaped = append(log.Reaped, entries...)
		log.Reaped = slices.DeleteFunc(log.Reaped, func(e Reaped) bool { return now.Sub(e.At) > ReapedWindow })
		if n := len(log.Reaped); n > reapedMax {
			log.Reaped = log.Reaped[n-reapedMax:]
		}
		value, err := json.Marshal(log)
		if err != nil {
			return fmt.Errorf("reap log %s: encode: %w", key, err)
		}
		ok, _, err := client.KV().CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: index}, (&api.WriteOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			return fmt.Errorf("reap log %s: %w", key, err)
		case ok:
			return nil
		case attempt >= 3:
			return fmt.Errorf("reap log %s: %w", key, errors.New("changed by another writer at every attempt"))
		}
	}
}

// ReadReaped returns every reaper's log; undecodable ones are skipped.
func ReadReaped(ctx context.Context, client *api.Client) ([]ReapLog, error) {
	pairs, _, err := client.KV().List(PrefixReaped, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("reap logs %s: %w", PrefixReaped, err)
	}
	logs := make([]ReapLog, 0, len(pairs))
	for _, pair := range pairs {
		var log ReapLog
		if json.Unmarshal(pair.Value, &log) == nil {
			logs = append(logs, log)
		}
	}
	return logs, nil
}
