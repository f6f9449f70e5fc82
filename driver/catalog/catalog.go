package catalog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

var (
	// ErrNotFound: no record under that key.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a transition found the record in a state it may not
	// leave that way (see StateError), or kept losing the check-and-set to
	// concurrent writers.
	ErrConflict = errors.New("conflict")

	// errRolledBack: Consul answered, and refused a transaction.
	errRolledBack = errors.New("transaction rolled back")
)

// StateError is returned (wrapped) by Transition when the record is not in
// one of the states the transition starts from. It matches ErrConflict.
type StateError struct {
	// Current is the record as found.
	Current *Record
	// From are the states the transition accepts.
	From []State
}

func (e *StateError) Error() string {
	return fmt.Sprintf("state is %s, want one of %v: %v", e.Current.State, e.From, ErrConflict)
}

// Unwrap makes errors.Is(err, ErrConflict) hold.
func (e *StateError) Unwrap() error { return ErrConflict }

const (
	// waitTime is how long one blocking query may wait in Consul.
	waitTime = 2 * time.Minute
	// maxCASAttempts bounds Transition's read-modify-write retries.
	maxCASAttempts = 32
	// maxBackoff caps the delay between retries of failed blocking queries.
	maxBackoff = 5 * time.Second
)

// Catalog keeps one Record per task of an allocation under prefix in Consul
// KV, at <prefix><alloc ID>/<task>. Records are JSON. A Catalog is safe for
// concurrent use.
type Catalog struct {
	client *api.Client
	prefix string
	logger hclog.Logger
}

// New returns a Catalog storing records under prefix (sdk.PrefixCheckpoints
// when empty) through client. It logs to logger as given (the caller names
// it); a nil logger discards logs.
func New(client *api.Client, prefix string, logger hclog.Logger) *Catalog {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Catalog{
		client: client,
		prefix: normalizePrefix(prefix, sdk.PrefixCheckpoints),
		logger: logger,
	}
}

// NewFromConfig returns a Catalog under sdk.PrefixCheckpoints talking to the Consul
// agent at address ("host:port" or a URL such as "https://host:8501") with
// the ACL token token. Empty values fall back to consul/api's defaults, which
// read CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT and the like.
func NewFromConfig(address, token string, logger hclog.Logger) (*Catalog, error) {
	cfg := api.DefaultConfig()
	if address != "" {
		cfg.Address = address
	}
	if token != "" {
		cfg.Token = token
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("catalog: consul client for %s: %w", cfg.Address, err)
	}
	return New(client, "", logger), nil
}

// Prefix returns the KV prefix of checkpoint records, ending in "/".
func (c *Catalog) Prefix() string { return c.prefix }

// Client returns the Consul client the catalog uses.
func (c *Catalog) Client() *api.Client { return c.client }

func normalizePrefix(prefix, def string) string {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return def
	}
	return prefix + "/"
}

// Key returns the KV key of the record of allocID's task.
func (c *Catalog) Key(allocID, task string) string {
	return c.prefix + allocID + "/" + task
}

func (c *Catalog) checkedKey(allocID, task string) (string, error) {
	return taskKey(c.prefix, allocID, task)
}

// taskKey is the KV key under prefix of allocID's task, once both are
// names a key may hold.
func taskKey(prefix, allocID, task string) (string, error) {
	if err := CheckName("allocation ID", allocID); err != nil {
		return "", fmt.Errorf("catalog: %w", err)
	}
	if err := CheckName("task name", task); err != nil {
		return "", fmt.Errorf("catalog: %w", err)
	}
	return prefix + allocID + "/" + task, nil
}

// Put creates or overwrites r's record. It sets r.UpdatedAt (and
// r.CreatedAt when zero) to now and r.ModifyIndex to the new entry's index.
func (c *Catalog) Put(ctx context.Context, r *Record) error {
	if r == nil {
		return errors.New("catalog: put: nil record")
	}
	key, err := c.checkedKey(r.AllocID, r.Task)
	if err != nil {
		return err
	}
	if !r.State.Valid() {
		return fmt.Errorf("catalog: put %s: invalid state %q", key, r.State)
	}
	now := time.Now().UTC()
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	r.UpdatedAt = now
	value, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("catalog: put %s: encode: %w", key, err)
	}
	var index uint64
	err = c.retry(ctx, "put", key, func() (err error) {
		_, index, err = c.write(ctx, &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: value})
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog: put %s: %w", key, err)
	}
	r.ModifyIndex = index
	c.logger.Debug("record written", "alloc_id", r.AllocID, "task", r.Task, "state", r.State, "index", index)
	return nil
}

