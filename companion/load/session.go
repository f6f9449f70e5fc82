package load

import (
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
)

// SessionTTL is the session TTL for records published every interval: three
// intervals, so that one or two missed publishes do not drop the record, and
// at least Consul's minimum of 10s.
func SessionTTL(interval time.Duration) time.Duration {
	return catalog.ClampTTL(3 * interval)
}
