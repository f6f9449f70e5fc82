package capacity

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Round plans one round for every pool in policies, from state and snap.
// It returns the plan, whose State the next round starts from.
func Round(policies map[string]Policy, state State, snap Snapshot) Plan {
	byPool := make(map[string][]*Node, len(policies))
	for i := range snap.Nodes {
		n := &snap.Nodes[i]
		if _, ok := policies[n.Pool]; ok {
			byPool[n.Pool] = append(byPool[n.Pool], n)
		}
	}
	queued := make(map[string][]Queued, len(policies))
	for _, q := range snap.Queued {
		queued[q.Pool] = append(queued[q.Pool], q)
	}
	budget := snap.MoveBudget - len(snap.InFlight)
	plan := Plan{State: State{Pools: make(map[string]PoolState, len(policies))}}
	for _, name := range slices.Sorted(maps.Keys(policies)) {
		p := &pool{
			name: name, policy: policies[name], nodes: byPool[name], now: snap.Now,
			queued: queued[name], inFlight: snap.InFlight, budget: &budget,
			state: state.Pools[name],
		}
		plan.Pools = append(plan.Pools, p.round())
		plan.State.Pools[name] = p.state
	}
	return plan
}

// pool is one pool's round in progress.
type pool struct {
	name     string
	policy   Policy
	nodes    []*Node
	now      time.Time
	queued   []Queued
	inFlight map[string]bool
	budget   *int // moves that may still start this round, shared by pools
	state    PoolState
	out      PoolPlan

	inService, stopping, parked []*Node
}

func (p *pool) round() PoolPlan {
	p.out = PoolPlan{Pool: p.name, Target: p.policy.Target.Kind(), Quota: p.policy.Max}
	p.classify()
	p.measure()
	vn := p.out.VT - p.out.VA - p.out.VB
	switch {
	case vn > 0:
		p.state.SurplusSince = time.Time{}
		p.grow(vn)
	case vn < 0:
		if p.state.SurplusSince.IsZero() {
			p.state.SurplusSince = p.now
		}
		p.shrink(-vn)
	default:
		p.state.SurplusSince = time.Time{}
		p.out.Why = fmt.Sprintf("needs %d, %d in service: nothing to do", p.out.VT, p.out.VA)
		if p.out.VD > 0 {
			p.out.Why = fmt.Sprintf("needs %d, %d in service; %d leaving service", p.out.VT, p.out.VA, p.out.VD)
		}
	}
	p.drainStopping()
	return p.out
}

// classify sorts the pool's nodes by their part in the algorithm and
// clears marks left on nodes that are eligible again.
func (p *pool) classify() {
	slices.SortFunc(p.nodes, func(a, b *Node) int { return strings.Compare(a.Name, b.Name) })
	destroying := map[string]time.Time{}
	for _, n := range p.nodes {
		switch {
		case !n.Ready:
			// Down, or gone: neither in service nor kept.
		case n.Mark != MarkNone && n.Eligible:
			p.act(Action{Kind: ActClear, NodeID: n.ID, NodeName: n.Name,
				Reason: fmt.Sprintf("marked %s but eligible again: in service", n.Mark)})
			p.inService = append(p.inService, n)
		case n.Mark == MarkParking:
			p.stopping = append(p.stopping, n)
			if at, ok := p.state.Destroying[n.ID]; ok {
				destroying[n.ID] = at
			}
		case n.Mark == MarkParked:
			p.parked = append(p.parked, n)
		case n.Eligible && !n.Drained:
			p.inService = append(p.inService, n)
		}
	}
	p.state.Destroying = destroying
	p.out.VA, p.out.VD, p.out.Parked = len(p.inService), len(p.stopping), len(p.parked)
	p.out.VB = p.starting()
}

// starting is VB: machines asked for within start_timeout that have not
// joined the pool yet.
func (p *pool) starting() int {
	c := p.policy.Target.Command
	if c == nil {
		p.state.Launches = nil
		return 0
	}
	timeout := cmp.Or(c.StartTimeout, DefaultStartTimeout)
	var keep []Launch
	asked, known := 0, len(p.nodes)
	for _, l := range p.state.Launches {
		if p.now.Sub(l.At) < timeout {
			keep = append(keep, l)
			asked += l.Count
			known = min(known, l.Known)
		}
	}
	p.state.Launches = keep
	return max(asked-(len(p.nodes)-known), 0)
}

