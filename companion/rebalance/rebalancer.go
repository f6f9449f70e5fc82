// Package rebalance is the companion's planner at work: the agent that holds
// the planner's Consul lock (leader.go) reads every node record and the
// migrations (snapshot.go), plans a round with companion/planner, keeps the
// hysteresis state in Consul so that the next planner carries on, and moves
// allocations with companion/migrate, each followed to the end. Every move
// starts under the lock's fence: a planner that lost its lock never acts.
package rebalance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Config is how the planner runs.
type Config struct {
	Rebalance   bool // plan rebalancing rounds (rebalance.enabled)
	Policy      planner.Config
	Interval    time.Duration // between rounds
	MoveTimeout time.Duration // for one move to finish
	DryRun      bool          // decide and log, never act
	StateKey    string        // Consul key of the hysteresis state
	Node        string        // this agent's node name, saved with the state
	// Capacity sizes the pools that have a policy, by pool name.
	Capacity map[string]capacity.Policy
}

// Rebalancer plans and acts while its agent leads.
type Rebalancer struct {
	Config  Config
	Sources *Sources
	Mover   *migrate.Mover
	Metrics *Metrics
	Logger  hclog.Logger

	mu     sync.Mutex
	last   *RoundReport
	acting map[string]planner.Move // moves started by this planner, by allocation
}

// RoundReport is the outcome of the last round this agent planned.
type RoundReport struct {
	At     time.Time         `json:"at"`
	DryRun bool              `json:"dry_run"`
	Plan   *planner.Plan     `json:"plan"`
	Moves  []planner.Move    `json:"acting"` // moves this planner is following
	Error  string            `json:"error,omitempty"`
	Nodes  map[string]string `json:"node_names,omitempty"`
}

