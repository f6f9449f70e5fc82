package load_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/companion/rebalance"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
)

// The simulation's knobs, from the environment (make bench-scale).
const (
	envSim         = "FERRY_SIM"              // anything but empty runs BenchmarkScale
	envAgents      = "FERRY_SIM_AGENTS"       // simulated agents (nodes), 2000
	envDuration    = "FERRY_SIM_DURATION"     // measured time of the publish-on-change run, 3m
	envOldDuration = "FERRY_SIM_OLD_DURATION" // measured time of the write-every-sample run, 0 skips it
	envInterval    = "FERRY_SIM_INTERVAL"     // sample interval, 5s as sample.interval
	envChanging    = "FERRY_SIM_CHANGING"     // fraction of nodes whose work changes, 0.1
)

// The simulated cluster.
const (
	simWindow     = 30 * time.Second // sample.window: the smoothing window
	simRoundEvery = 30 * time.Second // rebalance.interval: one planner round each
	simChangeMean = 2 * time.Minute  // mean time between two changes of a changing node's work
	simNoise      = 0.10             // each raw sample is an allocation's usage ±10%
	simHotShare   = 20               // one node in 20 runs hot online work
	simCPU        = 16000.0          // MHz per node
	simMemoryMB   = 65536.0          // MiB per node
	// simMaxConns bounds the connections of the agents' one shared HTTP
	// client to the Consul server, well within Consul's default of 200
	// per client address (limits.http_max_conns_per_client).
	simMaxConns = 64
	// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's
	// times (100 on every Linux architecture Go supports).
	clockTicks = 100
)