// measure sets VT from the demand and the node size: the demand over the
// size, and at least one node for each allocation larger than half a node
// (no two of those share one).
func (p *pool) measure() {
	var caps []Resources
	for _, n := range p.nodes {
		if n.Ready && n.Capacity.CPU > 0 && n.Capacity.MemoryMB > 0 {
			caps = append(caps, n.Capacity)
		}
	}
	size := median(caps)
	demand, big := Resources{}, 0
	add := func(r Resources, count int) {
		demand = demand.add(r.scale(count))
		if r.CPU > size.CPU/2 || r.MemoryMB > size.MemoryMB/2 {
			big += count
		}
	}
	for _, q := range p.queued {
		add(q.Reserved, q.Count)
	}
	for _, n := range p.nodes {
		if n.Ready {
			for _, w := range n.Work {
				add(w.Reserved, 1)
			}
		}
	}
	p.out.Demand, p.out.NodeSize = demand, size
	need := big
	if size.CPU > 0 && size.MemoryMB > 0 {
		need = max(need, int(math.Ceil(max(demand.CPU/size.CPU, demand.MemoryMB/size.MemoryMB)-1e-9)))
	} else if demand != (Resources{}) {
		need = 1 // no ready node to measure by: one to start with
	}
	p.out.VT = max(need, p.policy.Min)
}

// median is the median of each resource; zero for none.
func median(rs []Resources) Resources {
	if len(rs) == 0 {
		return Resources{}
	}
	cpu, mem := make([]float64, len(rs)), make([]float64, len(rs))
	for i, r := range rs {
		cpu[i], mem[i] = r.CPU, r.MemoryMB
	}
	slices.Sort(cpu)
	slices.Sort(mem)
	return Resources{CPU: cpu[len(cpu)/2], MemoryMB: mem[len(mem)/2]}
}

// grow brings up to vn nodes into service within the quota.
func (p *pool) grow(vn int) {
	room := p.policy.Max - p.out.VA - p.out.VB
	n := min(vn, room)
	if n <= 0 {
		p.out.Why = fmt.Sprintf("needs %d, %d in service and %d starting: at the quota of %d", p.out.VT, p.out.VA, p.out.VB, p.policy.Max)
		return
	}
	var did []string
	count := func(what string, k int) {
		if k > 0 {
			did = append(did, fmt.Sprintf("%s %d", what, k))
		}
	}
	why := fmt.Sprintf("pool needs %d nodes, %d in service", p.out.VT, p.out.VA)
	k := 0
	for _, node := range p.stopping {
		if k == n {
			break
		}
		if _, ok := p.state.Destroying[node.ID]; ok {
			continue // its machine is going away
		}
		p.act(Action{Kind: ActCancel, NodeID: node.ID, NodeName: node.Name, Reason: why})
		k++
	}
	count("return", k)
	unparked := 0
	for _, node := range p.parked {
		if k == n {
			break
		}
		p.act(Action{Kind: ActUnpark, NodeID: node.ID, NodeName: node.Name, Reason: why})
		k++
		unparked++
	}
	count("unpark", unparked)
	if k < n && p.policy.Target.Command != nil {
		p.act(Action{Kind: ActLaunch, Count: n - k, Reason: why})
		p.state.Launches = append(p.state.Launches, Launch{At: p.now, Count: n - k, Known: len(p.nodes)})
		count("create", n-k)
		k = n
	}
	p.out.Why = fmt.Sprintf("needs %d, %d in service: %s", p.out.VT, p.out.VA, strings.Join(did, ", "))
	if k == 0 {
		p.out.Why = fmt.Sprintf("needs %d, %d in service: no parked node to bring back", p.out.VT, p.out.VA)
	}
	if vn > room {
		p.out.Why += fmt.Sprintf(" (the quota of %d allows no more)", p.policy.Max)
	}
}

