package capacity

import (
	"errors"
	"time"

	"github.com/ferry-nomad/ferry/companion/config/field"
)

// Policy sizes one node pool: the file's `capacity "<pool>" { ... }` block.
type Policy struct {
	Min         int           `hcl:"min,optional"`           // nodes always in service
	Max         int           `hcl:"max,optional"`           // the quota: never more in service, or being started
	Interval    time.Duration `hcl:"interval,optional"`      // one round per interval
	ScaleInIdle time.Duration `hcl:"scale_in_idle,optional"` // a surplus this long before a node is taken out
	Target      Target        `hcl:"target,block" label:"kind"`
}

// Target is how nodes enter and leave service: exactly one of its kinds.
type Target struct {
	// Eligibility parks a node (ready, ineligible, marked) and unparks it:
	// no machines are created or destroyed.
	Eligibility *struct{} `hcl:"eligibility"`
	// Command runs the operator's commands that create and destroy
	// machines.
	Command *Command `hcl:"command"`
}

// Command is `target "command" { ... }`: argv lists run without a shell.
// ScaleOut gets FERRY_POOL and FERRY_COUNT (machines to create) in its
// environment, ScaleIn FERRY_POOL, FERRY_NODE_ID and FERRY_NODE_NAME (the
// node to destroy, which runs no work any more).
type Command struct {
	ScaleOut []string `hcl:"scale_out,optional"`
	ScaleIn  []string `hcl:"scale_in,optional"`
	// StartTimeout is how long machines being created count as starting
	// (VB) before the pool is sized without them.
	StartTimeout time.Duration `hcl:"start_timeout,optional"`
}

// Target kinds, as Plan reports them.
const (
	KindEligibility = "eligibility"
	KindCommand     = "command"
)

// Kind is the target's kind.
func (t Target) Kind() string {
	if t.Command != nil {
		return KindCommand
	}
	return KindEligibility
}

// DefaultPolicy is a pool of at least one node and at most ten, sized every
// 30 s, parking a node after two minutes of surplus.
func DefaultPolicy() Policy {
	return Policy{Min: 1, Max: 10, Interval: 30 * time.Second, ScaleInIdle: 2 * time.Minute,
		Target: Target{Eligibility: &struct{}{}}}
}

// DefaultStartTimeout is Command.StartTimeout when not set.
const DefaultStartTimeout = 10 * time.Minute

// Validate checks every field; errors name it under path, the block
// (capacity "default").
func (p Policy) Validate(path field.Path) error {
	var errs []error
	if p.Min < 0 {
		errs = append(errs, field.Errorf(path.Child("min"), "%d must not be negative", p.Min))
	}
	if p.Max < 1 {
		errs = append(errs, field.Errorf(path.Child("max"), "%d must be at least 1 (the most nodes in service)", p.Max))
	} else if p.Min > p.Max {
		errs = append(errs, field.Errorf(path.Child("min"), "%d must not exceed max (%d)", p.Min, p.Max))
	}
	if p.Interval < time.Second {
		errs = append(errs, field.Errorf(path.Child("interval"), "%s must be at least 1s, e.g. \"30s\"", p.Interval))
	}
	if p.ScaleInIdle < 0 {
		errs = append(errs, field.Errorf(path.Child("scale_in_idle"), "%s must not be negative (0 takes a surplus node out at once)", p.ScaleInIdle))
	}
	target := path.Child("target")
	switch t := p.Target; {
	case t.Eligibility != nil && t.Command != nil:
		errs = append(errs, field.Errorf(target, `give one target: "eligibility" or "command"`))
	case t.Command != nil:
		c := target.Label(KindCommand)
		if len(t.Command.ScaleOut) == 0 || t.Command.ScaleOut[0] == "" {
			errs = append(errs, field.Errorf(c.Child("scale_out"), `required: the command that creates machines, e.g. ["/usr/local/bin/add-nodes"]`))
		}
		if len(t.Command.ScaleIn) == 0 || t.Command.ScaleIn[0] == "" {
			errs = append(errs, field.Errorf(c.Child("scale_in"), `required: the command that destroys a machine, e.g. ["/usr/local/bin/remove-node"]`))
		}
		if t.Command.StartTimeout < 0 {
			errs = append(errs, field.Errorf(c.Child("start_timeout"), "%s must not be negative", t.Command.StartTimeout))
		}
	}
	return errors.Join(errs...)
}
