package planner

import (
	"errors"
	"fmt"
	"time"
)

// Threshold is a pair of fractions of capacity. A node becomes hot when its
// online usage is at or above High for Config.Consecutive rounds in a row,
// and cools only once usage is below Low again.
type Threshold struct {
	High, Low float64
}

// Thresholds are per resource; a node is over when either resource is.
type Thresholds struct {
	CPU, Memory Threshold
}

// Limits bound how much moves at once. Every limit is at least 1.
type Limits struct {
	InFlight int // moves in flight plus planned, cluster-wide
	PerNode  int // moves in flight plus planned from, and to, any one node
	PerJob   int // moves in flight plus planned for any one job
	PerHour  int // moves finished in the last hour, in flight, and planned
	PerRound int // moves planned from one hot node in one round
}

// Config is the rebalancer policy.
type Config struct {
	Thresholds  Thresholds
	Consecutive int // rounds at or above High before a node is hot
	// Jobs with priority >= OnlinePriority are online; service jobs are
	// always online. Everything else is offline and may be moved.
	OnlinePriority int
	Cooldown       time.Duration // never move an allocation again within this
	Limits         Limits
}

// DefaultConfig is a conservative policy: a node is hot after three rounds
// with online usage at 80% CPU or 85% memory, cools below 65% and 70%, and
// one allocation leaves it per round.
func DefaultConfig() Config {
	return Config{
		Thresholds: Thresholds{
			CPU:    Threshold{High: 0.80, Low: 0.65},
			Memory: Threshold{High: 0.85, Low: 0.70},
		},
		Consecutive:    3,
		OnlinePriority: 70, // above Nomad's default job priority of 50
		Cooldown:       30 * time.Minute,
		Limits: Limits{
			InFlight: 1, // one checkpoint at a time
			PerNode:  1,
			PerJob:   1,
			PerHour:  30,
			PerRound: 1,
		},
	}
}

// Validate checks every field and returns all problems at once, each naming
// the field and what would fix it.
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, c.Thresholds.CPU.validate("thresholds.cpu")...)
	errs = append(errs, c.Thresholds.Memory.validate("thresholds.memory")...)
	if c.Consecutive < 1 {
		errs = append(errs, fmt.Errorf("consecutive: %d must be at least 1 (rounds over the high threshold before a node is hot)", c.Consecutive))
	}
	if c.OnlinePriority < 1 || c.OnlinePriority > 100 {
		errs = append(errs, fmt.Errorf("online_priority: %d must be a Nomad job priority between 1 and 100", c.OnlinePriority))
	}
	if c.Cooldown < 0 {
		errs = append(errs, fmt.Errorf("cooldown: %s must not be negative (use 0 to disable)", c.Cooldown))
	}
	for _, l := range []struct {
		name string
		v    int
	}{
		{"limits.in_flight", c.Limits.InFlight},
		{"limits.per_node", c.Limits.PerNode},
		{"limits.per_job", c.Limits.PerJob},
		{"limits.per_hour", c.Limits.PerHour},
		{"limits.per_round", c.Limits.PerRound},
	} {
		if l.v < 1 {
			errs = append(errs, fmt.Errorf("%s: %d must be at least 1", l.name, l.v))
		}
	}
	return errors.Join(errs...)
}

func (t Threshold) validate(name string) []error {
	var errs []error
	// Written so that NaN fails too.
	if !(t.High > 0 && t.High <= 1) {
		errs = append(errs, fmt.Errorf("%s.high: %v must be a fraction of capacity in (0, 1], e.g. 0.8", name, t.High))
	}
	if !(t.Low > 0 && t.Low < 1) {
		errs = append(errs, fmt.Errorf("%s.low: %v must be a fraction of capacity in (0, 1), e.g. 0.6", name, t.Low))
	}
	if len(errs) == 0 && t.High <= t.Low {
		errs = append(errs, fmt.Errorf("%s.high: %v must be above %s.low (%v)", name, t.High, name, t.Low))
	}
	return errs
}
