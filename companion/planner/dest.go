package planner

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// dest is a node that can receive moves this round.
type dest struct {
	node *Node
	used Resources // measured usage plus reservations moving toward it
	load float64   // max of cpu and memory fractions of used
}

func (d *dest) setUsed(u Resources) {
	d.used = u
	d.load = max(u.CPU/d.node.Capacity.CPU, u.MemoryMB/d.node.Capacity.MemoryMB)
}

func (d *dest) free() Resources {
	return Resources{
		CPU:      d.node.Capacity.CPU - d.used.CPU,
		MemoryMB: d.node.Capacity.MemoryMB - d.used.MemoryMB,
	}
}

func lessDest(a, b *dest) int {
	if c := cmp.Compare(a.load, b.load); c != 0 {
		return c
	}
	if c := cmp.Compare(a.node.Name, b.node.Name); c != 0 {
		return c
	}
	return cmp.Compare(a.node.ID, b.node.ID)
}

// destList holds the destinations of one datacenter, pool, platform and
// checkpoint ability, least loaded first. Within a round room only
// shrinks, so requests that found no room are remembered in failed and
// any request at least as large fails without a scan.
type destList struct {
	platform   string
	checkpoint bool
	nodes      []*dest
	failed     []Resources
}

// pool is every destination sharing a datacenter and node pool.
type pool struct {
	dc, name         string
	lists            []*destList // by platform, checkpoint-capable first
	hot, unavailable int
}

type poolKey struct{ dc, pool string }

type destinations struct {
	pools map[poolKey]*pool
}

// newDestinations sorts every usable destination once, by load. Nodes that
// can never be a destination this round get a rejection saying why; hot
// nodes are only counted.
func newDestinations(r *round) destinations {
	incoming := make(map[string]Resources, len(r.snap.InFlight))
	for _, m := range r.snap.InFlight {
		incoming[m.To] = incoming[m.To].add(m.Reserved)
	}
	type listKey struct {
		poolKey
		platform   string
		checkpoint bool
	}
	ds := destinations{pools: map[poolKey]*pool{}}
	lists := map[listKey]*destList{}
	all := make([]dest, 0, len(r.snap.Nodes)-len(r.hot))
	for i := range r.snap.Nodes {
		n := &r.snap.Nodes[i]
		pk := poolKey{n.Datacenter, n.Pool}
		p := ds.pools[pk]
		if p == nil {
			p = &pool{dc: n.Datacenter, name: n.Pool}
			ds.pools[pk] = p
		}
		if r.isHot[i] {
			p.hot++
			continue
		}
		if why := r.unavailable(n); why != "" {
			p.unavailable++
			r.rejectNode(n, "not a destination: "+why)
			continue
		}
		lk := listKey{pk, n.Platform, n.CanCheckpoint}
		l := lists[lk]
		if l == nil {
			l = &destList{platform: n.Platform, checkpoint: n.CanCheckpoint}
			lists[lk] = l
			p.lists = append(p.lists, l)
		}
		all = append(all, dest{node: n})
		d := &all[len(all)-1]
		d.setUsed(n.Online.add(n.Offline).add(incoming[n.ID]))
		l.nodes = append(l.nodes, d)
	}
	for _, p := range ds.pools {
		slices.SortFunc(p.lists, func(a, b *destList) int {
			if c := cmp.Compare(a.platform, b.platform); c != 0 {
				return c
			}
			if a.checkpoint != b.checkpoint {
				if a.checkpoint {
					return -1
				}
				return 1
			}
			return 0
		})
		for _, l := range p.lists {
			slices.SortFunc(l.nodes, lessDest)
		}
	}
	return ds
}

// unavailable says why n can never receive a move this round, if so.
func (r *round) unavailable(n *Node) string {
	switch {
	case !n.Ready:
		return "not ready"
	case !n.Eligible:
		return "ineligible for scheduling"
	case n.Draining:
		return "draining"
	case n.Platform == "":
		return "no healthy ferry driver"
	case n.Capacity.CPU <= 0 || n.Capacity.MemoryMB <= 0:
		return "no capacity reported"
	case r.budget.destFull(n.ID):
		return fmt.Sprintf("limits.per_node reached (%d moves already arriving)", r.budget.to[n.ID])
	}
	return ""
}

// placement is where a planned move lands: nodes[i] of list.
type placement struct {
	list *destList
	i    int
}

func (p placement) dest() *dest { return p.list.nodes[p.i] }

