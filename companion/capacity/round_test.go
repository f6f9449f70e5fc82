package capacity

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// size is every test node's capacity.
var size = Resources{CPU: 4000, MemoryMB: 8000}

func node(name string, opts ...func(*Node)) Node {
	n := Node{ID: "id-" + name, Name: name, Pool: "default", Ready: true, Eligible: true, Capacity: size}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func parked(n *Node)  { n.Eligible, n.Mark = false, MarkParked }
func parking(n *Node) { n.Eligible, n.Mark = false, MarkParking }

// runs gives a node work reserving mem MiB: live-movable unless fixed.
func runs(id string, mem float64, fixed bool) func(*Node) {
	return func(n *Node) {
		n.Work = append(n.Work, Work{AllocID: id, JobID: "job-" + id, Reserved: Resources{CPU: 100, MemoryMB: mem}, Checkpoint: !fixed})
	}
}

func policy(opts ...func(*Policy)) map[string]Policy {
	p := DefaultPolicy()
	p.Min, p.Max, p.ScaleInIdle = 1, 3, time.Minute
	for _, o := range opts {
		o(&p)
	}
	return map[string]Policy{"default": p}
}

// actions are the plan's actions as "kind node[ alloc|count]".
func actions(pp PoolPlan) []string {
	var out []string
	for _, a := range pp.Actions {
		s := string(a.Kind)
		switch {
		case a.AllocID != "":
			s += " " + a.NodeName + " " + a.AllocID
		case a.Count > 0:
			s += fmt.Sprintf(" %d", a.Count)
		default:
			s += " " + a.NodeName
		}
		out = append(out, s)
	}
	return out
}

func snap(at time.Time, nodes ...Node) Snapshot {
	return Snapshot{Now: at, Nodes: nodes, MoveBudget: 1}
}

func TestIdleNodesParkedDownToMin(t *testing.T) {
	pol := policy()
	nodes := []Node{node("a", runs("x", 1000, false)), node("b"), node("c")}

	// A surplus waits scale_in_idle.
	p := Round(pol, State{}, snap(t0, nodes...))
	must.Eq(t, 1, p.Pools[0].VT)
	must.Eq(t, 3, p.Pools[0].VA)
	must.SliceEmpty(t, p.Pools[0].Actions)
	must.StrContains(t, p.Pools[0].Why, "after 1m0s more of surplus")

	p = Round(pol, p.State, snap(t0.Add(30*time.Second), nodes...))
	must.SliceEmpty(t, p.Pools[0].Actions)

	// Then the idle ones go, down to min, the busy one stays; idle nodes
	// are parked at once.
	p = Round(pol, p.State, snap(t0.Add(time.Minute), nodes...))
	must.Eq(t, []string{"scale_in b", "scale_in c", "park b", "park c"}, actions(p.Pools[0]))
	must.StrContains(t, p.Pools[0].Why, "take 2 out")

	// Once parked they count as such, and nothing more happens.
	p = Round(pol, p.State, snap(t0.Add(2*time.Minute), node("a", runs("x", 1000, false)), node("b", parked), node("c", parked)))
	must.Eq(t, 1, p.Pools[0].VA)
	must.Eq(t, 2, p.Pools[0].Parked)
	must.SliceEmpty(t, p.Pools[0].Actions)
	must.StrContains(t, p.Pools[0].Why, "nothing to do")
}

func TestSurplusMustLast(t *testing.T) {
	pol := policy()
	p := Round(pol, State{}, snap(t0, node("a"), node("b")))
	must.SliceEmpty(t, p.Pools[0].Actions)
	// The demand came back: the surplus starts over.
	s := snap(t0.Add(50*time.Second), node("a", runs("x", 6000, false)), node("b", runs("y", 6000, false)))
	p = Round(pol, p.State, s)
	must.True(t, p.State.Pools["default"].SurplusSince.IsZero())
	p = Round(pol, p.State, snap(t0.Add(70*time.Second), node("a"), node("b")))
	must.SliceEmpty(t, p.Pools[0].Actions, must.Sprint("a new surplus waits the whole scale_in_idle"))
}

func TestQueuedWorkUnparksWithinQuota(t *testing.T) {
	pol := policy()
	nodes := []Node{node("a", runs("x", 6000, false)), node("b", parked), node("c", parked)}
	s := snap(t0, nodes...)
	s.Queued = []Queued{{Pool: "default", JobID: "sim", Group: "g", Count: 1, Reserved: Resources{CPU: 100, MemoryMB: 6000}}}
	p := Round(pol, State{}, s)
	must.Eq(t, 2, p.Pools[0].VT)
	must.Eq(t, []string{"unpark b"}, actions(p.Pools[0]))

	// Work for five nodes (no two of them fit on one), the quota is three.
	s.Queued[0].Count = 4
	p = Round(pol, State{}, s)
	must.Eq(t, 5, p.Pools[0].VT)
	must.Eq(t, []string{"unpark b", "unpark c"}, actions(p.Pools[0]))
	must.StrContains(t, p.Pools[0].Why, "the quota of 3 allows no more")

	// All in service: at the quota.
	p = Round(pol, State{}, snap(t0, node("a", runs("x", 6000, false)), node("b"), node("c")))
	p = Round(pol, State{}, Snapshot{Now: t0, Nodes: []Node{node("a"), node("b"), node("c")}, Queued: s.Queued})
	must.SliceEmpty(t, p.Pools[0].Actions)
	must.StrContains(t, p.Pools[0].Why, "at the quota of 3")
}

func TestScaleInMovesWorkLiveThenParks(t *testing.T) {
	pol := policy(func(p *Policy) { p.ScaleInIdle = 0 })
	// Two nodes each a quarter full: one suffices. The cheaper to move
	// leaves; its task moves live.
	p := Round(pol, State{}, snap(t0, node("a", runs("big", 2000, false)), node("b", runs("small", 1000, false))))
	must.Eq(t, []string{"scale_in b", "move b small"}, actions(p.Pools[0]))
	must.StrContains(t, p.Pools[0].Actions[0].Reason, "pool needs 1 nodes, 2 in service")
	must.StrContains(t, p.Pools[0].Actions[1].Reason, "b leaves service: job job-small moves live")

	// While the move is in flight, the node waits; it is not parked.
	s := snap(t0.Add(time.Second), node("a", runs("big", 2000, false)), node("b", parking, runs("small", 1000, false)))
	s.InFlight = map[string]bool{"small": true}
	p = Round(pol, p.State, s)
	must.SliceEmpty(t, p.Pools[0].Actions)
	must.Eq(t, 1, p.Pools[0].VD)
	must.StrContains(t, p.Pools[0].Waiting[0].Reason, "is moving")

	// Moved: parked.
	p = Round(pol, p.State, snap(t0.Add(time.Minute), node("a", runs("big", 2000, false), runs("small2", 1000, false)), node("b", parking)))
	must.Eq(t, []string{"park b"}, actions(p.Pools[0]))
}

func TestWorkThatCannotMoveKeepsItsNode(t *testing.T) {
	pol := policy(func(p *Policy) { p.ScaleInIdle = 0 })
	// b runs work that cannot move: never taken out; a and c are, the
	// cheaper first, their work moving to b within the budget.
	p := Round(pol, State{}, snap(t0, node("a", runs("x", 1000, false)), node("b", runs("fixed", 500, true)), node("c", runs("y", 900, false))))
	must.Eq(t, []string{"scale_in c", "scale_in a", "move c y"}, actions(p.Pools[0]))
	must.StrContains(t, p.Pools[0].Waiting[0].Reason, "waits for the move budget")

	// When only such nodes are in surplus, none is taken out.
	p = Round(pol, State{}, snap(t0, node("a", runs("f1", 500, true)), node("b", runs("f2", 500, true))))
	must.SliceEmpty(t, p.Pools[0].Actions)
	must.StrContains(t, p.Pools[0].Why, "none taken out, the surplus runs work that cannot move")

	// A stopping node that runs such work (placed before it left service)
	// waits, however long, and is never parked.
	for _, after := range []time.Duration{time.Minute, 24 * time.Hour} {
		p = Round(pol, p.State, snap(t0.Add(after), node("a", runs("x", 1000, false)), node("b", parking, runs("fixed", 500, true))))
		must.SliceEmpty(t, p.Pools[0].Actions)
		must.StrContains(t, p.Pools[0].Waiting[0].Reason, "cannot move: stays out of service until it ends")
	}
}

func TestMoveBudget(t *testing.T) {
	pol := policy(func(p *Policy) { p.ScaleInIdle = 0; p.Min = 0 })
	s := snap(t0, node("a", parking, runs("x1", 100, false), runs("x2", 100, false)), node("b"))
	s.MoveBudget = 2
	s.InFlight = map[string]bool{"elsewhere": true} // a rebalancer move
	p := Round(pol, State{}, s)
	must.Eq(t, []string{"move a x1"}, actions(p.Pools[0]))
	must.StrContains(t, p.Pools[0].Waiting[0].Reason, "waits for the move budget")
}

func TestDemandCancelsScaleInFirst(t *testing.T) {
	pol := policy()
	s := snap(t0, node("a", runs("x", 6000, false)), node("b", parking, runs("y", 6000, false)), node("c", parked))
	p := Round(pol, State{}, s)
	must.Eq(t, 2, p.Pools[0].VT)
	must.Eq(t, []string{"cancel b"}, actions(p.Pools[0]), must.Sprint("a stopping node returns before a parked one"))
}

func TestMinAndMarks(t *testing.T) {
	pol := policy(func(p *Policy) { p.Min = 2; p.ScaleInIdle = 0 })
	// Below min with nothing running: unpark up to min.
	p := Round(pol, State{}, snap(t0, node("a"), node("b", parked), node("c", parked)))
	must.Eq(t, []string{"unpark b"}, actions(p.Pools[0]))
	// A mark left on an eligible node is cleared, the node in service;
	// ineligible nodes without a mark are not the companion's.
	p = Round(pol, State{}, snap(t0, node("a"), node("b", func(n *Node) { n.Mark = MarkParked }), node("c", func(n *Node) { n.Eligible = false })))
	must.Eq(t, []string{"clear b"}, actions(p.Pools[0]))
	must.Eq(t, 2, p.Pools[0].VA)
	must.Eq(t, 0, p.Pools[0].Parked)
	// Other pools are not sized.
	p = Round(pol, State{}, snap(t0, node("a"), node("z", func(n *Node) { n.Pool = "gpu"; n.Mark = MarkParked; n.Eligible = false })))
	must.Len(t, 1, p.Pools)
	must.Eq(t, 1, p.Pools[0].VA)
}

func TestCommandTarget(t *testing.T) {
	pol := policy(func(p *Policy) {
		p.ScaleInIdle = 0
		p.Max = 4
		p.Target = Target{Command: &Command{ScaleOut: []string{"up"}, ScaleIn: []string{"down"}, StartTimeout: 5 * time.Minute}}
	})
	s := snap(t0, node("a", runs("x", 6000, false)))
	s.Queued = []Queued{{Pool: "default", Count: 2, Reserved: Resources{MemoryMB: 6000}}}
	p := Round(pol, State{}, s)
	must.Eq(t, []string{"launch 2"}, actions(p.Pools[0]))

	// The machines are starting: counted as VB, not asked for twice.
	s.Now = t0.Add(time.Minute)
	p = Round(pol, p.State, s)
	must.Eq(t, 2, p.Pools[0].VB)
	must.SliceEmpty(t, p.Pools[0].Actions)

	// One joined: one still starting.
	s.Now, s.Nodes = t0.Add(2*time.Minute), append(s.Nodes, node("n1"))
	p = Round(pol, p.State, s)
	must.Eq(t, 1, p.Pools[0].VB)
	must.SliceEmpty(t, p.Pools[0].Actions)

	// Past start_timeout the missing one is asked for again.
	s.Now = t0.Add(6 * time.Minute)
	p = Round(pol, p.State, s)
	must.Eq(t, 0, p.Pools[0].VB)
	must.Eq(t, []string{"launch 1"}, actions(p.Pools[0]))

	// An idle node is destroyed once, and counts as stopping meanwhile.
	s = snap(t0.Add(10*time.Minute), node("a", runs("x", 1000, false)), node("n1"))
	p = Round(pol, State{}, s)
	must.Eq(t, []string{"scale_in n1", "destroy n1"}, actions(p.Pools[0]))
	s = snap(t0.Add(11*time.Minute), node("a", runs("x", 1000, false)), node("n1", parking))
	p = Round(pol, p.State, s)
	must.SliceEmpty(t, p.Pools[0].Actions)
	must.Eq(t, 1, p.Pools[0].VD)
	must.StrContains(t, p.Pools[0].Waiting[0].Reason, "being destroyed")
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Policy)
		want string
	}{
		{"min negative", func(p *Policy) { p.Min = -1 }, `capacity "default".min: -1 must not be negative`},
		{"max zero", func(p *Policy) { p.Max = 0 }, `capacity "default".max: 0 must be at least 1`},
		{"min over max", func(p *Policy) { p.Min, p.Max = 5, 3 }, `capacity "default".min: 5 must not exceed max (3)`},
		{"interval", func(p *Policy) { p.Interval = 0 }, `capacity "default".interval: 0s must be at least 1s`},
		{"two targets", func(p *Policy) { p.Target.Command = &Command{ScaleOut: []string{"a"}, ScaleIn: []string{"b"}} }, `capacity "default".target: give one target`},
		{"command", func(p *Policy) { p.Target = Target{Command: &Command{}} }, `capacity "default".target "command".scale_out: required`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultPolicy()
			tc.mod(&p)
			err := p.Validate(`capacity "default"`)
			must.Error(t, err)
			must.True(t, strings.Contains(err.Error(), tc.want), must.Sprintf("%v", err))
		})
	}
	must.NoError(t, DefaultPolicy().Validate(`capacity "default"`))
}
