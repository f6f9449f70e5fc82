package load

import (
	"context"
	"errors"
	"fmt"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// Consul's bounds on a session's TTL.
const (
	minSessionTTL = 10 * time.Second
	maxSessionTTL = 24 * time.Hour
)

// SessionTTL is the session TTL for records published every interval: three
// intervals, so that one or two missed publishes do not drop the record, and
// at least Consul's minimum of 10s.
func SessionTTL(interval time.Duration) time.Duration {
	return clampTTL(3 * interval)
}

func clampTTL(ttl time.Duration) time.Duration {
	return min(max(ttl, minSessionTTL), maxSessionTTL)
}

// createSession creates a TTL session whose invalidation deletes the keys it
// holds. Lock delay is 0, so a new session (a restarted agent) can take the
// key at once; consul/api's Session().Create cannot send a zero lock delay
// (it leaves zero out, and Consul defaults to 15s), hence the raw request.
func createSession(ctx context.Context, c *consulapi.Client, name string, ttl time.Duration) (string, error) {
	body := map[string]any{
		"Name":      name,
		"TTL":       ttl.String(),
		"Behavior":  consulapi.SessionBehaviorDelete,
		"LockDelay": "0s",
	}
	var out struct{ ID string }
	if _, err := c.Raw().Write("/v1/session/create", body, &out, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	if out.ID == "" {
		return "", errors.New("create session: Consul returned no session ID")
	}
	return out.ID, nil
}

// renewSession renews the session's TTL; ok is false if Consul no longer
// knows the session (it expired, or was destroyed).
func renewSession(ctx context.Context, c *consulapi.Client, id string) (ok bool, err error) {
	entry, _, err := c.Session().Renew(id, (&consulapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("renew session %s: %w", id, err)
	}
	return entry != nil, nil
}

// destroySession invalidates the session, which deletes the keys it holds.
func destroySession(ctx context.Context, c *consulapi.Client, id string) error {
	if _, err := c.Session().Destroy(id, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("destroy session %s: %w", id, err)
	}
	return nil
}