// place finds the least-loaded destination with room for a, trying in turn
// a live move to a checkpoint-capable node of the same platform, a restart
// move to any node of the same platform, and a cold move to another
// platform, as far as a allows each. It explains a failure.
func (ds *destinations) place(src *Node, a *Alloc) (placement, MoveKind, string) {
	live := a.Checkpoint && src.CanCheckpoint
	if !live && !a.RestartMove && !a.CrossArch {
		return placement{}, "", "cannot move: the source node cannot checkpoint and the job has not opted into restart moves"
	}
	p := ds.pools[poolKey{src.Datacenter, src.Pool}]
	var why notes
	scanned := make([]bool, len(p.lists))
	try := func(ok func(l *destList) bool) placement {
		best := placement{}
		for li, l := range p.lists {
			if scanned[li] || !ok(l) {
				continue
			}
			scanned[li] = true
			if i := l.fit(src, a.Reserved, &why); i >= 0 && (best.list == nil || lessDest(l.nodes[i], best.dest()) < 0) {
				best = placement{l, i}
			}
		}
		return best
	}
	if live {
		if pl := try(func(l *destList) bool { return l.platform == src.Platform && l.checkpoint }); pl.list != nil {
			return pl, MoveLive, ""
		}
	}
	if a.RestartMove {
		if pl := try(func(l *destList) bool { return l.platform == src.Platform }); pl.list != nil {
			return pl, MoveRestart, ""
		}
	}
	if a.CrossArch {
		if pl := try(func(l *destList) bool { return l.platform != src.Platform }); pl.list != nil {
			return pl, MoveRestart, ""
		}
	}
	// Explain the nodes never looked at.
	for li, l := range p.lists {
		if scanned[li] {
			continue
		}
		what := "other platform"
		if l.platform == src.Platform {
			what = "cannot checkpoint"
		}
		for i, d := range l.nodes {
			if !why.want() {
				why.n += len(l.nodes) - i - 1
				break
			}
			why.add(d.node.Name + " " + what)
		}
	}
	msg := "no node fits: " + why.String()
	if why.n == 0 {
		msg = "no node fits: no other usable node"
	}
	var also []string
	if p.hot > 1 { // the source is one of them
		also = append(also, plural(p.hot-1, "other hot node"))
	}
	if p.unavailable > 0 {
		also = append(also, plural(p.unavailable, "unavailable node"))
	}
	if len(also) > 0 {
		msg += fmt.Sprintf(" (datacenter %s, pool %s also has %s)", p.dc, p.name, strings.Join(also, " and "))
	}
	return placement{}, "", msg
}

// fit returns the index of the least-loaded node in l with room for req, or
// -1, noting why nodes were passed over.
func (l *destList) fit(src *Node, req Resources, why *notes) int {
	for _, f := range l.failed {
		if req.CPU >= f.CPU && req.MemoryMB >= f.MemoryMB {
			if why.want() {
				why.add(fmt.Sprintf("%d %s nodes are too full for %s", len(l.nodes), l.platform, formatRes(f)))
			}
			return -1
		}
	}
	for i, d := range l.nodes {
		if d.node.ID == src.ID {
			continue
		}
		free := d.free()
		if free.CPU >= req.CPU && free.MemoryMB >= req.MemoryMB {
			return i
		}
		if why.want() {
			why.add(d.node.Name + " lacks " + formatRes(Resources{
				CPU:      max(0, req.CPU-free.CPU),
				MemoryMB: max(0, req.MemoryMB-free.MemoryMB),
			}))
		}
	}
	l.failed = append(l.failed, req)
	return -1
}

// commit reserves res on the placement's node and keeps its list sorted;
// a node that may receive no more moves (full) leaves the list.
func (ds *destinations) commit(pl placement, res Resources, full bool) {
	l, d := pl.list, pl.dest()
	d.setUsed(d.used.add(res))
	if full {
		l.nodes = slices.Delete(l.nodes, pl.i, pl.i+1)
		return
	}
	// Its load only grew: slide it right to its new place.
	rest := l.nodes[pl.i+1:]
	j := sort.Search(len(rest), func(k int) bool { return lessDest(d, rest[k]) < 0 })
	copy(l.nodes[pl.i:], rest[:j])
	l.nodes[pl.i+j] = d
}

func formatRes(r Resources) string {
	var parts []string
	if r.CPU > 0 {
		parts = append(parts, fmt.Sprintf("%.0f MHz cpu", r.CPU))
	}
	if r.MemoryMB > 0 {
		parts = append(parts, fmt.Sprintf("%.0f MiB memory", r.MemoryMB))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, " and ")
}

// notes collects the first few reasons and counts the rest.
type notes struct {
	items []string
	n     int
}

const maxNotes = 5

// want counts one more reason and reports whether to spell it out.
func (b *notes) want() bool {
	b.n++
	return len(b.items) < maxNotes
}

func (b *notes) add(s string) { b.items = append(b.items, s) }

func (b *notes) String() string {
	s := strings.Join(b.items, ", ")
	if more := b.n - len(b.items); more > 0 {
		s += fmt.Sprintf(", and %d more", more)
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
