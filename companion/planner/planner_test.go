package planner

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/config/field"
	"github.com/shoenig/test/must"
)

var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// node is a ready, eligible, checkpoint-capable linux/amd64 node in dc1
// with 10 GHz and 16 GiB, idle unless changed.
func node(name string, opts ...func(*Node)) Node {
	n := Node{
		ID: name, Name: name, Datacenter: "dc1", Pool: "default", Platform: "linux/amd64",
		Ready: true, Eligible: true, CanCheckpoint: true,
		Capacity: Resources{CPU: 10000, MemoryMB: 16384},
	}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func online(cpu, mem float64) func(*Node) {
	return func(n *Node) { n.Online = Resources{CPU: cpu * n.Capacity.CPU, MemoryMB: mem * n.Capacity.MemoryMB} }
}

func offline(cpu, mem float64) func(*Node) {
	return func(n *Node) { n.Offline = Resources{CPU: cpu * n.Capacity.CPU, MemoryMB: mem * n.Capacity.MemoryMB} }
}

var hot = online(0.95, 0.5)

// alloc is a checkpointing batch allocation of its own job at priority 30,
// reserving 500 MHz and 512 MiB, in a group of two with no healthy minimum.
func alloc(id, nodeID string, opts ...func(*Alloc)) Alloc {
	a := Alloc{
		ID: id, JobID: "job-" + id, Group: "g", NodeID: nodeID,
		Priority: 30, JobType: JobTypeBatch, Checkpoint: true,
		Reserved:     Resources{CPU: 500, MemoryMB: 512},
		GroupRunning: 2,
	}
	for _, o := range opts {
		o(&a)
	}
	return a
}

// cfg is the default policy, hot after one round, with roomy limits.
func cfg(opts ...func(*Config)) Config {
	c := DefaultConfig()
	c.Consecutive = 1
	c.Limits = Limits{InFlight: 100, PerNode: 100, PerJob: 100, PerHour: 100, PerRound: 100}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func moves(p Plan) []string {
	var out []string
	for _, d := range p.Moves {
		out = append(out, fmt.Sprintf("%s:%s->%s", d.Move.AllocID, d.Move.From, d.Move.To))
	}
	return out
}

func rejected(p Plan, id string) string {
	var out []string
	for _, r := range p.Rejected {
		if r.AllocID == id || (r.AllocID == "" && r.NodeID == id) {
			out = append(out, r.Reason)
		}
	}
	return strings.Join(out, "; ")
}

func TestHysteresis(t *testing.T) {
	c := cfg(func(c *Config) { c.Consecutive = 3 }) // cpu high 0.80, low 0.65
	cases := []struct {
		name   string
		cpu    []float64
		hot    []bool
		streak []int
	}{
		{"needs K rounds", []float64{0.9, 0.9, 0.9}, []bool{false, false, true}, []int{1, 2, 3}},
		{"streak resets", []float64{0.9, 0.9, 0.7, 0.9, 0.9}, []bool{false, false, false, false, false}, []int{1, 2, 0, 1, 2}},
		{"stays hot between low and high", []float64{0.9, 0.9, 0.9, 0.7, 0.66}, []bool{false, false, true, true, true}, []int{1, 2, 3, 0, 0}},
		{"cools below low", []float64{0.9, 0.9, 0.9, 0.7, 0.6, 0.9}, []bool{false, false, true, true, false, false}, []int{1, 2, 3, 0, 0, 1}},
		{"at high counts", []float64{0.8, 0.8, 0.8}, []bool{false, false, true}, []int{1, 2, 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var st State
			for i, cpu := range tc.cpu {
				p := Round(c, st, Snapshot{Now: now, Nodes: []Node{node("c1", online(cpu, 0.1))}})
				must.Eq(t, tc.hot[i], p.Nodes[0].Hot, must.Sprintf("round %d", i))
				must.Eq(t, tc.streak[i], p.Nodes[0].Streak, must.Sprintf("round %d", i))
				must.Eq(t, cpu, p.Nodes[0].Fraction)
				st = p.State
			}
		})
	}
}

func TestHysteresis_memory(t *testing.T) {
	// Memory over high makes a node hot; it cools only when both are low.
	c := cfg()
	p := Round(c, State{}, Snapshot{Now: now, Nodes: []Node{node("c1", online(0.1, 0.9))}})
	must.True(t, p.Nodes[0].Hot)
	p = Round(c, p.State, Snapshot{Now: now, Nodes: []Node{node("c1", online(0.7, 0.1))}})
	must.True(t, p.Nodes[0].Hot, must.Sprint("cpu 0.7 is not below its low 0.65"))
	p = Round(c, p.State, Snapshot{Now: now, Nodes: []Node{node("c1", online(0.1, 0.1))}})
	must.False(t, p.Nodes[0].Hot)
	must.MapEmpty(t, p.State.Hot)
}

func TestOnlineOffline(t *testing.T) {
	cases := []struct {
		name  string
		src   Node
		alloc Alloc
		want  []string
		why   string
	}{
		{"batch moves off online-hot node", node("c1", hot), alloc("a", "c1"), []string{"a:c1->c2"}, ""},
		{"online work never moves", node("c1", hot), alloc("a", "c1", func(a *Alloc) { a.JobType = JobTypeService; a.Online = true }), nil, ""},
		{"the record's verdict, not the priority, decides", node("c1", hot), alloc("a", "c1", func(a *Alloc) { a.Priority = 99 }), []string{"a:c1->c2"}, ""},
		{"offline usage does not make a node hot", node("c1", online(0.1, 0.1), offline(0.95, 0.95)), alloc("a", "c1"), nil, ""},
		{"system jobs stay even when published offline", node("c1", hot), alloc("a", "c1", func(a *Alloc) { a.JobType = JobTypeSystem }), nil, "system jobs run on every node"},
		{"not movable", node("c1", hot), alloc("a", "c1", func(a *Alloc) { a.Checkpoint = false }), nil, "cannot move: not a checkpointing ferry task"},
		{"restart move", node("c1", hot), alloc("a", "c1", func(a *Alloc) { a.Checkpoint = false; a.RestartMove = true }), []string{"a:c1->c2"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{tc.src, node("c2")}, Allocs: []Alloc{tc.alloc}})
			must.Eq(t, tc.want, moves(p))
			must.StrContains(t, rejected(p, "a"), tc.why)
		})
	}
}