// BenchmarkScale simulates many companion agents publishing their node
// records to one real Consul server on this machine, with the real
// Publisher, and measures what it costs: Consul writes per second per node
// (record writes, session creations and renewals, counted by Consul's own
// metrics), the planner's round over every record (one KV list, the
// snapshot, planner.Round), and the Consul server's CPU. Every node's load
// holds steady with noise; a fraction of nodes see allocations start and
// stop. It runs twice in one go, under the same load: publishing on change
// (Publisher.Offer under DefaultPolicy) and, for comparison, writing every
// sample (Publisher.Publish, with the session TTL of three intervals of
// old). It runs only when FERRY_SIM is set: make bench-scale.
func BenchmarkScale(b *testing.B) {
	if os.Getenv(envSim) == "" {
		b.Skipf("a load simulation of minutes: set %s=1 (make bench-scale)", envSim)
	}
	agents := envValue(b, envAgents, 2000, strconv.Atoi)
	duration := envValue(b, envDuration, 3*time.Minute, time.ParseDuration)
	oldDuration := envValue(b, envOldDuration, min(duration, max(duration/3, time.Minute)), time.ParseDuration)
	interval := envValue(b, envInterval, 5*time.Second, time.ParseDuration)
	changing := envValue(b, envChanging, 0.1, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
	if agents < 1 || duration <= 0 || oldDuration < 0 || interval <= 0 || changing < 0 || changing > 1 {
		b.Fatalf("bad simulation settings: %d agents, %s, %s, %s, %v changing", agents, duration, oldDuration, interval, changing)
	}

	consul := catalogtest.RunConsul(b)
	pid, err := childProcess("consul")
	if err != nil {
		b.Fatal(err)
	}
	writes := load.NewWriteCounter(&http.Transport{
		MaxConnsPerHost:     simMaxConns,
		MaxIdleConnsPerHost: simMaxConns,
		IdleConnTimeout:     time.Minute,
	})
	client, err := consulapi.NewClient(&consulapi.Config{Address: consul.Addr, HttpClient: &http.Client{Transport: writes}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	metrics := &consulMetrics{intervals: map[time.Time]map[string]int{}}
	go metrics.poll(ctx, client)

	sim := &simulation{
		consul: client, consulPID: pid, writes: writes, metrics: metrics,
		agents: agents, interval: interval, changing: changing, stubs: nodeStubs(agents),
	}
	b.Logf("simulating %d agents against Consul at %s (pid %d), sampling every %s", agents, consul.Addr, pid, interval)
	onChange, err := sim.run(ctx, "sim/on-change/", false, duration)
	if err != nil {
		b.Fatal(err)
	}
	var every *phase
	if oldDuration > 0 {
		if every, err = sim.run(ctx, "sim/every-sample/", true, oldDuration); err != nil {
			b.Fatal(err)
		}
	}
	sim.print(os.Stdout, onChange, every)
	b.ReportMetric(onChange.perNode(), "writes/s/node")
	b.ReportMetric(onChange.cpu, "consul-cpu-%")
	if every != nil {
		b.ReportMetric(every.perNode(), "old-writes/s/node")
	}
}

// simulation is one Consul server and the agents' shared client.
type simulation struct {
	consul    *consulapi.Client
	consulPID int
	writes    *load.WriteCounter
	metrics   *consulMetrics

	agents   int
	interval time.Duration
	changing float64
	stubs    []*nomad.NodeListStub
}

// phase is what one run measured.
type phase struct {
	name     string
	policy   string
	measured time.Duration // the agents' measured time
	metered  time.Duration // the part of it Consul's metric intervals cover

	consul map[string]int // Consul's counts over metered, by metric name
	client map[string]int // the agents' PUT requests over measured, by kind
	why    map[string]int // Offer's reasons over measured

	cpu     float64 // Consul's CPU over measured, % of one core
	selfCPU float64 // this process's (the agents'), % of one core
	rounds  []round
	errors  int64
	ttl     time.Duration
	agents  int
}

// round is one planner round over the records.
type round struct {
	list, plan        time.Duration
	records, stale    int
	hot, moves, nodes int
}

// Consul's metrics of writes.
const (
	metricKV      = "consul.kvs.apply"     // record writes
	metricSession = "consul.session.apply" // session creations and destructions
	metricRenew   = "consul.session.renew" // session renewals
	metricRaft    = "consul.raft.apply"    // Raft log entries
	intervalLen   = 10 * time.Second       // the dev agent's metrics interval
	metricsPoll   = 2 * time.Second        // how often the current intervals are read
	warmUpLimit   = 3 * time.Minute        // the longest the agents may take to write once each
	closeLimit    = 2 * time.Minute        // the longest they may take to remove their records
)

// writeMetrics are the metrics that count writes to Consul.
var writeMetrics = []string{metricKV, metricSession, metricRenew}

// run starts the agents under prefix, waits until each wrote its record
// once, measures for d, and stops them (which removes their records).
// everySample writes every sample as agents did before Offer.
func (s *simulation) run(ctx context.Context, prefix string, everySample bool, d time.Duration) (*phase, error) {
	ph := &phase{name: "publish on change", measured: d, agents: s.agents}
	pol := load.DefaultPolicy()
	ph.ttl = pol.SessionTTL()
	ph.policy = fmt.Sprintf("heartbeat %s, dead band %v, session TTL %s", pol.Heartbeat, pol.DeadBand, ph.ttl)
	if everySample {
		ph.name = "write every sample"
		ph.ttl = 3 * s.interval // the SessionTTL of old
		ph.policy = fmt.Sprintf("every %s, session TTL %s", s.interval, ph.ttl)
	}

	actx, stop := context.WithCancel(ctx)
	defer stop()
	var first, errs atomic.Int64
	var why sync.Map // reason -> *atomic.Int64
	var wg sync.WaitGroup
	for i := range s.agents {
		n := newSimNode(i, s.interval, s.changing)
		p := load.NewPublisher(s.consul, prefix, ph.ttl, hclog.NewNullLogger())
		wg.Go(func() {
			s.agent(actx, n, p, everySample, &first, &errs, &why)
		})
	}
	warm := time.Now()
	for first.Load() < int64(s.agents) {
		if time.Since(warm) > warmUpLimit {
			stop()
			wg.Wait()
			return nil, fmt.Errorf("%s: %d of %d agents wrote a record within %s (%d errors)", ph.name, first.Load(), s.agents, warmUpLimit, errs.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Measure.
	why.Range(func(k, v any) bool { v.(*atomic.Int64).Store(0); return true })
	errs.Store(0)
	s.writes.Take()
	cpu0, self0 := cpuTicks(s.consulPID), cpuTicks(os.Getpid())
	start := time.Now()
	end := start.Add(d)
	var state planner.State
	for next := start; next.Before(end); next = next.Add(simRoundEvery) {
		if err := sleepUntil(ctx, next); err != nil {
			return nil, err
		}
		r, err := s.round(ctx, prefix, &state)
		if err != nil {
			return nil, err
		}
		ph.rounds = append(ph.rounds, r)
	}
	if err := sleepUntil(ctx, end); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	cpu1, self1 := cpuTicks(s.consulPID), cpuTicks(os.Getpid())
	ph.client = s.writes.Take()
	ph.errors = errs.Load()
	ph.why = map[string]int{}
	why.Range(func(k, v any) bool { ph.why[k.(string)] = int(v.(*atomic.Int64).Load()); return true })
	ph.cpu = percent(cpu1-cpu0, elapsed)
	ph.selfCPU = percent(self1-self0, elapsed)

	// Consul's own counts, over the metrics intervals within the
	// measured time (the last one is read once it is over).
	if err := sleepUntil(ctx, end.Add(intervalLen+2*metricsPoll)); err != nil {
		return nil, err
	}
	ph.consul, ph.metered = s.metrics.sum(start, end)

	stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeLimit):
		return nil, fmt.Errorf("%s: agents did not stop within %s", ph.name, closeLimit)
	}
	recs, _, err := load.List(ctx, s.consul, prefix)
	if err != nil {
		return nil, err
	}
	if len(recs) != 0 {
		return nil, fmt.Errorf("%s: %d records left after the agents stopped", ph.name, len(recs))
	}
	if ph.metered == 0 {
		return nil, fmt.Errorf("%s: no metrics interval of Consul within %s: measure for longer", ph.name, d)
	}
	return ph, nil
}

// agent is one node's agent: a sample every interval, offered (or
// published, everySample) through its own publisher; its record is
// removed when ctx ends.
func (s *simulation) agent(ctx context.Context, n *simNode, p *load.Publisher, everySample bool, first, errs *atomic.Int64, why *sync.Map) {
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeLimit)
		defer cancel()
		if err := p.Close(cctx); err != nil {
			errs.Add(1)
		}
	}()
	// Agents start within one interval of each other, as a system job's do.
	if sleepUntil(ctx, time.Now().Add(rand.N(s.interval))) != nil {
		return
	}
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	wrote := false
	for {
		rctx, cancel := context.WithTimeout(ctx, max(s.interval, 5*time.Second))
		r := n.sample(time.Now())
		var err error
		w := load.WroteHeartbeat // every sample
		if everySample {
			err = p.Publish(rctx, r)
		} else {
			w, err = p.Offer(rctx, r)
		}
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			errs.Add(1)
		case err == nil && w != load.WroteNothing:
			c, _ := why.LoadOrStore(w, new(atomic.Int64))
			c.(*atomic.Int64).Add(1)
			if !wrote {
				wrote = true
				first.Add(1)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// round is one planner round as the rebalancer runs it, minus Nomad: one
// KV list of the records, the snapshot with every node ready and eligible,
// and planner.Round.
func (s *simulation) round(ctx context.Context, prefix string, state *planner.State) (round, error) {
	t0 := time.Now()
	recs, _, err := load.List(ctx, s.consul, prefix)
	if err != nil {
		return round{}, fmt.Errorf("planner round: %w", err)
	}
	t1 := time.Now()
	in := &rebalance.Inputs{Now: t1, Records: recs, Nodes: s.stubs}
	snap := in.Snapshot()
	cfg := planner.DefaultConfig()
	plan := planner.Round(cfg, *state, snap)
	*state = plan.State
	r := round{list: t1.Sub(t0), plan: time.Since(t1), records: len(recs), nodes: len(snap.Nodes), moves: len(plan.Moves)}
	for _, rec := range recs {
		if rec.Stale(t1) {
			r.stale++
		}
	}
	for _, n := range plan.Nodes {
		if n.Hot {
			r.hot++
		}
	}
	return r, nil
}

// perNode is the writes per second per node by Consul's count.
func (ph *phase) perNode() float64 { return ph.rate(writeMetrics...) }

// rate is the sum of Consul's counts of metrics per second per node.
func (ph *phase) rate(metrics ...string) float64 {
	total := 0
	for _, m := range metrics {
		total += ph.consul[m]
	}
	return perSecond(total, ph.metered) / float64(ph.nodes())
}

// nodes is the number of simulated nodes.
func (ph *phase) nodes() int { return max(1, ph.agents) }

// clientRate is the agents' own count of PUTs of kinds per second per node.
func (ph *phase) clientRate(kinds ...string) float64 {
	total := 0
	for _, k := range kinds {
		total += ph.client[k]
	}
	return perSecond(total, ph.measured) / float64(ph.nodes())
}

// whyRate is Offer's writes for a reason per second per node.
func (ph *phase) whyRate(why string) float64 {
	return perSecond(ph.why[why], ph.measured) / float64(ph.nodes())
}

// print writes the table of both runs (every may be nil).
func (s *simulation) print(out *os.File, on, every *phase) {
	fmt.Fprintf(out, "\nLoad records at scale: %d agents, one Consul server on this machine, a sample every %s (window %s),\n",
		s.agents, s.interval, simWindow)
	fmt.Fprintf(out, "each node steady with noise (±%.0f%% per raw sample), %.0f%% of nodes seeing an allocation start or stop every %s on average.\n\n",
		100*simNoise, 100*s.changing, simChangeMean)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	cols := []*phase{on}
	head := "\t" + on.name
	if every != nil {
		cols = append(cols, every)
		head += "\t" + every.name + "\tratio (on change / every sample)"
	}
	fmt.Fprintln(w, head)
	row := func(label string, f func(*phase) string, ratio func(a, b *phase) string) {
		line := label
		for _, ph := range cols {
			line += "\t" + f(ph)
		}
		if every != nil {
			line += "\t"
			if ratio != nil {
				line += ratio(on, every)
			}
		}
		fmt.Fprintln(w, line)
	}
	num := func(f func(*phase) float64, format string) (func(*phase) string, func(a, b *phase) string) {
		return func(ph *phase) string { return fmt.Sprintf(format, f(ph)) },
			func(a, b *phase) string { return ratioOf(f(a), f(b)) }
	}
	row("policy", func(ph *phase) string { return ph.policy }, nil)
	row("measured (Consul's metrics cover)", func(ph *phase) string {
		return fmt.Sprintf("%s (%s)", ph.measured.Round(time.Second), ph.metered)
	}, nil)
	f, r := num(func(ph *phase) float64 { return ph.perNode() }, "%.4f")
	row("Consul writes/s per node", f, r)
	f, r = num(func(ph *phase) float64 { return ph.rate(metricKV) }, "%.4f")
	row("  record writes (consul.kvs.apply)", f, r)
	f, r = num(func(ph *phase) float64 { return ph.rate(metricRenew) }, "%.4f")
	row("  session renewals (consul.session.renew)", f, r)
	f, r = num(func(ph *phase) float64 { return ph.rate(metricSession) }, "%.4f")
	row("  session creations (consul.session.apply)", f, r)
	f, r = num(func(ph *phase) float64 { return ph.perNode() * float64(ph.nodes()) }, "%.1f")
	row("Consul writes/s, all nodes", f, r)
	f, r = num(func(ph *phase) float64 { return ph.rate(metricRaft) * float64(ph.nodes()) }, "%.1f")
	row("Raft applies/s (consul.raft.apply)", f, r)
	f, r = num(func(ph *phase) float64 { return ph.clientRate("kv", "session/create", "session/renew") }, "%.4f")
	row("agents' own count of writes/s per node", f, r)
	row("  writes by reason, per node per s", func(ph *phase) string {
		if ph != on {
			return "every sample"
		}
		return fmt.Sprintf("change %.4f, heartbeat %.4f, first %.4f",
			ph.whyRate(load.WroteChange), ph.whyRate(load.WroteHeartbeat), ph.whyRate(load.WroteFirst))
	}, nil)
	f, r = num(func(ph *phase) float64 { return ph.cpu }, "%.1f%%")
	row("Consul CPU, % of one core", f, r)
	row("agents' CPU (this process), % of one core", func(ph *phase) string { return fmt.Sprintf("%.1f%%", ph.selfCPU) }, nil)
	f, r = num(func(ph *phase) float64 {
		return ms(median(ph.rounds, func(r round) time.Duration { return r.list + r.plan }))
	}, "%.0f ms")
	row("planner round, median (list + plan)", func(ph *phase) string {
		return fmt.Sprintf("%s (%.0f + %.0f ms)", f(ph),
			ms(median(ph.rounds, func(r round) time.Duration { return r.list })),
			ms(median(ph.rounds, func(r round) time.Duration { return r.plan })))
	}, r)
	f, r = num(func(ph *phase) float64 {
		return ms(maxOf(ph.rounds, func(r round) time.Duration { return r.list + r.plan }))
	}, "%.0f ms")
	row("planner round, max", f, r)
	row("rounds: records, stale, hot nodes, moves", func(ph *phase) string {
		var recs, stale, hot, moves int
		for _, r := range ph.rounds {
			recs, stale, hot, moves = max(recs, r.records), max(stale, r.stale), max(hot, r.hot), max(moves, r.moves)
		}
		return fmt.Sprintf("%d rounds: %d, %d, %d, %d (max)", len(ph.rounds), recs, stale, hot, moves)
	}, nil)
	row("errors", func(ph *phase) string { return strconv.FormatInt(ph.errors, 10) }, nil)
	row("dead agent's record disappears after", func(ph *phase) string {
		// Consul invalidates a session twice its TTL after its last
		// renewal, which came at most a renewal period before death.
		renewal := s.interval
		if ph == on {
			renewal = load.DefaultPolicy().Heartbeat
		}
		return fmt.Sprintf("%s to %s", 2*ph.ttl-renewal, 2*ph.ttl)
	}, nil)
	_ = w.Flush()
	verdict := "met"
	if on.perNode() > 0.05 {
		verdict = "NOT met"
	}
	fmt.Fprintf(out, "\nGoal <= 0.05 writes/s per node at a steady load: %s (%.4f).\n", verdict, on.perNode())
}

// simNode is one simulated node: its allocations' base usage, the raw
// samples of the window, and when its work next changes (never if it is
// steady).
type simNode struct {
	id, name string
	rng      *rand.Rand
	window   int // samples in the smoothing window

	allocs []simAlloc
	seq    int
	next   time.Time // next change; zero: steady
}

type simAlloc struct {
	load.Alloc
	base load.Resources   // mean usage
	raw  []load.Resources // the window's raw samples, newest last
}

// newSimNode is node i: three online services and five offline batch
// allocations; one node in simHotShare runs hot online work.
func newSimNode(i int, interval time.Duration, changing float64) *simNode {
	rng := rand.New(rand.NewPCG(uint64(i), 42))
	n := &simNode{
		id:     simID(i),
		name:   simName(i),
		rng:    rng,
		window: max(1, int(simWindow/interval)),
	}
	online := 0.1 + 0.5*rng.Float64()
	if i%simHotShare == 0 {
		online = 0.85 + 0.1*rng.Float64()
	}
	for range 3 {
		n.add(true, online/3)
	}
	for range 5 {
		n.add(false, 0.02+0.06*rng.Float64())
	}
	if rng.Float64() < changing {
		n.next = time.Now().Add(n.until())
	}
	return n
}

// simID and simName are node i's Nomad node ID and name.
func simID(i int) string   { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }
func simName(i int) string { return fmt.Sprintf("sim-%05d", i) }

// until is the time to the next change of work: exponential, of mean
// simChangeMean.
func (n *simNode) until() time.Duration {
	return time.Duration(n.rng.ExpFloat64() * float64(simChangeMean))
}

// add starts an allocation using share of the node's CPU and memory.
func (n *simNode) add(online bool, share float64) {
	n.seq++
	a := load.Alloc{
		ID:       fmt.Sprintf("%s-a%03d", n.id[:8], n.seq),
		Group:    "g",
		Priority: 50,
		Online:   online,
	}
	if online {
		a.JobID, a.JobType = fmt.Sprintf("svc-%d", n.rng.IntN(500)), planner.JobTypeService
		a.GroupCount, a.MinHealthy = 3, 2
	} else {
		a.JobID, a.JobType = fmt.Sprintf("batch-%d", n.rng.IntN(5000)), planner.JobTypeBatch
		a.Checkpoint, a.GroupCount = true, 1
		a.Priority = 30
	}
	a.Name = a.JobID + ".g[0]"
	base := load.Resources{CPU: share * simCPU, MemoryMB: share * simMemoryMB}
	a.Reserved = load.Resources{CPU: base.CPU * 1.2, MemoryMB: base.MemoryMB * 1.2}
	n.allocs = append(n.allocs, simAlloc{Alloc: a, base: base})
}

// sample is the node's record at now: a raw sample of every allocation
// added to its window, each allocation's usage its window's mean, as the
// Sampler reports. A changing node may first see one batch allocation
// stop, or a new one start.
func (n *simNode) sample(now time.Time) load.Record {
	if !n.next.IsZero() && !now.Before(n.next) {
		n.next = now.Add(n.until())
		offline := slices.IndexFunc(n.allocs, func(a simAlloc) bool { return !a.Online })
		if offline >= 0 && len(n.allocs) > 6 && n.rng.IntN(2) == 0 {
			n.allocs = slices.Delete(n.allocs, offline, offline+1)
		} else {
			n.add(false, 0.05+0.15*n.rng.Float64())
		}
	}
	r := load.Record{
		NodeID: n.id, NodeName: n.name, SampledAt: now.UTC(),
		Source: load.SourceAllocations, Window: simWindow.String(),
		Capacity: load.Resources{CPU: simCPU, MemoryMB: simMemoryMB},
	}
	for i := range n.allocs {
		a := &n.allocs[i]
		noise := func(v float64) float64 { return v * (1 + simNoise*(2*n.rng.Float64()-1)) }
		a.raw = append(a.raw, load.Resources{CPU: noise(a.base.CPU), MemoryMB: noise(a.base.MemoryMB)})
		if len(a.raw) > n.window {
			a.raw = a.raw[1:]
		}
		var sum load.Resources
		for _, s := range a.raw {
			sum.CPU, sum.MemoryMB = sum.CPU+s.CPU, sum.MemoryMB+s.MemoryMB
		}
		al := a.Alloc
		al.Usage = load.Resources{CPU: sum.CPU / float64(len(a.raw)), MemoryMB: sum.MemoryMB / float64(len(a.raw))}
		total := &r.Offline
		if al.Online {
			total = &r.Online
		}
		total.CPU, total.MemoryMB = total.CPU+al.Usage.CPU, total.MemoryMB+al.Usage.MemoryMB
		r.Allocs = append(r.Allocs, al)
		r.Samples = max(r.Samples, len(a.raw))
	}
	return r
}

// nodeStubs is Nomad's node list of the simulated cluster: every node
// ready, eligible, with a healthy ferry driver that can checkpoint.
func nodeStubs(n int) []*nomad.NodeListStub {
	stubs := make([]*nomad.NodeListStub, n)
	for i := range stubs {
		stubs[i] = &nomad.NodeListStub{
			ID: simID(i), Name: simName(i), Datacenter: "dc1", NodePool: "default",
			Status: nomad.NodeStatusReady, SchedulingEligibility: nomad.NodeSchedulingEligible,
			Drivers: map[string]*nomad.DriverInfo{sdk.DriverName: {
				Detected: true, Healthy: true,
				Attributes: map[string]string{sdk.AttrPlatform: "linux/amd64", sdk.AttrCheckpoint: "true"},
			}},
		}
	}
	return stubs
}

// consulMetrics keeps the counts of Consul's finished metrics intervals:
// /v1/agent/metrics shows the last finished one, so reading it more often
// than an interval sees each.
type consulMetrics struct {
	mu        sync.Mutex
	intervals map[time.Time]map[string]int // interval start -> metric -> count
}

func (m *consulMetrics) poll(ctx context.Context, c *consulapi.Client) {
	tick := time.NewTicker(metricsPoll)
	defer tick.Stop()
	for {
		if info, err := c.Agent().Metrics(); err == nil {
			// e.g. "2026-12-06 05:07:30 +0000 UTC"
			if at, err := time.Parse("2006-01-02 15:04:05 -0700 MST", info.Timestamp); err == nil {
				counts := map[string]int{}
				for _, v := range slices.Concat(info.Counters, info.Samples) {
					counts[v.Name] += v.Count
				}
				m.mu.Lock()
				m.intervals[at] = counts
				m.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sum adds up the intervals wholly within [start, end] and returns the
// time they cover.
func (m *consulMetrics) sum(start, end time.Time) (map[string]int, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	var covered time.Duration
	for at, counts := range m.intervals {
		if at.Before(start) || at.Add(intervalLen).After(end) {
			continue
		}
		covered += intervalLen
		for k, v := range counts {
			out[k] += v
		}
	}
	return out, covered
}

// childProcess finds the process ID of this process's child named comm.
func childProcess(comm string) (int, error) {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		name, fields, ok := parseStat(string(data))
		if ok && name == comm && len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			return strconv.Atoi(filepath.Base(filepath.Dir(path)))
		}
	}
	return 0, errors.New("no " + comm + " process started by this one")
}

// parseStat splits /proc/<pid>/stat into the command name and the fields
// after it (state first).
func parseStat(s string) (string, []string, bool) {
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return "", nil, false
	}
	return s[open+1 : closing], strings.Fields(s[closing+1:]), true
}

// cpuTicks is the user and system CPU time of process pid, in clock ticks;
// 0 if it cannot be read.
func cpuTicks(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, fields, ok := parseStat(string(data))
	// utime and stime are the 14th and 15th fields of the line, the 12th
	// and 13th after the command name.
	if !ok || len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return utime + stime
}

// percent is ticks of CPU over d as a percentage of one core.
func percent(ticks int64, d time.Duration) float64 {
	return 100 * float64(ticks) / clockTicks / d.Seconds()
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func ratioOf(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", a/b)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(rounds []round, f func(round) time.Duration) time.Duration {
	if len(rounds) == 0 {
		return 0
	}
	ds := make([]time.Duration, len(rounds))
	for i, r := range rounds {
		ds[i] = f(r)
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func maxOf(rounds []round, f func(round) time.Duration) time.Duration {
	var m time.Duration
	for _, r := range rounds {
		m = max(m, f(r))
	}
	return m
}

// sleepUntil waits until t or the end of ctx.
func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// envValue parses the environment variable name, or returns def when it is
// unset.
func envValue[T any](b *testing.B, name string, def T, parse func(string) (T, error)) T {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := parse(s)
	if err != nil {
		b.Fatalf("%s=%q: %v", name, s, err)
	}
	return v
}