// Last returns the last round's report, or nil.
func (r *Rebalancer) Last() *RoundReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Lead plans a round every interval until ctx ends (the lock was lost or
// the agent stops), and sizes the pools with a capacity policy alongside
// (capacity.go), releases the network leases no allocation will take
// over (leases.go) and reaps the checkpoint records of gone nodes
// (checkpoints.go), then waits for the moves it started. Those run under
// agentCtx: a move that started under the lock is followed to its end even
// after the lock is lost, and is only cut short when the agent stops.
func (r *Rebalancer) Lead(agentCtx, ctx context.Context, fence *migrate.Fence) {
	r.Metrics.setLeader(true)
	defer r.Metrics.setLeader(false)
	saved, err := LoadState(ctx, r.Sources.Consul, r.Config.StateKey)
	if err != nil {
		r.Logger.Warn("planner state unreadable, starting afresh", "error", err)
	}
	state := saved.State
	var moves sync.WaitGroup
	defer moves.Wait()
	var side sync.WaitGroup
	defer side.Wait()
	side.Go(func() { r.sweepLeases(ctx) })
	side.Go(func() { r.sweepCheckpoints(ctx) })
	if len(r.Config.Capacity) > 0 {
		side.Go(func() { r.size(agentCtx, ctx, fence, &moves) })
	}
	if !r.Config.Rebalance {
		<-ctx.Done()
		return
	}
	tick := time.NewTicker(r.Config.Interval)
	defer tick.Stop()
	for {
		state = r.round(agentCtx, ctx, fence, state, &moves)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// round plans once and starts the planned moves.
func (r *Rebalancer) round(agentCtx, ctx context.Context, fence *migrate.Fence, state planner.State, moves *sync.WaitGroup) planner.State {
	report := &RoundReport{At: time.Now().UTC(), DryRun: r.Config.DryRun}
	defer func() {
		r.mu.Lock()
		r.last = report
		r.mu.Unlock()
	}()
	in, err := r.Sources.Read(ctx)
	if err != nil {
		report.Error = err.Error()
		if ctx.Err() == nil {
			r.Logger.Warn("planning round skipped", "error", err)
		}
		return state
	}
	snap := in.Snapshot()
	snap.InFlight = r.withActing(snap.InFlight)
	plan := planner.Round(r.Config.Policy, state, snap)
	report.Plan, report.Nodes = &plan, nodeNames(in)
	r.Metrics.round(&plan)
	policy := r.Config.Policy
	saved := Saved{State: plan.State, Policy: &policy, By: r.Config.Node, At: report.At}
	if err := SaveState(ctx, r.Sources.Consul, r.Config.StateKey, saved, fence); err != nil {
		// Most likely the lock is gone: act on nothing.
		report.Error = err.Error()
		r.Logger.Warn("planner state not saved; no moves this round", "error", err)
		return plan.State
	}
	if !r.Config.DryRun {
		r.prune(ctx, in)
	}
	for _, n := range plan.Nodes {
		if n.Hot {
			r.Logger.Info("hot node", "node", n.Name, "online_load", fmt.Sprintf("%.0f%%", 100*n.Fraction), "streak", n.Streak)
		}
	}
	for _, d := range plan.Moves {
		if r.Config.DryRun {
			r.Logger.Info("dry run: would move", "alloc_id", d.Move.AllocID, "job", d.Move.JobID, "from", report.Nodes[d.Move.From], "to", report.Nodes[d.Move.To], "kind", d.Move.Kind, "reason", d.Reason)
			continue
		}
		r.start(agentCtx, fence, d, report.Nodes, moves)
	}
	report.Moves = r.withActing(nil)
	return plan.State
}

// start moves one allocation in the background, followed to the end.
func (r *Rebalancer) start(ctx context.Context, fence *migrate.Fence, d planner.Decision, names map[string]string, moves *sync.WaitGroup) {
	r.mu.Lock()
	if r.acting == nil {
		r.acting = map[string]planner.Move{}
	}
	r.acting[d.Move.AllocID] = d.Move
	r.mu.Unlock()
	log := r.Logger.With("alloc_id", d.Move.AllocID, "job", d.Move.JobID, "from", names[d.Move.From], "to", names[d.Move.To], "kind", d.Move.Kind)
	log.Info("moving allocation", "reason", d.Reason)
	moves.Add(1)
	go func() {
		defer moves.Done()
		defer func() {
			r.mu.Lock()
			delete(r.acting, d.Move.AllocID)
			r.mu.Unlock()
		}()
		res, err := r.Mover.Move(ctx, migrate.Request{
			AllocID:    d.Move.AllocID,
			TargetNode: d.Move.To,
			Timeout:    r.Config.MoveTimeout,
			Reason:     d.Reason,
			Kind:       string(d.Move.Kind),
			CPU:        d.Move.Reserved.CPU,
			MemoryMB:   d.Move.Reserved.MemoryMB,
			Fence:      fence,
		})
		switch {
		case errors.Is(err, migrate.ErrFenced):
			r.Metrics.moved("fenced", 0)
			log.Warn("move not started: the planner lock is no longer held", "error", err)
		case errors.Is(err, context.Canceled):
			r.Metrics.moved(migrate.ResultAbandoned, 0)
			log.Warn("agent stopping: the move is no longer followed", "error", err)
		case err != nil:
			r.Metrics.moved(migrate.ResultFailed, 0)
			log.Error("move failed", "error", err)
		default:
			result := migrate.ResultRestored
			if !res.Restored {
				result = migrate.ResultColdStart
			}
			r.Metrics.moved(result, res.Downtime.Seconds())
			log.Info("allocation moved", "result", result, "new_alloc_id", res.NewAlloc, "destination", res.Destination, "downtime", res.Downtime, "bytes", res.Bytes, "why_not_restored", res.Reason)
			if res.TargetMissed {
				log.Warn("Nomad placed the replacement elsewhere than planned: give the job the affinity on meta."+sdk.MetaMigrateTarget, "planned", names[d.Move.To], "destination", res.Destination)
			}
		}
	}()
}

// withActing adds the moves this planner started and has not yet seen
// recorded, so that a move is never planned twice while its first record
// is being written.
func (r *Rebalancer) withActing(inFlight []planner.Move) []planner.Move {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool, len(inFlight))
	for _, m := range inFlight {
		seen[m.AllocID] = true
	}
	for id, m := range r.acting {
		if !seen[id] {
			inFlight = append(inFlight, m)
		}
	}
	return inFlight
}

// prune closes the records of moves whose mover died (undoing the node
// steering it left behind), and removes records older than the history
// kept.
func (r *Rebalancer) prune(ctx context.Context, in *Inputs) {
	for _, m := range in.Migrations {
		if migrate.Abandoned(m, in.Now) {
			r.Mover.Abandon(ctx, m)
			continue
		}
		at := m.FinishedAt
		if at.IsZero() {
			at = m.StartedAt
		}
		if in.Now.Sub(at) < history {
			continue
		}
		if err := r.Sources.Records.Delete(ctx, m.ID); err != nil {
			r.Logger.Debug("prune migration record", "id", m.ID, "error", err)
		}
	}
}

func nodeNames(in *Inputs) map[string]string {
	names := make(map[string]string, len(in.Nodes))
	for _, n := range in.Nodes {
		names[n.ID] = n.Name
	}
	return names
}

// Saved is what the planner keeps in Consul after every round: the
// hysteresis state the next round (maybe of another planner) starts from,
// and the policy it planned with, for `ferry-companion plan`.
type Saved struct {
	State  planner.State   `json:"state"`
	Policy *planner.Config `json:"policy,omitempty"`
	By     string          `json:"by,omitempty"` // the planner's node
	At     time.Time       `json:"at"`
}

// LoadState reads what the last planner saved; a missing key is the zero
// state and no policy.
func LoadState(ctx context.Context, c *consul.Client, key string) (Saved, error) {
	pair, _, err := c.KV().Get(key, (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil {
		return Saved{}, err
	}
	var s Saved
	if err := json.Unmarshal(pair.Value, &s); err != nil {
		return Saved{}, fmt.Errorf("decode %s: %w", key, err)
	}
	return s, nil
}

// SaveState writes s under the fence: only the lock holder saves.
func SaveState(ctx context.Context, c *consul.Client, key string, s Saved, fence *migrate.Fence) error {
	value, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode planner state: %w", err)
	}
	if err := migrate.WriteFenced(ctx, c, fence, key, value); err != nil {
		return fmt.Errorf("save planner state %s: %w", key, err)
	}
	return nil
}
