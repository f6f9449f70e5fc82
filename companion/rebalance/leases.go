package rebalance

import (
	"context"
	"time"

	"github.com/ferry-nomad/ferry/driver/lease"
	nomad "github.com/hashicorp/nomad/api"
)

// leaseGrace is how long a lease whose holder stopped is kept before the
// planner releases it: well past a move's handoff and restore_wait, while
// the CNI DEL that releases it normally runs at once, and a replacement
// takes a moving one over within seconds.
const leaseGrace = 10 * time.Minute

// leaseSweep is how often the planner looks for such leases.
const leaseSweep = 30 * time.Second

// sweepLeases releases, while this agent leads, the Ferry network leases
// no allocation will take over: whose holder Nomad no longer knows, whose
// job is stopped, or whose holder stopped longer than leaseGrace ago (a
// node lost before its CNI DEL ran, a move whose replacement never came).
func (r *Rebalancer) sweepLeases(ctx context.Context) {
	tick := time.NewTicker(leaseSweep)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		networks, err := lease.Networks(ctx, r.Sources.Consul)
		if err != nil {
			r.Logger.Warn("list the Ferry networks", "error", err)
			continue
		}
		for _, name := range networks {
			store := &lease.Store{Consul: r.Sources.Consul, Network: name}
			n, err := store.Sweep(ctx, r.staleLease)
			if n > 0 {
				r.Logger.Info("released leases no allocation will take over", "network", name, "count", n)
			}
			if err != nil && ctx.Err() == nil {
				r.Logger.Warn("sweep leases", "network", name, "error", err)
			}
		}
	}
}

// staleLease reports whether no allocation will take l over: its holder
// stopped (or is unknown to Nomad), and its job is gone or stopped, or it
// stopped longer than leaseGrace ago.
func (r *Rebalancer) staleLease(ctx context.Context, l lease.Lease) (bool, error) {
	fate, err := lease.FateOf(ctx, r.Sources.Nomad, l.Slot.Namespace, l.AllocID)
	if err != nil || fate == lease.Live {
		return false, err
	}
	job, _, err := r.Sources.Nomad.Jobs().Info(l.Slot.Job, (&nomad.QueryOptions{Namespace: l.Slot.Namespace}).WithContext(ctx))
	switch {
	case lease.NotFound(err):
		return true, nil
	case err != nil:
		return false, err
	case job.Stop != nil && *job.Stop:
		return true, nil
	}
	return time.Since(l.Updated) > leaseGrace, nil
}
