package rebalance

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consul "github.com/hashicorp/consul/api"
	nomad "github.com/hashicorp/nomad/api"
)

// SavedCapacity is what the pool sizing keeps in Consul (at
// sdk.KeyCapacityState) after every round: the state the next round starts
// from, the last plan of each pool for `ferry-companion status`, and the
// policies it sized with, for `ferry-companion plan`.
type SavedCapacity struct {
	State    capacity.State               `json:"state"`
	Pools    map[string]capacity.PoolPlan `json:"pools"`
	Policies map[string]capacity.Policy   `json:"policies,omitempty"`
	DryRun   bool                         `json:"dry_run,omitempty"`
	By       string                       `json:"by,omitempty"`
	At       time.Time                    `json:"at"`
}

// LoadCapacity reads what the last sizing round saved; a missing key is
// the zero value.
func LoadCapacity(ctx context.Context, c *consul.Client) (SavedCapacity, error) {
	pair, _, err := c.KV().Get(sdk.KeyCapacityState, (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil {
		return SavedCapacity{}, err
	}
	var s SavedCapacity
	if err := json.Unmarshal(pair.Value, &s); err != nil {
		return SavedCapacity{}, fmt.Errorf("decode %s: %w", sdk.KeyCapacityState, err)
	}
	return s, nil
}

// CapacitySnapshot turns the reads of a round into the sizing's view of the
// pools that have a policy: their nodes with the work each runs (from the
// agents' records), the companion's marks, the work Nomad cannot place,
// and the moves in flight.
func (s *Sources) CapacitySnapshot(ctx context.Context, in *Inputs, pools map[string]capacity.Policy) (capacity.Snapshot, error) {
	snap := capacity.Snapshot{Now: in.Now, InFlight: map[string]bool{}}
	records := make(map[string]*load.Record, len(in.Records))
	for i := range in.Records {
		records[in.Records[i].NodeID] = &in.Records[i]
	}
	for _, stub := range in.Nodes {
		if _, ok := pools[stub.NodePool]; !ok {
			continue
		}
		n := capacity.Node{
			ID: stub.ID, Name: stub.Name, Pool: stub.NodePool,
			Ready:    stub.Status == nomad.NodeStatusReady,
			Eligible: stub.SchedulingEligibility == nomad.NodeSchedulingEligible,
			Drained:  stub.Drain,
		}
		if !n.Eligible && n.Ready {
			// Only ineligible nodes can carry a mark that counts; reading
			// the meta of those alone keeps a round one list call.
			info, _, err := s.Nomad.Nodes().Info(stub.ID, (&nomad.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return snap, fmt.Errorf("read node %s: %w", stub.Name, err)
			}
			n.Mark = info.Meta[sdk.MetaCapacity]
		}
		if r := records[stub.ID]; r != nil {
			n.Capacity = capacity.Resources(r.Capacity)
			for _, a := range r.Allocs {
				if a.JobType == nomad.JobTypeSystem || a.JobType == nomad.JobTypeSysbatch {
					continue // every node runs them: not work to place
				}
				n.Work = append(n.Work, capacity.Work{AllocID: a.ID, JobID: a.JobID,
					Reserved: capacity.Resources(a.Reserved), Checkpoint: a.Checkpoint, RestartMove: a.RestartMove})
			}
		} else {
			n.Unknown = true
		}
		snap.Nodes = append(snap.Nodes, n)
	}
	for _, m := range in.Migrations {
		if m.Result == migrate.ResultInProgress && !migrate.Abandoned(m, in.Now) {
			snap.InFlight[m.AllocID] = true
		}
	}
	queued, err := s.queued(ctx, pools)
	if err != nil {
		return snap, err
	}
	snap.Queued = queued
	return snap, nil
}

// queued is the work Nomad has not placed in the pools: the queued
// allocations of every job's groups (one job list; a job is read only when
// it has some).
func (s *Sources) queued(ctx context.Context, pools map[string]capacity.Policy) ([]capacity.Queued, error) {
	q := (&nomad.QueryOptions{Namespace: "*"}).WithContext(ctx)
	jobs, _, err := s.Nomad.Jobs().List(q)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	var out []capacity.Queued
	for _, stub := range jobs {
		if stub.Stop || stub.JobSummary == nil || stub.Type == nomad.JobTypeSystem || stub.Type == nomad.JobTypeSysbatch {
			continue
		}
		waiting := map[string]int{}
		for group, sum := range stub.JobSummary.Summary {
			if sum.Queued > 0 {
				waiting[group] = sum.Queued
			}
		}
		if len(waiting) == 0 {
			continue
		}
		job, _, err := s.Nomad.Jobs().Info(stub.ID, (&nomad.QueryOptions{Namespace: stub.Namespace}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("read job %s: %w", stub.ID, err)
		}
		pool := deref(job.NodePool, nomad.NodePoolDefault)
		if _, ok := pools[pool]; !ok {
			continue
		}
		for _, g := range job.TaskGroups {
			if count := waiting[deref(g.Name, "")]; count > 0 {
				out = append(out, capacity.Queued{Pool: pool, JobID: stub.ID, Group: deref(g.Name, ""), Count: count, Reserved: capacity.Resources(load.GroupReserved(g))})
			}
		}
	}
	return out, nil
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// size runs a sizing round for each pool whose interval is up, every
// second, until ctx ends. Moves it starts run under agentCtx, as the
// planner's do.
func (r *Rebalancer) size(agentCtx, ctx context.Context, fence *migrate.Fence, moves *sync.WaitGroup) {
	saved, err := LoadCapacity(ctx, r.Sources.Consul)
	if err != nil {
		r.Logger.Warn("capacity state unreadable, starting afresh", "error", err)
	}
	state := saved.State
	last := map[string]time.Time{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		due := map[string]capacity.Policy{}
		for name, p := range r.Config.Capacity {
			if time.Since(last[name]) >= p.Interval {
				due[name] = p
				last[name] = time.Now()
			}
		}
		if len(due) > 0 {
			state = r.sizeRound(agentCtx, ctx, fence, state, due, moves)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sizeRound plans the due pools, saves the outcome under the fence, and
// acts on it.
func (r *Rebalancer) sizeRound(agentCtx, ctx context.Context, fence *migrate.Fence, state capacity.State, due map[string]capacity.Policy, moves *sync.WaitGroup) capacity.State {
	in, err := r.Sources.Read(ctx)
	if err == nil {
		var snap capacity.Snapshot
		if snap, err = r.Sources.CapacitySnapshot(ctx, in, due); err == nil {
			for _, m := range r.withActing(nil) {
				snap.InFlight[m.AllocID] = true
			}
			snap.MoveBudget = r.Config.Policy.Limits.InFlight
			return r.actOnCapacity(agentCtx, ctx, fence, state, capacity.Round(due, state, snap), in, moves)
		}
	}
	if ctx.Err() == nil {
		r.Logger.Warn("capacity round skipped", "error", err)
	}
	return state
}

// actOnCapacity saves the plan and carries out its actions in order.
func (r *Rebalancer) actOnCapacity(agentCtx, ctx context.Context, fence *migrate.Fence, state capacity.State, plan capacity.Plan, in *Inputs, moves *sync.WaitGroup) capacity.State {
	if state.Pools == nil {
		state.Pools = map[string]capacity.PoolState{}
	}
	maps.Copy(state.Pools, plan.State.Pools)
	saved, _ := LoadCapacity(ctx, r.Sources.Consul)
	if saved.Pools == nil {
		saved.Pools = map[string]capacity.PoolPlan{}
	}
	for _, pp := range plan.Pools {
		saved.Pools[pp.Pool] = pp
		r.Metrics.pool(pp)
	}
	saved.State, saved.Policies, saved.DryRun = state, r.Config.Capacity, r.Config.DryRun
	saved.By, saved.At = r.Config.Node, time.Now().UTC()
	value, err := json.Marshal(saved)
	if err == nil {
		err = migrate.WriteFenced(ctx, r.Sources.Consul, fence, sdk.KeyCapacityState, value)
	}
	if err != nil {
		r.Logger.Warn("capacity state not saved; no action this round", "error", err)
		return state
	}
	// Each node's steps run in order, the nodes side by side: a step waits
	// until the servers show its mark, which takes seconds.
	names := nodeNames(in)
	var nodes sync.WaitGroup
	for _, pp := range plan.Pools {
		byNode := map[string][]capacity.Action{}
		var order []string
		for _, a := range pp.Actions {
			if _, ok := byNode[a.NodeID]; !ok {
				order = append(order, a.NodeID)
			}
			byNode[a.NodeID] = append(byNode[a.NodeID], a)
		}
		for _, id := range order {
			nodes.Go(func() {
				for _, a := range byNode[id] {
					r.capacityStep(agentCtx, ctx, fence, pp.Pool, a, names, in, moves)
				}
			})
		}
	}
	nodes.Wait()
	return state
}

// capacityStep carries out one action, or logs it in a dry run.
func (r *Rebalancer) capacityStep(agentCtx, ctx context.Context, fence *migrate.Fence, pool string, a capacity.Action, names map[string]string, in *Inputs, moves *sync.WaitGroup) {
	log := r.Logger.With("pool", pool, "action", a.Kind, "node", a.NodeName, "reason", a.Reason)
	if r.Config.DryRun {
		log.Info("dry run: capacity would act", "alloc_id", a.AllocID, "count", a.Count)
		return
	}
	if err := r.capacityAction(agentCtx, ctx, fence, pool, a, names, in, moves); err != nil {
		log.Error("capacity action failed", "error", err)
		r.Metrics.capacityAction(pool, string(a.Kind)+"_failed")
		return
	}
	log.Info("capacity action", "alloc_id", a.AllocID, "count", a.Count)
	r.Metrics.capacityAction(pool, string(a.Kind))
}

// capacityAction carries out one action.
func (r *Rebalancer) capacityAction(agentCtx, ctx context.Context, fence *migrate.Fence, pool string, a capacity.Action, names map[string]string, in *Inputs, moves *sync.WaitGroup) error {
	nc := r.Sources.Nomad
	w := (&nomad.WriteOptions{}).WithContext(ctx)
	mark := func(v string) error {
		var value *string
		if v != capacity.MarkNone {
			value = &v
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return migrate.SetNodeMeta(ctx, nc, a.NodeID, sdk.MetaCapacity, value)
	}
	eligible := func(on bool) error {
		_, err := nc.Nodes().ToggleEligibility(a.NodeID, on, w)
		return err
	}
	switch a.Kind {
	case capacity.ActClear:
		return mark(capacity.MarkNone)
	case capacity.ActScaleIn:
		// The mark first: a node found ineligible without it would not
		// count as the companion's.
		if err := mark(capacity.MarkParking); err != nil {
			return err
		}
		return eligible(false)
	case capacity.ActPark:
		return mark(capacity.MarkParked)
	case capacity.ActUnpark, capacity.ActCancel:
		if err := eligible(true); err != nil {
			return err
		}
		return mark(capacity.MarkNone)
	case capacity.ActMove:
		move := planner.Move{AllocID: a.AllocID, From: a.NodeID, Kind: planner.MoveLive, Started: time.Now()}
		if w := workOf(in, a.NodeID, a.AllocID); w != nil {
			move.JobID, move.Reserved = w.JobID, planner.Resources(w.Reserved)
			if !w.Checkpoint {
				move.Kind = planner.MoveRestart
			}
		}
		r.start(agentCtx, fence, planner.Decision{Move: move, Reason: "capacity: " + a.Reason}, names, moves)
		return nil
	case capacity.ActLaunch:
		c := r.Config.Capacity[pool].Target.Command
		r.command(agentCtx, pool, a, c.ScaleOut, []string{"FERRY_POOL=" + pool, "FERRY_COUNT=" + strconv.Itoa(a.Count)}, moves)
		return nil
	case capacity.ActDestroy:
		c := r.Config.Capacity[pool].Target.Command
		r.command(agentCtx, pool, a, c.ScaleIn, []string{"FERRY_POOL=" + pool, "FERRY_NODE_ID=" + a.NodeID, "FERRY_NODE_NAME=" + a.NodeName}, moves)
		return nil
	}
	return fmt.Errorf("unknown action %q", a.Kind)
}

// workOf is allocation id on node as its agent recorded it, or nil.
func workOf(in *Inputs, node, id string) *load.Alloc {
	for _, rec := range in.Records {
		if rec.NodeID == node {
			for i := range rec.Allocs {
				if rec.Allocs[i].ID == id {
					return &rec.Allocs[i]
				}
			}
		}
	}
	return nil
}

// commandAttempts and commandBackoff bound the retries of a failed
// scale_out or scale_in command: 1 s, 2 s, 4 s... between attempts.
const (
	commandAttempts = 5
	commandBackoff  = time.Second
)

// command runs an operator command in the background with env added,
// retrying with backoff while it fails; each failure is logged with the
// end of its output and counted.
func (r *Rebalancer) command(ctx context.Context, pool string, a capacity.Action, argv, env []string, running *sync.WaitGroup) {
	running.Add(1)
	go func() {
		defer running.Done()
		log := r.Logger.With("pool", pool, "action", a.Kind, "command", strings.Join(argv, " "))
		wait := commandBackoff
		for attempt := 1; ; attempt++ {
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				log.Info("capacity command done", "output", tail(out))
				return
			}
			r.Metrics.capacityAction(pool, string(a.Kind)+"_failed")
			log.Error("capacity command failed", "attempt", attempt, "error", err, "output", tail(out))
			if attempt == commandAttempts {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait *= 2
		}
	}()
}

// tail is the last lines of a command's output, for a log line.
func tail(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.Join(lines[max(len(lines)-5, 0):], " | ")
}
