package load

import "time"

// SessionTTL is the session TTL of a publisher that samples every interval
// under the default policy (the heartbeat raised to the interval if that is
// longer): see Policy.SessionTTL.
func SessionTTL(interval time.Duration) time.Duration {
	return Policy{Heartbeat: max(DefaultHeartbeat, interval)}.SessionTTL()
}

// heartbeatFor is the heartbeat of a publisher whose session lives ttl
// (already clamped): DefaultHeartbeat, or less if the TTL is shorter than
// two of them.
func heartbeatFor(ttl time.Duration) time.Duration {
	return min(DefaultHeartbeat, ttl/ttlHeartbeats)
}
