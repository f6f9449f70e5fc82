package load

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
)

// Defaults of Policy.
const (
	// DefaultHeartbeat is how often an agent whose load holds steady
	// writes its record and renews its session anyway.
	DefaultHeartbeat = time.Minute
	// DefaultDeadBand is the least move of a fraction of the node's
	// capacity that is written at once: 5 points of CPU or memory.
	DefaultDeadBand = 0.05
)

// Bounds of Policy.Heartbeat: Consul holds a session TTL within 10s and
// 24h, and the TTL is two heartbeats.
const (
	minHeartbeat = 5 * time.Second
	maxHeartbeat = 12 * time.Hour
)

// ttlHeartbeats is the session TTL in heartbeats: a heartbeat that fails is
// tried again at every sample for one more heartbeat before the session
// may expire.
const ttlHeartbeats = 2

// Policy says when Publisher.Offer writes a node's record. A record is
// written when a value the planner reads moved beyond the dead band since
// the record last written, and at every heartbeat whatever the load; the
// session is renewed at heartbeats only. A Consul write costs the same on
// 10 nodes as on 10,000, so an agent whose node holds steady writes twice
// a heartbeat (its record and its session's renewal) rather than twice a
// sample.
type Policy struct {
	// Heartbeat is the longest time between two writes of the record, and
	// the time between renewals of its session: a record's SampledAt is
	// at most a heartbeat (and one sample interval) old while its agent
	// runs. Zero takes DefaultHeartbeat.
	Heartbeat time.Duration
	// DeadBand is the least change of a usage fraction (online, offline,
	// or one allocation's usage, as a fraction of the node's capacity, CPU
	// and memory apart) that is written before the heartbeat; any change
	// of the allocations, their attributes or the node's capacity is
	// written at once whatever the dead band. Zero writes every change.
	DeadBand float64
}

// DefaultPolicy is DefaultHeartbeat and DefaultDeadBand.
func DefaultPolicy() Policy {
	return Policy{Heartbeat: DefaultHeartbeat, DeadBand: DefaultDeadBand}
}

// withDefaults fills a zero heartbeat.
func (p Policy) withDefaults() Policy {
	if p.Heartbeat == 0 {
		p.Heartbeat = DefaultHeartbeat
	}
	return p
}

// Validate checks the policy for an agent sampling every interval (zero
// skips the check against it) and names the field that is wrong: each
// error is a *PolicyError. A zero heartbeat is DefaultHeartbeat.
func (p Policy) Validate(interval time.Duration) error {
	p = p.withDefaults()
	var errs []error
	switch {
	case p.Heartbeat < minHeartbeat || p.Heartbeat > maxHeartbeat:
		errs = append(errs, &PolicyError{"heartbeat", fmt.Sprintf("%s must be between %s and %s (the session TTL, two heartbeats, stays within Consul's bounds)",
			p.Heartbeat, minHeartbeat, maxHeartbeat)})
	case interval > 0 && p.Heartbeat < interval:
		errs = append(errs, &PolicyError{"heartbeat", fmt.Sprintf("%s must be at least the sample interval %s: a record is written at a sample", p.Heartbeat, interval)})
	}
	if math.IsNaN(p.DeadBand) || p.DeadBand < 0 || p.DeadBand >= 1 {
		errs = append(errs, &PolicyError{"dead_band", fmt.Sprintf("%v must be a fraction of the node's capacity, at least 0 and below 1", p.DeadBand)})
	}
	return errors.Join(errs...)
}

// PolicyError is a field of a Policy that is wrong, by its name in the
// companion's configuration (sample.heartbeat, sample.dead_band).
type PolicyError struct {
	Field  string // "heartbeat" or "dead_band"
	Detail string
}

func (e *PolicyError) Error() string { return e.Field + ": " + e.Detail }

// SessionTTL is the TTL of the record's session under this policy: two
// heartbeats, within Consul's bounds. Consul invalidates a session when
// twice its TTL has passed without a renewal, so a dead agent's record
// disappears four heartbeats after its last renewal at the latest: between
// three and four heartbeats after the agent died (4 minutes with the
// default heartbeat).
func (p Policy) SessionTTL() time.Duration {
	return catalog.ClampTTL(ttlHeartbeats * p.withDefaults().Heartbeat)
}

// moved reports whether r differs from w, the record last written, by
// more than the dead band in what the planner reads: the node's name,
// source and window, its capacity, its online and offline usage as
// fractions of its capacity, and each allocation (its attributes exactly,
// its usage as a fraction of the node's capacity). SampledAt and Samples
// are not compared: the heartbeat keeps them fresh enough.
func (p Policy) moved(w, r *Record) bool {
	if w.NodeName != r.NodeName || w.Source != r.Source || w.Window != r.Window || w.Capacity != r.Capacity {
		return true
	}
	if p.beyond(w.Online, r.Online, r.Capacity) || p.beyond(w.Offline, r.Offline, r.Capacity) {
		return true
	}
	if len(w.Allocs) != len(r.Allocs) {
		return true
	}
	for i := range r.Allocs {
		a, b := w.Allocs[i], r.Allocs[i]
		if p.beyond(a.Usage, b.Usage, r.Capacity) {
			return true
		}
		a.Usage, b.Usage = Resources{}, Resources{}
		if a != b {
			return true
		}
	}
	return false
}

// beyond reports whether usage moved from a to b by at least the dead band
// of capacity, in CPU or in memory. Without a capacity to measure against,
// any change is beyond.
func (p Policy) beyond(a, b, capacity Resources) bool {
	return p.beyondOne(a.CPU, b.CPU, capacity.CPU) || p.beyondOne(a.MemoryMB, b.MemoryMB, capacity.MemoryMB)
}

func (p Policy) beyondOne(a, b, capacity float64) bool {
	if a == b {
		return false
	}
	if capacity <= 0 {
		return true
	}
	return math.Abs(b-a)/capacity >= p.DeadBand
}