// write runs one KV operation as a transaction, which (unlike a plain KV
// write) reports the entry's new modify index. ok is false when a
// check-and-set lost.
func (c *Catalog) write(ctx context.Context, op *api.KVTxnOp) (ok bool, index uint64, err error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	ok, resp, _, err := c.client.Txn().Txn(api.TxnOps{{KV: op}}, q)
	if err != nil {
		return false, 0, err
	}
	if !ok {
		if op.Verb == api.KVCAS {
			return false, 0, nil
		}
		return false, 0, fmt.Errorf("%w: %s", errRolledBack, TxnReasons(resp))
	}
	if resp == nil || len(resp.Results) != 1 || resp.Results[0].KV == nil {
		return false, 0, errors.New("transaction returned no result")
	}
	return true, resp.Results[0].KV.ModifyIndex, nil
}

// TxnReasons says why Consul rolled a transaction back.
func TxnReasons(resp *api.TxnResponse) string {
	if resp == nil || len(resp.Errors) == 0 {
		return "no reason given"
	}
	msgs := make([]string, 0, len(resp.Errors))
	for _, e := range resp.Errors {
		msgs = append(msgs, e.What)
	}
	return strings.Join(msgs, "; ")
}

// Get returns the record of allocID's task, or an error matching ErrNotFound.
func (c *Catalog) Get(ctx context.Context, allocID, task string) (*Record, error) {
	key, err := c.checkedKey(allocID, task)
	if err != nil {
		return nil, err
	}
	r, err := c.get(ctx, key, allocID, task)
	if err != nil {
		return nil, fmt.Errorf("catalog: get %s: %w", key, err)
	}
	return r, nil
}

func (c *Catalog) get(ctx context.Context, key, allocID, task string) (*Record, error) {
	pair, err := c.getPair(ctx, key)
	if err != nil {
		return nil, err
	}
	return decodeRecord(pair, allocID, task)
}

// getPair reads key, retrying while Consul is unreachable (see retry); a
// missing key is ErrNotFound.
func (c *Catalog) getPair(ctx context.Context, key string) (*api.KVPair, error) {
	var pair *api.KVPair
	err := c.retry(ctx, "get", key, func() (err error) {
		pair, _, err = c.client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, err
	}
	if pair == nil {
		return nil, ErrNotFound
	}
	return pair, nil
}

func decodeRecord(pair *api.KVPair, allocID, task string) (*Record, error) {
	var r Record
	if err := json.Unmarshal(pair.Value, &r); err != nil {
		return nil, fmt.Errorf("decode record at index %d: %w", pair.ModifyIndex, err)
	}
	if r.AllocID != allocID || r.Task != task {
		return nil, fmt.Errorf("record at index %d names %s/%s", pair.ModifyIndex, r.AllocID, r.Task)
	}
	r.ModifyIndex = pair.ModifyIndex
	return &r, nil
}

// Transition changes the record of allocID's task atomically: it reads the
// record, checks that its state is one of from, lets mutate change a copy
// (typically State and the fields that go with it; mutate must not change
// AllocID or Task) and writes the copy back with a check-and-set on the
// index it read. When another writer got in between, it starts over, so
// mutate may run more than once and must only change the record it is
// given.
//
// It returns the record as written. When the record is in a state not in
// from (including after losing a race to a writer that moved it on), the
// error is a *StateError matching ErrConflict; when the record does not
// exist, it matches ErrNotFound; an error from mutate is returned wrapped.
func (c *Catalog) Transition(ctx context.Context, allocID, task string, from []State, mutate func(*Record) error) (*Record, error) {
	key, err := c.checkedKey(allocID, task)
	if err != nil {
		return nil, err
	}
	if mutate == nil {
		return nil, fmt.Errorf("catalog: transition %s: nil mutate function", key)
	}
	// written is what the last write sent when its answer was lost: if
	// the record reads so now, that write went through.
	var written []byte
	for attempt := 1; ; attempt++ {
		pair, err := c.getPair(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("catalog: transition %s: %w", key, err)
		}
		cur, err := decodeRecord(pair, allocID, task)
		if err != nil {
			return nil, fmt.Errorf("catalog: transition %s: %w", key, err)
		}
		if written != nil && bytes.Equal(pair.Value, written) {
			c.logger.Debug("record transitioned; the answer to the write was lost", "alloc_id", allocID, "task", task,
				"to", cur.State, "index", cur.ModifyIndex, "attempt", attempt)
			return cur, nil
		}
		written = nil
		if !slices.Contains(from, cur.State) {
			return nil, fmt.Errorf("catalog: transition %s: %w", key, &StateError{Current: cur, From: slices.Clone(from)})
		}
		next := cur.Clone()
		if err := mutate(next); err != nil {
			return nil, fmt.Errorf("catalog: transition %s from %s: %w", key, cur.State, err)
		}
		if next.AllocID != allocID || next.Task != task {
			return nil, fmt.Errorf("catalog: transition %s: mutate renamed the record to %s/%s", key, next.AllocID, next.Task)
		}
		if !next.State.Valid() {
			return nil, fmt.Errorf("catalog: transition %s: invalid state %q", key, next.State)
		}
		next.UpdatedAt = time.Now().UTC()
		if next.CreatedAt.IsZero() {
			next.CreatedAt = next.UpdatedAt
		}
		value, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("catalog: transition %s: encode: %w", key, err)
		}
		ok, index, err := c.write(ctx, &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: value, Index: cur.ModifyIndex})
		if err != nil {
			if !transient(ctx, err) {
				return nil, fmt.Errorf("catalog: transition %s: %w", key, err)
			}
			// Consul may have applied the write before the connection
			// failed: read the record again and look.
			c.logger.Warn("Consul unreachable, retrying", "op", "transition", "key", key, "error", err)
			written = value
			if err := sleep(ctx, retryBackoff(attempt)); err != nil {
				return nil, fmt.Errorf("catalog: transition %s: %w", key, err)
			}
			continue
		}
		if ok {
			next.ModifyIndex = index
			c.logger.Debug("record transitioned", "alloc_id", allocID, "task", task,
				"from", cur.State, "to", next.State, "index", index, "attempt", attempt)
			return next, nil
		}
		if attempt >= maxCASAttempts {
			return nil, fmt.Errorf("catalog: transition %s: lost %d check-and-sets to concurrent writers: %w", key, attempt, ErrConflict)
		}
		c.logger.Debug("check-and-set lost, retrying", "alloc_id", allocID, "task", task, "index", cur.ModifyIndex, "attempt", attempt)
		// A little jitter keeps contending writers from retrying in
		// lockstep.
		if err := sleep(ctx, time.Duration(rand.Int64N(int64(10*time.Millisecond)))); err != nil {
			return nil, fmt.Errorf("catalog: transition %s: %w", key, err)
		}
	}
}