func TestMoveKindAndReason(t *testing.T) {
	p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{node("c1", hot), node("c2")},
		Allocs: []Alloc{alloc("a", "c1"), alloc("b", "c1", func(a *Alloc) { a.Checkpoint = false; a.RestartMove = true })}})
	must.Len(t, 2, p.Moves)
	must.Eq(t, MoveLive, p.Moves[0].Move.Kind)
	must.Eq(t, MoveRestart, p.Moves[1].Move.Kind)
	must.Eq(t, now, p.Moves[0].Move.Started)
	must.Eq(t, Resources{CPU: 500, MemoryMB: 512}, p.Moves[0].Move.Reserved)
	must.StrContains(t, p.Moves[0].Reason, "c1 is hot (online cpu 95%")
	must.StrContains(t, p.Moves[0].Reason, "live move to c2")
}

func TestOrderAndTies(t *testing.T) {
	allocs := []Alloc{
		alloc("z-prio10", "c1", func(a *Alloc) { a.Priority = 10 }),
		alloc("b-big", "c1", func(a *Alloc) { a.Reserved.MemoryMB = 2048 }),
		alloc("c-small", "c1"),
		alloc("a-small", "c1"),
		alloc("custom", "c1", func(a *Alloc) { a.JobType = "custom"; a.Priority = 5 }),
	}
	nodes := []Node{node("c1", hot), node("c3"), node("c2")} // equally idle: ties by name
	c := cfg(func(c *Config) { c.Limits.PerRound = 1 })
	p := Round(c, State{}, Snapshot{Now: now, Nodes: nodes, Allocs: allocs})
	must.Eq(t, []string{"z-prio10:c1->c2"}, moves(p))

	c.Limits.PerRound = 5
	p = Round(c, State{}, Snapshot{Now: now, Nodes: nodes, Allocs: allocs})
	// Each move loads its destination, so they alternate between c2 and c3.
	must.Eq(t, []string{"z-prio10:c1->c2", "a-small:c1->c3", "c-small:c1->c2", "b-big:c1->c3", "custom:c1->c2"}, moves(p))

	// Input order does not matter.
	slices.Reverse(allocs)
	slices.Reverse(nodes)
	p2 := Round(c, State{}, Snapshot{Now: now, Nodes: nodes, Allocs: allocs})
	must.Eq(t, moves(p), moves(p2))
}