// shrink takes up to surplus nodes out of service once the surplus has
// lasted scale_in_idle, never below min.
func (p *pool) shrink(surplus int) {
	n := min(surplus, p.out.VA-p.policy.Min)
	if n <= 0 {
		p.out.Why = fmt.Sprintf("needs %d, %d in service: at the minimum of %d", p.out.VT, p.out.VA, p.policy.Min)
		return
	}
	if wait := p.policy.ScaleInIdle - p.now.Sub(p.state.SurplusSince); wait > 0 {
		p.out.Why = fmt.Sprintf("needs %d, %d in service: %d to take out after %s more of surplus", p.out.VT, p.out.VA, n, wait.Round(time.Second))
		return
	}
	var candidates []*Node
	for _, node := range p.inService {
		if !node.Unknown && unmovable(node) == nil {
			candidates = append(candidates, node)
		}
	}
	slices.SortStableFunc(candidates, func(a, b *Node) int {
		ma, mb := movingMemory(a), movingMemory(b)
		return cmp.Or(cmp.Compare(ma, mb), cmp.Compare(len(a.Work), len(b.Work)))
	})
	k := min(n, len(candidates))
	reason := fmt.Sprintf("pool needs %d nodes, %d in service for %s", p.out.VT, p.out.VA, p.now.Sub(p.state.SurplusSince).Round(time.Second))
	for _, node := range candidates[:k] {
		p.act(Action{Kind: ActScaleIn, NodeID: node.ID, NodeName: node.Name, Reason: reason})
		p.stopping = append(p.stopping, node)
	}
	switch {
	case k == 0:
		p.out.Why = fmt.Sprintf("needs %d, %d in service: none taken out, the surplus runs work that cannot move", p.out.VT, p.out.VA)
	case k < n:
		p.out.Why = fmt.Sprintf("needs %d, %d in service: take %d out (%d more run work that cannot move)", p.out.VT, p.out.VA, k, n-k)
	default:
		p.out.Why = fmt.Sprintf("needs %d, %d in service: take %d out", p.out.VT, p.out.VA, k)
	}
	if k > 0 {
		p.state.SurplusSince = time.Time{} // the next surplus waits again
	}
}

// movingMemory is the memory reserved by n's work: what taking it out
// costs, as its checkpoints are as large. Nodes are taken out the cheapest
// first, then with the fewest allocations, then by name.
func movingMemory(n *Node) float64 {
	var mem float64
	for _, w := range n.Work {
		mem += w.Reserved.MemoryMB
	}
	return mem
}

// unmovable is the first work of n that cannot move, or nil.
func unmovable(n *Node) *Work {
	for i := range n.Work {
		if !n.Work[i].movable() {
			return &n.Work[i]
		}
	}
	return nil
}

// drainStopping moves the work off stopping nodes within the budget, and
// parks (or destroys) those that run nothing any more.
func (p *pool) drainStopping() {
	cancelled := map[string]bool{}
	for _, a := range p.out.Actions {
		if a.Kind == ActCancel {
			cancelled[a.NodeID] = true
		}
	}
	for _, node := range p.stopping {
		if cancelled[node.ID] {
			continue
		}
		if _, ok := p.state.Destroying[node.ID]; ok {
			p.wait(node, "its machine is being destroyed")
			continue
		}
		if node.Unknown {
			p.wait(node, "no agent publishes what it runs: it is not parked until one does")
			continue
		}
		if len(node.Work) == 0 {
			if p.policy.Target.Command != nil {
				p.act(Action{Kind: ActDestroy, NodeID: node.ID, NodeName: node.Name, Reason: "runs nothing any more"})
				p.state.Destroying[node.ID] = p.now
			} else {
				p.act(Action{Kind: ActPark, NodeID: node.ID, NodeName: node.Name, Reason: "runs nothing any more"})
			}
			continue
		}
		if w := unmovable(node); w != nil {
			p.wait(node, fmt.Sprintf("runs allocation %s of job %s, which cannot move: stays out of service until it ends", short(w.AllocID), w.JobID))
			continue
		}
		for _, w := range node.Work {
			switch {
			case p.inFlight[w.AllocID]:
				p.wait(node, fmt.Sprintf("allocation %s of job %s is moving", short(w.AllocID), w.JobID))
			case *p.budget <= 0:
				p.wait(node, fmt.Sprintf("allocation %s of job %s waits for the move budget (in_flight)", short(w.AllocID), w.JobID))
			default:
				*p.budget--
				how := "live"
				if !w.Checkpoint {
					how = "by restarting it"
				}
				p.act(Action{Kind: ActMove, NodeID: node.ID, NodeName: node.Name, AllocID: w.AllocID,
					Reason: fmt.Sprintf("%s leaves service: job %s moves %s", node.Name, w.JobID, how)})
			}
		}
	}
}

func (p *pool) act(a Action) { p.out.Actions = append(p.out.Actions, a) }

func (p *pool) wait(n *Node, why string) {
	p.out.Waiting = append(p.out.Waiting, Action{NodeID: n.ID, NodeName: n.Name, Reason: why})
}

func short(id string) string { return id[:min(len(id), 8)] }