// WaitState waits, with Consul blocking queries, until the record of
// allocID's task is in one of the states want and returns it. A missing
// record is waited for too: the source may not have written it yet. Callers
// normally include the terminal states (StateFailed, StateColdStart) in want
// so that they do not wait for a checkpoint that will never come.
//
// When ctx ends first, it returns the last record seen (nil if none) with an
// error wrapping ctx's. Failed queries are retried with a backoff, except
// client errors such as a denied ACL token, which are returned at once.
func (c *Catalog) WaitState(ctx context.Context, allocID, task string, want ...State) (*Record, error) {
	key, err := c.checkedKey(allocID, task)
	if err != nil {
		return nil, err
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("catalog: wait %s: no state to wait for", key)
	}
	logger := c.logger.With("alloc_id", allocID, "task", task, "want", want)
	var (
		last    *Record
		index   uint64
		backoff time.Duration
	)
	fail := func(err error) (*Record, error) {
		seen := "no record yet"
		if last != nil {
			seen = "last state " + string(last.State)
		}
		return last, fmt.Errorf("catalog: wait %s for %v (%s): %w", key, want, seen, err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		pair, meta, err := c.blockingGet(ctx, key, index)
		if err != nil {
			if ctx.Err() != nil {
				return fail(ctx.Err())
			}
			if permanent(err) {
				return fail(err)
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), maxBackoff)
			logger.Warn("blocking query failed, retrying", "error", err, "backoff", backoff)
			// Start over with a query that answers at once.
			index = 0
			if err := sleep(ctx, backoff); err != nil {
				return fail(err)
			}
			continue
		}
		backoff = 0
		if pair != nil {
			r, err := decodeRecord(pair, allocID, task)
			if err != nil {
				return fail(err)
			}
			if last == nil || last.ModifyIndex != r.ModifyIndex {
				logger.Trace("record seen", "state", r.State, "index", r.ModifyIndex)
			}
			last = r
			if slices.Contains(want, r.State) {
				return r, nil
			}
		}
		// Consul's rules for blocking query indexes: start over when the
		// index goes backwards, and never wait on index 0.
		switch {
		case meta.LastIndex < index:
			index = 0
		case meta.LastIndex == 0:
			index = 1
		default:
			index = meta.LastIndex
		}
	}
}