func TestHottestFirst(t *testing.T) {
	c := cfg(func(c *Config) { c.Limits.InFlight = 1 })
	p := Round(c, State{}, Snapshot{Now: now,
		Nodes:  []Node{node("c1", online(0.85, 0)), node("c2", online(0.99, 0)), node("c3")},
		Allocs: []Alloc{alloc("a", "c1"), alloc("b", "c2")}})
	must.Eq(t, []string{"b:c2->c3"}, moves(p))
	must.StrContains(t, rejected(p, "c1"), "limits.in_flight reached (1 of 1")
}

func TestLeastLoaded(t *testing.T) {
	p := Round(cfg(), State{}, Snapshot{Now: now,
		Nodes: []Node{node("c1", hot),
			node("c2", online(0.3, 0.1)),
			node("c3", online(0.1, 0.1), offline(0.1, 0.3)), // total mem 0.4
			node("c4", online(0.2, 0.2), offline(0.05, 0))},
		Allocs: []Alloc{alloc("a", "c1")}})
	must.Eq(t, []string{"a:c1->c4"}, moves(p))
}

func TestCooldown(t *testing.T) {
	cases := []struct {
		name  string
		moved time.Time
		want  []string
	}{
		{"never moved", time.Time{}, []string{"a:c1->c2"}},
		{"within cooldown", now.Add(-10 * time.Minute), nil},
		{"after cooldown", now.Add(-31 * time.Minute), []string{"a:c1->c2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{node("c1", hot), node("c2")},
				Allocs: []Alloc{alloc("a", "c1", func(a *Alloc) { a.LastMoved = tc.moved })}})
			must.Eq(t, tc.want, moves(p))
			if tc.want == nil {
				must.Eq(t, "cooldown: moved 10m0s ago, cooldown is 30m0s", rejected(p, "a"))
			}
		})
	}
}

func TestGroupMinHealthy(t *testing.T) {
	grp := func(running, min int) func(*Alloc) {
		return func(a *Alloc) { a.JobID, a.Group, a.GroupRunning, a.GroupMinHealthy = "web", "g", running, min }
	}
	cases := []struct {
		name     string
		allocs   []Alloc
		inFlight []Move
		want     []string
	}{
		{"room for one", []Alloc{alloc("a", "c1", grp(3, 2)), alloc("b", "c1", grp(3, 2))}, nil, []string{"a:c1->c2"}},
		{"at minimum", []Alloc{alloc("a", "c1", grp(2, 2))}, nil, nil},
		{"in flight counts", []Alloc{alloc("a", "c1", grp(3, 2)), alloc("x", "c3", grp(3, 2))},
			[]Move{{AllocID: "x", JobID: "web", From: "c3", To: "c2"}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{node("c1", hot), node("c2"), node("c3")},
				Allocs: tc.allocs, InFlight: tc.inFlight})
			must.Eq(t, tc.want, moves(p))
		})
	}
	p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{node("c1", hot), node("c2")},
		Allocs: []Alloc{alloc("a", "c1", grp(2, 2))}})
	must.Eq(t, "group web/g must keep 2 healthy: 2 running, 0 already moving", rejected(p, "a"))
}

