package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Consul's bounds on a session's TTL.
const (
	minSessionTTL = 10 * time.Second
	maxSessionTTL = 24 * time.Hour
)

// ClampTTL holds a session TTL within Consul's bounds of 10s to 24h.
func ClampTTL(ttl time.Duration) time.Duration {
	return min(max(ttl, minSessionTTL), maxSessionTTL)
}

// CreateSession creates a TTL session whose invalidation deletes the keys
// it holds. Lock delay is 0, so a new session (a restarted process) can
// take the key at once; consul/api's Session().Create cannot send a zero
// lock delay (it leaves zero out, and Consul defaults to 15s), hence the
// raw request.
func CreateSession(ctx context.Context, c *api.Client, name string, ttl time.Duration) (string, error) {
	body := map[string]any{
		"Name":      name,
		"TTL":       ClampTTL(ttl).String(),
		"Behavior":  api.SessionBehaviorDelete,
		"LockDelay": "0s",
	}
	var out struct{ ID string }
	if _, err := c.Raw().Write("/v1/session/create", body, &out, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	if out.ID == "" {
		return "", errors.New("create session: Consul returned no session ID")
	}
	return out.ID, nil
}

// RenewSession renews the session's TTL; ok is false if Consul no longer
// knows the session (it expired, or was destroyed).
func RenewSession(ctx context.Context, c *api.Client, id string) (ok bool, err error) {
	entry, _, err := c.Session().Renew(id, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("renew session %s: %w", id, err)
	}
	return entry != nil, nil
}

// DestroySession invalidates the session, which deletes the keys it holds.
func DestroySession(ctx context.Context, c *api.Client, id string) error {
	if _, err := c.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("destroy session %s: %w", id, err)
	}
	return nil
}

// AcquireOrTakeOver writes value at key held by session. A key still held
// by another session (that of this process's predecessor on the same
// node, which only this process may replace) is taken over: the other
// session is destroyed and the key acquired again.
func AcquireOrTakeOver(ctx context.Context, c *api.Client, key string, value []byte, session string, logger hclog.Logger) error {
	acquire := func() (bool, error) {
		ok, _, err := c.KV().Acquire(&api.KVPair{Key: key, Value: value, Session: session}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return false, fmt.Errorf("write %s: %w", key, err)
		}
		return ok, nil
	}
	if ok, err := acquire(); ok || err != nil {
		return err
	}
	pair, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%s not acquired, and cannot read its holder: %w", key, err)
	}
	if pair == nil || pair.Session == "" || pair.Session == session {
		// Freed in the meantime, or held back by a lock delay.
		return fmt.Errorf("%s not acquired (held by no other session; lock delay?)", key)
	}
	logger.Warn("key held by another session, taking it over", "key", key, "other_session", pair.Session, "session", session)
	if err := DestroySession(ctx, c, pair.Session); err != nil {
		return fmt.Errorf("take over %s: %w", key, err)
	}
	ok, err := acquire()
	switch {
	case err != nil:
		return fmt.Errorf("after taking over: %w", err)
	case !ok:
		return fmt.Errorf("%s not acquired after taking it over", key)
	}
	return nil
}

// Hold keeps value at key, held by a session with the given TTL, until ctx
// ends; then it destroys the session, which deletes the key. If Consul is
// away or forgets the session (it expired), Hold tries again with a new
// one: the key is missing meanwhile, and comes back. It returns when ctx
// ends.
func Hold(ctx context.Context, c *api.Client, name, key string, value []byte, ttl time.Duration, logger hclog.Logger) {
	ttl = ClampTTL(ttl)
	var session string
	defer func() {
		if session == "" {
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := DestroySession(dctx, c, session); err != nil {
			logger.Warn("release key", "key", key, "error", err)
		}
	}()
	wait := time.Second
	for {
		if session == "" {
			id, err := CreateSession(ctx, c, name, ttl)
			if err == nil {
				if err = AcquireOrTakeOver(ctx, c, key, value, id, logger); err != nil {
					_ = DestroySession(ctx, c, id)
				} else {
					session, wait = id, time.Second
					logger.Debug("key held", "key", key, "session", id, "ttl", ttl)
				}
			}
			if err != nil && ctx.Err() == nil {
				logger.Warn("cannot hold key in Consul yet", "key", key, "error", err, "retry_in", wait)
			}
		}
		next := ttl / 3
		if session == "" {
			next, wait = wait, min(2*wait, 30*time.Second)
		}
		if sleep(ctx, next) != nil {
			return
		}
		if session != "" {
			ok, err := RenewSession(ctx, c, session)
			switch {
			case err != nil && ctx.Err() == nil:
				logger.Warn("renew session", "key", key, "error", err)
			case err == nil && !ok:
				logger.Info("session gone, holding the key with a new one", "key", key, "session", session)
				session = ""
			}
		}
	}
}
