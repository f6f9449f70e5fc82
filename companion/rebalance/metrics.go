package rebalance

import (
	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the companion's Prometheus metrics, served on the agent's
// /metrics. Every agent reports its own node's load; the planner reports
// its rounds and moves.
type Metrics struct {
	Registry *prometheus.Registry

	nodeUsage *prometheus.GaugeVec
	capacity  *prometheus.GaugeVec
	leader    prometheus.Gauge
	hotNodes  prometheus.Gauge
	rounds    prometheus.Counter
	decisions *prometheus.CounterVec
	moves     *prometheus.CounterVec
	downtime  prometheus.Histogram

	poolNodes       *prometheus.GaugeVec
	poolQuota       *prometheus.GaugeVec
	capacityActions *prometheus.CounterVec
}

// NewMetrics registers the metrics in a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		nodeUsage: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_node_usage_ratio",
			Help: "Smoothed measured usage of this node as a fraction of its capacity, by resource and work class.",
		}, []string{"node", "resource", "class"}),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_node_capacity",
			Help: "This node's capacity as Nomad fingerprinted it (cpu in MHz, memory in MiB).",
		}, []string{"node", "resource"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_planner_leader",
			Help: "1 while this agent holds the planner's lock.",
		}),
		hotNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_hot_nodes",
			Help: "Nodes hot in the planner's last round.",
		}),
		rounds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_planner_rounds_total",
			Help: "Planning rounds run by this agent.",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_planner_decisions_total",
			Help: "Planner decisions: planned moves (by kind) and rejections.",
		}, []string{"decision"}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_moves_total",
			Help: "Moves the planner made, by result (restored, cold_start, failed, abandoned, fenced).",
		}, []string{"result"}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_move_downtime_seconds",
			Help:    "Time from stopping an allocation to its replacement running.",
			Buckets: []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300},
		}),
		poolNodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_pool_nodes",
			Help: "Nodes of a pool in the last capacity round, by state: needed (VT), in_service (VA), starting (VB), stopping (VD), parked.",
		}, []string{"pool", "state"}),
		poolQuota: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_pool_quota",
			Help: "The most nodes a pool may have in service (its capacity max).",
		}, []string{"pool"}),
		capacityActions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_capacity_actions_total",
			Help: "Capacity actions taken, by pool and action (unpark, scale_in, cancel, move, park, launch, destroy).",
		}, []string{"pool", "action"}),
	}
	m.Registry.MustRegister(m.nodeUsage, m.capacity, m.leader, m.hotNodes, m.rounds, m.decisions, m.moves, m.downtime,
		m.poolNodes, m.poolQuota, m.capacityActions)
	return m
}

// Record sets this node's load gauges from its latest record.
func (m *Metrics) Record(r load.Record) {
	frac := func(used, capacity float64) float64 {
		if capacity <= 0 {
			return 0
		}
		return used / capacity
	}
	for class, use := range map[string]load.Resources{"online": r.Online, "offline": r.Offline} {
		m.nodeUsage.WithLabelValues(r.NodeName, "cpu", class).Set(frac(use.CPU, r.Capacity.CPU))
		m.nodeUsage.WithLabelValues(r.NodeName, "memory", class).Set(frac(use.MemoryMB, r.Capacity.MemoryMB))
	}
	m.capacity.WithLabelValues(r.NodeName, "cpu").Set(r.Capacity.CPU)
	m.capacity.WithLabelValues(r.NodeName, "memory").Set(r.Capacity.MemoryMB)
}

func (m *Metrics) setLeader(on bool) {
	if on {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
		m.hotNodes.Set(0) // only the planner reports them
	}
}

func (m *Metrics) round(p *planner.Plan) {
	m.rounds.Inc()
	hot := 0
	for _, n := range p.Nodes {
		if n.Hot {
			hot++
		}
	}
	m.hotNodes.Set(float64(hot))
	for _, d := range p.Moves {
		m.decisions.WithLabelValues("move_" + string(d.Move.Kind)).Inc()
	}
	m.decisions.WithLabelValues("reject").Add(float64(len(p.Rejected)))
}

func (m *Metrics) moved(result string, downtimeSeconds float64) {
	m.moves.WithLabelValues(result).Inc()
	if downtimeSeconds > 0 {
		m.downtime.Observe(downtimeSeconds)
	}
}

// pool sets a pool's gauges from its last capacity round.
func (m *Metrics) pool(pp capacity.PoolPlan) {
	for state, v := range map[string]int{"needed": pp.VT, "in_service": pp.VA, "starting": pp.VB, "stopping": pp.VD, "parked": pp.Parked} {
		m.poolNodes.WithLabelValues(pp.Pool, state).Set(float64(v))
	}
	m.poolQuota.WithLabelValues(pp.Pool).Set(float64(pp.Quota))
}

// capacityAction counts one capacity action (or its failure) in pool.
func (m *Metrics) capacityAction(pool, action string) {
	m.capacityActions.WithLabelValues(pool, action).Inc()
}