func TestBudgets(t *testing.T) {
	three := []Alloc{alloc("a", "c1"), alloc("b", "c1"), alloc("c", "c1")}
	cases := []struct {
		name     string
		limits   func(*Limits)
		nodes    []Node
		allocs   []Alloc
		inFlight []Move
		recent   []Move
		want     []string
		why      string // a rejection mentions this
	}{
		{"per round", func(l *Limits) { l.PerRound = 2 }, nil, three, nil, nil,
			[]string{"a:c1->c2", "b:c1->c3"}, "limits.per_round reached (2 moves planned off c1"},
		{"in flight", func(l *Limits) { l.InFlight = 2 }, nil, three,
			[]Move{{AllocID: "x", JobID: "x", From: "c9", To: "c8"}}, nil,
			[]string{"a:c1->c2"}, "limits.in_flight reached (2 of 2"},
		{"per hour", func(l *Limits) { l.PerHour = 3 }, nil, three,
			[]Move{{AllocID: "x", JobID: "x", From: "c9", To: "c8"}}, []Move{{AllocID: "y", JobID: "y"}},
			[]string{"a:c1->c2"}, "limits.per_hour reached (3 of 3"},
		{"per node, source", func(l *Limits) { l.PerNode = 1 }, nil, three,
			[]Move{{AllocID: "x", JobID: "x", From: "c1", To: "c8"}}, nil,
			nil, "limits.per_node reached (1 of 1 moves already leaving it)"},
		{"per node, destination", func(l *Limits) { l.PerNode = 1 },
			[]Node{node("c1", hot), node("c4", hot), node("c2")},
			[]Alloc{alloc("a", "c1"), alloc("d", "c4")}, nil, nil,
			[]string{"a:c1->c2"}, "no node fits: no other usable node"},
		{"per node, destination in flight", func(l *Limits) { l.PerNode = 1 },
			nil, []Alloc{alloc("a", "c1")}, []Move{{AllocID: "x", JobID: "x", From: "c9", To: "c2"}}, nil,
			[]string{"a:c1->c3"}, "not a destination: limits.per_node reached (1 moves already arriving)"},
		{"per job", func(l *Limits) { l.PerJob = 1 }, nil,
			[]Alloc{alloc("a", "c1", func(a *Alloc) { a.JobID = "j" }), alloc("b", "c1", func(a *Alloc) { a.JobID = "j" })}, nil, nil,
			[]string{"a:c1->c2"}, "limits.per_job reached (1 of 1 moves of job j"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg(func(c *Config) { tc.limits(&c.Limits) })
			nodes := tc.nodes
			if nodes == nil {
				nodes = []Node{node("c1", hot), node("c2"), node("c3")}
			}
			p := Round(c, State{}, Snapshot{Now: now, Nodes: nodes, Allocs: tc.allocs, InFlight: tc.inFlight, Recent: tc.recent})
			must.Eq(t, tc.want, moves(p))
			var all []string
			for _, r := range p.Rejected {
				all = append(all, r.Reason)
			}
			must.StrContains(t, strings.Join(all, "\n"), tc.why)
		})
	}
}

func TestReservation(t *testing.T) {
	big := func(a *Alloc) { a.Reserved = Resources{CPU: 1000, MemoryMB: 6000} }
	t.Run("two moves never overfill one destination", func(t *testing.T) {
		p := Round(cfg(), State{}, Snapshot{Now: now,
			Nodes:  []Node{node("c1", hot), node("c2", online(0.95, 0.1)), node("c3", online(0, 0.5))},
			Allocs: []Alloc{alloc("a", "c1", big), alloc("b", "c2", big)}})
		must.Eq(t, []string{"a:c1->c3"}, moves(p))
		must.Eq(t, "no node fits: c3 lacks 3808 MiB memory (datacenter dc1, pool default also has 1 other hot node)", rejected(p, "b"))
	})
	t.Run("in-flight reservations count", func(t *testing.T) {
		p := Round(cfg(), State{}, Snapshot{Now: now,
			Nodes:    []Node{node("c1", hot), node("c2", online(0, 0.5)), node("c3", online(0.2, 0.6))},
			Allocs:   []Alloc{alloc("a", "c1", big)},
			InFlight: []Move{{AllocID: "x", JobID: "x", From: "c9", To: "c2", Reserved: Resources{MemoryMB: 6000}}}})
		must.Eq(t, []string{"a:c1->c3"}, moves(p))
	})
	t.Run("planned moves reorder destinations", func(t *testing.T) {
		p := Round(cfg(), State{}, Snapshot{Now: now,
			Nodes:  []Node{node("c1", hot), node("c2"), node("c3", online(0.04, 0.04))},
			Allocs: []Alloc{alloc("a", "c1", big), alloc("b", "c1")}})
		must.Eq(t, []string{"b:c1->c2", "a:c1->c3"}, moves(p))
	})
}

