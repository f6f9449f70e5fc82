package rebalance

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Holder is the value of the planner's lock key: who plans.
type Holder struct {
	NodeID   string    `json:"node_id"`
	NodeName string    `json:"node_name"`
	AllocID  string    `json:"alloc_id,omitempty"`
	Address  string    `json:"address,omitempty"` // the agent's HTTP address
	Since    time.Time `json:"since"`
}

// Leader campaigns for the planner's Consul lock. Every companion agent
// runs one; the agent that holds the lock plans and acts, the others wait.
type Leader struct {
	Consul *api.Client
	Key    string // e.g. "ferry/leader"
	Holder Holder
	// TTL of the session that holds the lock: an agent that dies without
	// releasing it loses it within about twice this.
	TTL time.Duration
	// LockDelay keeps the lock from being taken again this long after its
	// session was invalidated. Fencing makes a short delay safe.
	LockDelay time.Duration
	Logger    hclog.Logger
}

// Run campaigns until ctx ends. Each time this agent acquires the lock,
// lead runs with a context that ends as soon as the lock is lost, and a
// fence for the writes that start moves: a planner that lost its lock can
// never start a move again, even before it notices.
func (l *Leader) Run(ctx context.Context, lead func(ctx context.Context, fence *migrate.Fence)) error {
	ttl := l.TTL
	if ttl < 10*time.Second {
		ttl = 10 * time.Second // Consul's minimum
	}
	backoff := time.Second
	for ctx.Err() == nil {
		err := l.term(ctx, ttl, lead)
		if err == nil || ctx.Err() != nil {
			backoff = time.Second
			continue
		}
		l.Logger.Warn("planner election", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	return nil
}

// term is one session: campaign, lead while the lock holds, step down.
func (l *Leader) term(ctx context.Context, ttl time.Duration, lead func(context.Context, *migrate.Fence)) error {
	sessions := l.Consul.Session()
	sid, _, err := sessions.Create(&api.SessionEntry{
		Name:      "ferry-planner " + l.Holder.NodeName,
		TTL:       ttl.String(),
		Behavior:  api.SessionBehaviorRelease,
		LockDelay: l.LockDelay,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	// Renewal stops, and the session is destroyed, when done closes.
	done := make(chan struct{})
	renewed := make(chan error, 1)
	go func() { renewed <- sessions.RenewPeriodic(ttl.String(), sid, nil, done) }()
	defer func() {
		close(done)
		<-renewed
	}()

	holder := l.Holder
	holder.Since = time.Now().UTC()
	value, err := json.Marshal(holder)
	if err != nil {
		return fmt.Errorf("encode holder: %w", err)
	}
	// A short wait per blocking query lets a waiting agent stop promptly.
	lock, err := l.Consul.LockOpts(&api.LockOptions{Key: l.Key, Value: value, Session: sid, MonitorRetries: 3, LockWaitTime: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("lock %s: %w", l.Key, err)
	}
	// Stop waiting when ctx ends or the session can no longer be renewed.
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case err := <-renewed:
			renewed <- err // for the deferred receive
		case <-done:
		}
		close(stop)
	}()
	lost, err := lock.Lock(stop)
	if err != nil {
		return fmt.Errorf("acquire %s: %w", l.Key, err)
	}
	if lost == nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("session %s ended before %s was acquired", sid, l.Key)
	}

	l.Logger.Info("planner lock acquired: this agent plans", "key", l.Key, "session", sid)
	// Say since when this agent leads, rather than since it campaigned.
	holder.Since = time.Now().UTC()
	if value, err := json.Marshal(holder); err == nil {
		if _, _, err := l.Consul.KV().Acquire(&api.KVPair{Key: l.Key, Value: value, Session: sid, Flags: api.LockFlagValue}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			l.Logger.Debug("update planner holder", "error", err)
		}
	}
	lctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-lost:
			l.Logger.Warn("planner lock lost", "key", l.Key)
		case <-lctx.Done():
		}
		cancel()
	}()
	lead(lctx, &migrate.Fence{Key: l.Key, Session: sid})
	cancel()
	if err := lock.Unlock(); err != nil && err != api.ErrLockNotHeld {
		l.Logger.Warn("release planner lock", "key", l.Key, "error", err)
	}
	l.Logger.Info("planner lock released", "key", l.Key)
	return nil
}

// ReadHolder returns who holds the planner's lock, or nil when nobody does.
func ReadHolder(ctx context.Context, consul *api.Client, key string) (*Holder, error) {
	pair, _, err := consul.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil || pair.Session == "" {
		return nil, nil
	}
	var h Holder
	if err := json.Unmarshal(pair.Value, &h); err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	return &h, nil
}
