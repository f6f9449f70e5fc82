package planner

import (
	"errors"
	"time"

	"github.com/ferry-nomad/ferry/companion/config/field"
)

// The hcl tags are the policy's fields as ferry-companion's configuration
// file writes them, flat in its rebalance block.

// Threshold is a pair of fractions of capacity. A node becomes hot when its
// online usage is at or above High for Config.Consecutive rounds in a row,
// and cools only once usage is below Low again.
type Threshold struct {
	High float64 `hcl:"high,optional"`
	Low  float64 `hcl:"low,optional"`
}

// Thresholds are per resource; a node is over when either resource is. The
// file writes each as a threshold block labelled with its resource:
// threshold "cpu" { high = 0.8 }.
type Thresholds struct {
	CPU    Threshold `hcl:"cpu"`
	Memory Threshold `hcl:"memory"`
}

// Limits bound how much moves at once. Every limit is at least 1.
type Limits struct {
	InFlight int `hcl:"in_flight,optional"` // moves in flight plus planned, cluster-wide
	PerNode  int `hcl:"per_node,optional"`  // moves in flight plus planned from, and to, any one node
	PerJob   int `hcl:"per_job,optional"`   // moves in flight plus planned for any one job
	PerHour  int `hcl:"per_hour,optional"`  // moves finished in the last hour, in flight, and planned
	PerRound int `hcl:"per_round,optional"` // moves planned from one hot node in one round
}

// Config is the rebalancer policy.
type Config struct {
	Thresholds  Thresholds `hcl:"threshold,block" label:"resource"`
	Consecutive int        `hcl:"consecutive,optional"` // rounds at or above High before a node is hot
	// Jobs with priority >= OnlinePriority are online; service jobs are
	// always online. Everything else is offline and may be moved.
	OnlinePriority int           `hcl:"online_priority,optional"`
	Cooldown       time.Duration `hcl:"cooldown,optional"` // never move an allocation again within this; 0 disables
	Limits         Limits        `hcl:"limits,block"`
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
// the field as the file writes it in the rebalance block, and what would
// fix it.
func (c Config) Validate() error {
	return errors.Join(c.ValidateAt("")...)
}

// ValidateAt is Validate for a policy written at path in a file: each error
// is a *field.Error whose path starts there.
func (c Config) ValidateAt(path field.Path) []error {
	var errs []error
	threshold := path.Child("threshold")
	errs = append(errs, c.Thresholds.CPU.validate(threshold.Label("cpu"))...)
	errs = append(errs, c.Thresholds.Memory.validate(threshold.Label("memory"))...)
	if c.Consecutive < 1 {
		errs = append(errs, field.Errorf(path.Child("consecutive"), "%d must be at least 1 (rounds over the high threshold before a node is hot)", c.Consecutive))
	}
	if c.OnlinePriority < 1 || c.OnlinePriority > 100 {
		errs = append(errs, field.Errorf(path.Child("online_priority"), "%d must be a Nomad job priority between 1 and 100", c.OnlinePriority))
	}
	if c.Cooldown < 0 {
		errs = append(errs, field.Errorf(path.Child("cooldown"), "%s must not be negative (use 0 to disable)", c.Cooldown))
	}
	limits := path.Child("limits")
	for _, l := range []struct {
		name string
		v    int
	}{
		{"in_flight", c.Limits.InFlight},
		{"per_node", c.Limits.PerNode},
		{"per_job", c.Limits.PerJob},
		{"per_hour", c.Limits.PerHour},
		{"per_round", c.Limits.PerRound},
	} {
		if l.v < 1 {
			errs = append(errs, field.Errorf(limits.Child(l.name), "%d must be at least 1", l.v))
		}
	}
	return errs
}

func (t Threshold) validate(path field.Path) []error {
	var errs []error
	high, low := path.Child("high"), path.Child("low")
	// Written so that NaN fails too.
	if !(t.High > 0 && t.High <= 1) {
		errs = append(errs, field.Errorf(high, "%v must be a fraction of capacity in (0, 1], e.g. 0.8", t.High))
	}
	if !(t.Low > 0 && t.Low < 1) {
		errs = append(errs, field.Errorf(low, "%v must be a fraction of capacity in (0, 1), e.g. 0.6", t.Low))
	}
	if len(errs) == 0 && t.High <= t.Low {
		errs = append(errs, field.Errorf(high, "%v must be above %s (%v)", t.High, low, t.Low))
	}
	return errs
}