func TestPlatform(t *testing.T) {
	arm := func(n *Node) { n.Platform = "linux/arm64" }
	cross := func(a *Alloc) { a.CrossArch = true }
	cases := []struct {
		name  string
		nodes []Node
		alloc Alloc
		want  []string
		kind  MoveKind
		why   string
	}{
		{"same platform first", []Node{node("c1", hot), node("c2", arm), node("c3", online(0.5, 0.5))},
			alloc("a", "c1", cross), []string{"a:c1->c3"}, MoveLive, ""},
		{"other platform only with CrossArch", []Node{node("c1", hot), node("c2", arm)},
			alloc("a", "c1"), nil, "", "no node fits: c2 other platform"},
		{"cold move across platforms", []Node{node("c1", hot), node("c2", arm)},
			alloc("a", "c1", cross), []string{"a:c1->c2"}, MoveRestart, ""},
		{"live move needs a checkpoint-capable destination", []Node{node("c1", hot), node("c2", func(n *Node) { n.CanCheckpoint = false })},
			alloc("a", "c1"), nil, "", "no node fits: c2 cannot checkpoint"},
		{"restart move falls back to any node", []Node{node("c1", hot), node("c2", func(n *Node) { n.CanCheckpoint = false })},
			alloc("a", "c1", func(a *Alloc) { a.RestartMove = true }), []string{"a:c1->c2"}, MoveRestart, ""},
		{"source cannot checkpoint", []Node{node("c1", hot, func(n *Node) { n.CanCheckpoint = false }), node("c2")},
			alloc("a", "c1"), nil, "", "cannot move: the source node cannot checkpoint"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: tc.nodes, Allocs: []Alloc{tc.alloc}})
			must.Eq(t, tc.want, moves(p))
			if tc.want != nil {
				must.Eq(t, tc.kind, p.Moves[0].Move.Kind)
			}
			must.StrContains(t, rejected(p, "a"), tc.why)
		})
	}
}

func TestNoNodeFits(t *testing.T) {
	p := Round(cfg(), State{}, Snapshot{Now: now,
		Nodes: []Node{
			node("ferry-c1", hot),
			node("ferry-c2", offline(0.1, 0.99)),
			node("ferry-c3", func(n *Node) { n.Platform = "linux/arm64" }),
		},
		Allocs: []Alloc{alloc("a", "ferry-c1", func(a *Alloc) { a.Reserved.MemoryMB = 512 + 0.01*16384 })}})
	must.Nil(t, p.Moves)
	must.Eq(t, "no node fits: ferry-c2 lacks 512 MiB memory, ferry-c3 other platform", rejected(p, "a"))
	must.Eq(t, "hot, but no allocation moves off it this round (see the allocations' reasons)", rejected(p, "ferry-c1"))
}

func TestNoNodeFits_many(t *testing.T) {
	nodes := []Node{node("c00", hot)}
	for i := 1; i <= 8; i++ {
		nodes = append(nodes, node(fmt.Sprintf("c%02d", i), offline(0.99, 0.1)))
	}
	p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: nodes,
		Allocs: []Alloc{alloc("a", "c00"), alloc("b", "c00", func(a *Alloc) { a.Reserved.CPU = 600 })}})
	must.Eq(t, "no node fits: c01 lacks 400 MHz cpu, c02 lacks 400 MHz cpu, c03 lacks 400 MHz cpu, c04 lacks 400 MHz cpu, c05 lacks 400 MHz cpu, and 3 more", rejected(p, "a"))
	must.Eq(t, "no node fits: 8 linux/amd64 nodes are too full for 500 MHz cpu and 512 MiB memory", rejected(p, "b"))
}