// blockingGet is one blocking query, bounded locally as well so that a
// connection that silently died cannot hang it until ctx ends.
func (c *Catalog) blockingGet(ctx context.Context, key string, index uint64) (*api.KVPair, *api.QueryMeta, error) {
	// Consul adds up to WaitTime/16 of jitter.
	qctx, cancel := context.WithTimeout(ctx, waitTime+waitTime/16+30*time.Second)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: waitTime}).WithContext(qctx)
	return c.client.KV().Get(key, q)
}

// retry runs op until it succeeds, fails in a way retrying cannot help
// (see transient), or ctx ends: a Consul agent restarting, or unreachable
// for a few seconds, must not end a move whose deadline is far off. The
// caller's ctx is what bounds it. op must be safe to repeat.
func (c *Catalog) retry(ctx context.Context, op, key string, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil || !transient(ctx, err) {
			return err
		}
		c.logger.Warn("Consul unreachable, retrying", "op", op, "key", key, "attempt", attempt, "error", err)
		if serr := sleep(ctx, retryBackoff(attempt)); serr != nil {
			return fmt.Errorf("%w (gave up: %w)", err, serr)
		}
	}
}

// retryBackoff is the pause before retry attempt+1: 100ms doubling up to
// maxBackoff.
func retryBackoff(attempt int) time.Duration {
	return min(100*time.Millisecond<<min(attempt-1, 10), maxBackoff)
}

// transient reports whether err, from a Consul call made under ctx, may
// pass if tried again: ctx is still live, and Consul did not answer with a
// client error (ErrNotFound and failed checks are not errors of a call).
func transient(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !permanent(err) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrConflict) && !errors.Is(err, errRolledBack)
}

// permanent reports whether retrying err cannot help: Consul answered with a
// client error (bad request, denied token) other than rate limiting.
func permanent(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code >= 400 && se.Code < 500 && se.Code != 429
	}
	return false
}

// Delete removes the record of allocID's task. Removing a missing record is
// not an error.
func (c *Catalog) Delete(ctx context.Context, allocID, task string) error {
	key, err := c.checkedKey(allocID, task)
	if err != nil {
		return err
	}
	if err := c.deleteKey(ctx, key); err != nil {
		return err
	}
	c.logger.Debug("record deleted", "alloc_id", allocID, "task", task)
	return nil
}

// deleteKey deletes key, retrying while Consul is unreachable; a missing
// key is not an error.
func (c *Catalog) deleteKey(ctx context.Context, key string) error {
	err := c.retry(ctx, "delete", key, func() error {
		_, err := c.client.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog: delete %s: %w", key, err)
	}
	return nil
}

// List returns every record, ordered by allocation ID and task. Entries under
// the prefix that are not records (other key shapes, undecodable values) are
// skipped with a warning.
func (c *Catalog) List(ctx context.Context) ([]*Record, error) {
	records, _, err := c.ListWait(ctx, 0)
	return records, err
}

// ListWait is List as a Consul blocking query: with index > 0 it answers
// once something under the prefix changed after index (or after Consul's
// wait time), and returns the index to wait on next.
func (c *Catalog) ListWait(ctx context.Context, index uint64) ([]*Record, uint64, error) {
	q := &api.QueryOptions{WaitIndex: index}
	if index > 0 {
		q.WaitTime = waitTime
	}
	pairs, meta, err := c.client.KV().List(c.prefix, q.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("catalog: list %s: %w", c.prefix, err)
	}
	records := make([]*Record, 0, len(pairs))
	for _, pair := range pairs {
		allocID, task, ok := strings.Cut(strings.TrimPrefix(pair.Key, c.prefix), "/")
		if !ok || CheckName("allocation ID", allocID) != nil || CheckName("task name", task) != nil {
			c.logger.Warn("skipping entry that is not a checkpoint record", "key", pair.Key)
			continue
		}
		r, err := decodeRecord(pair, allocID, task)
		if err != nil {
			c.logger.Warn("skipping undecodable checkpoint record", "key", pair.Key, "error", err)
			continue
		}
		records = append(records, r)
	}
	slices.SortFunc(records, func(a, b *Record) int {
		if n := strings.Compare(a.AllocID, b.AllocID); n != 0 {
			return n
		}
		return strings.Compare(a.Task, b.Task)
	})
	next := meta.LastIndex
	if next < index {
		next = 0 // Consul's index went backwards: start over
	}
	return records, max(next, 1), nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