func TestExcludedDestinations(t *testing.T) {
	cases := []struct {
		name string
		dst  func(*Node)
		why  string
	}{
		{"draining", func(n *Node) { n.Draining = true }, "not a destination: draining"},
		{"ineligible", func(n *Node) { n.Eligible = false }, "not a destination: ineligible for scheduling"},
		{"not ready", func(n *Node) { n.Ready = false }, "not a destination: not ready"},
		{"no capacity", func(n *Node) { n.Capacity = Resources{} }, "not a destination: no capacity reported"},
		{"no ferry driver", func(n *Node) { n.Platform = "" }, "not a destination: no healthy ferry driver"},
		{"other datacenter", func(n *Node) { n.Datacenter = "dc2" }, ""},
		{"other pool", func(n *Node) { n.Pool = "gpu" }, ""},
		{"hot", hot, "hot, but no allocation moves off it this round (see the allocations' reasons)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{node("c1", hot), node("c2", tc.dst)},
				Allocs: []Alloc{alloc("a", "c1")}})
			must.Nil(t, p.Moves)
			must.StrHasPrefix(t, "no node fits: no other usable node", rejected(p, "a"))
			must.Eq(t, tc.why, rejected(p, "c2"))
		})
	}
	p := Round(cfg(), State{}, Snapshot{Now: now,
		Nodes:  []Node{node("c1", hot), node("c2", func(n *Node) { n.Draining = true }), node("c3", hot)},
		Allocs: []Alloc{alloc("a", "c1")}})
	must.Eq(t, "no node fits: no other usable node (datacenter dc1, pool default also has 1 other hot node and 1 unavailable node)", rejected(p, "a"))
}

func TestAlreadyMoving(t *testing.T) {
	p := Round(cfg(), State{}, Snapshot{Now: now, Nodes: []Node{node("c1", hot), node("c2")},
		Allocs: []Alloc{alloc("a", "c1")}, InFlight: []Move{{AllocID: "a", JobID: "job-a", From: "c1", To: "c2"}}})
	must.Nil(t, p.Moves)
	must.Eq(t, "already moving", rejected(p, "a"))
}

func TestValidate(t *testing.T) {
	must.NoError(t, DefaultConfig().Validate())
	cases := []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"high below low", func(c *Config) { c.Thresholds.CPU = Threshold{High: 0.9, Low: 0.95} },
			[]string{`threshold "cpu".high: 0.9 must be above threshold "cpu".low (0.95)`}},
		{"out of range", func(c *Config) { c.Thresholds.Memory = Threshold{High: 1.5, Low: 0} },
			[]string{`threshold "memory".high: 1.5 must be a fraction`, `threshold "memory".low: 0 must be a fraction`}},
		{"consecutive", func(c *Config) { c.Consecutive = 0 }, []string{"consecutive: 0 must be at least 1"}},
		{"online priority", func(c *Config) { c.OnlinePriority = 101 }, []string{"online_priority: 101 must be a Nomad job priority between 1 and 100"}},
		{"cooldown", func(c *Config) { c.Cooldown = -time.Second }, []string{"cooldown: -1s must not be negative"}},
		{"every limit", func(c *Config) { c.Limits = Limits{} }, []string{
			"limits.in_flight: 0 must be at least 1", "limits.per_node: 0", "limits.per_job: 0", "limits.per_hour: 0", "limits.per_round: 0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			must.Error(t, err)
			for _, w := range tc.want {
				must.StrContains(t, err.Error(), w)
			}
			must.Eq(t, len(tc.want), len(strings.Split(err.Error(), "\n")))
		})
	}

	// Written at a path, as the companion's file writes the policy flat in
	// its rebalance block, each error names the field from there.
	c := DefaultConfig()
	c.Thresholds.CPU.High, c.Limits.PerJob = 2, 0
	errs := c.ValidateAt("rebalance")
	must.Len(t, 2, errs)
	var fe *field.Error
	must.True(t, errors.As(errs[0], &fe))
	must.Eq(t, `rebalance.threshold "cpu".high`, fe.Path)
	must.EqError(t, errs[1], "rebalance.limits.per_job: 0 must be at least 1")
}
