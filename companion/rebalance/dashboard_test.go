package rebalance

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/shoenig/test/must"
)

// dashboardPath is the Grafana dashboard over the companion's metrics.
const dashboardPath = "../dashboard/ferry.json"

// exported is one metric the companion registers, as a dashboard sees it.
type exported struct {
	labels    []string
	counter   bool // its values only make sense through rate() or increase()
	histogram bool // it is served as _bucket, _sum and _count
}

// exportedMetrics are the metrics NewMetrics registers, each with its
// labels and type. Every one is given a value through the code that sets
// it (Gather reports a vector only once it has one), and the test fails
// if a registered metric is left out.
func exportedMetrics(t *testing.T) map[string]exported {
	t.Helper()
	m := NewMetrics()
	m.Record(load.Record{NodeName: "n", Capacity: load.Resources{CPU: 1, MemoryMB: 1}})
	m.setLeader(true)
	m.round(&planner.Plan{Moves: []planner.Decision{{Move: planner.Move{Kind: planner.MoveLive}}}})
	m.moved(migrate.ResultRestored, 1)
	m.pool(capacity.PoolPlan{Pool: "p", Quota: 1})
	m.capacityAction("p", string(capacity.ActPark))
	families, err := m.Registry.Gather()
	must.NoError(t, err)
	registered := make(chan *prometheus.Desc, 64)
	m.Registry.Describe(registered)
	close(registered)
	must.Eq(t, len(registered), len(families), must.Sprint("a registered metric has no value here: set one above"))

	out := map[string]exported{}
	for _, f := range families {
		var labels []string
		for _, lp := range f.GetMetric()[0].GetLabel() {
			labels = append(labels, lp.GetName())
		}
		out[f.GetName()] = exported{
			labels:    labels,
			counter:   f.GetType() == dto.MetricType_COUNTER,
			histogram: f.GetType() == dto.MetricType_HISTOGRAM,
		}
	}
	return out
}

// targetLabels are added to every series by the Prometheus that scrapes it.
var targetLabels = []string{"instance", "job"}

var (
	metricRe   = regexp.MustCompile(`ferry_[a-z_]+`)
	selectorRe = regexp.MustCompile(`(ferry_[a-z_]+)\s*\{([^}]*)\}`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
	groupingRe = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	rateRe     = regexp.MustCompile(`\b(?:rate|irate|increase)\(\s*$`)
	labelValRe = regexp.MustCompile(`^label_values\(\s*(ferry_[a-z_]+)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
)

// resolve maps a series name in a query to the metric that serves it.
func resolve(metrics map[string]exported, name string) (string, bool) {
	if _, ok := metrics[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if ok && metrics[base].histogram {
			return base, true
		}
	}
	return "", false
}

// checkExpr checks one PromQL query against what the companion exports and
// returns the problems found.
func checkExpr(metrics map[string]exported, expr string) []string {
	var problems []string
	known := slices.Clone(targetLabels) // labels any grouping may name
	for _, loc := range metricRe.FindAllStringIndex(expr, -1) {
		name := expr[loc[0]:loc[1]]
		base, ok := resolve(metrics, name)
		if !ok {
			problems = append(problems, fmt.Sprintf("%s is not a metric the companion exports", name))
			continue
		}
		m := metrics[base]
		known = append(known, m.labels...)
		if m.histogram && name != base {
			known = append(known, "le")
		}
		if (m.counter || m.histogram) && !rateRe.MatchString(expr[:loc[0]]) {
			problems = append(problems, fmt.Sprintf("%s is a counter: read it through rate() or increase()", name))
		}
	}
	for _, sel := range selectorRe.FindAllStringSubmatch(expr, -1) {
		base, ok := resolve(metrics, sel[1])
		if !ok {
			continue
		}
		for _, mt := range matcherRe.FindAllStringSubmatch(sel[2], -1) {
			label := mt[1]
			bucketLe := label == "le" && strings.HasSuffix(sel[1], "_bucket") && sel[1] != base
			if !slices.Contains(metrics[base].labels, label) && !slices.Contains(targetLabels, label) && !bucketLe {
				problems = append(problems, fmt.Sprintf("%s has no label %q", sel[1], label))
			}
		}
	}
	for _, grp := range groupingRe.FindAllStringSubmatch(expr, -1) {
		for label := range strings.SplitSeq(grp[1], ",") {
			label = strings.TrimSpace(label)
			if label != "" && !slices.Contains(known, label) {
				problems = append(problems, fmt.Sprintf("no metric in the query has the label %q", label))
			}
		}
	}
	return problems
}

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Datasource  *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	must.NoError(t, err)
	must.True(t, json.Valid(raw), must.Sprint(dashboardPath, " is not valid JSON"))
	var d dashboard
	must.NoError(t, json.Unmarshal(raw, &d))
	return d
}

// TestDashboardMetrics fails when a panel of the dashboard queries a metric
// or label the companion does not export.
func TestDashboardMetrics(t *testing.T) {
	metrics := exportedMetrics(t)
	for _, name := range []string{"ferry_node_usage_ratio", "ferry_moves_total", "ferry_move_downtime_seconds", "ferry_pool_nodes"} {
		must.MapContainsKey(t, metrics, name)
	}
	must.Eq(t, []string{"class", "node", "resource"}, metrics["ferry_node_usage_ratio"].labels)
	must.False(t, metrics["ferry_hot_nodes"].counter)
	must.True(t, metrics["ferry_moves_total"].counter)
	must.True(t, metrics["ferry_move_downtime_seconds"].histogram)

	d := readDashboard(t)
	must.Eq(t, "ferry-companion", d.UID)
	must.Eq(t, "Ferry", d.Title)
	must.GreaterEq(t, 39, d.SchemaVersion)

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			must.NoError(t, json.Unmarshal(v.Query, &q.Query), must.Sprint("variable ", v.Name))
		}
		lv := labelValRe.FindStringSubmatch(q.Query)
		must.SliceLen(t, 3, lv, must.Sprintf("variable %s: %q is not label_values(ferry_..., label)", v.Name, q.Query))
		m, ok := metrics[lv[1]]
		must.True(t, ok, must.Sprintf("variable %s: %s is not a metric the companion exports", v.Name, lv[1]))
		must.SliceContains(t, m.labels, lv[2], must.Sprintf("variable %s: %s has no label %q", v.Name, lv[1], lv[2]))
	}
	must.Eq(t, map[string]string{"datasource": "datasource", "node": "query", "pool": "query"}, vars)

	var rows []string
	queried := map[string]bool{}
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			if p.Type == "row" {
				rows = append(rows, p.Title)
				walk(p.Panels)
				continue
			}
			name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			must.NotEq(t, "", p.Description, must.Sprint(name, " has no description"))
			must.NotNil(t, p.Datasource, must.Sprint(name, " has no datasource"))
			must.Eq(t, "${datasource}", p.Datasource.UID, must.Sprint(name, " does not use the datasource variable"))
			must.SliceNotEmpty(t, p.Targets, must.Sprint(name, " has no query"))
			for _, tg := range p.Targets {
				must.StrContains(t, tg.Expr, "ferry_", must.Sprintf("%s query %s names no ferry metric", name, tg.RefID))
				for _, problem := range checkExpr(metrics, tg.Expr) {
					t.Errorf("%s query %s: %s\n\t%s", name, tg.RefID, problem, tg.Expr)
				}
				for _, series := range metricRe.FindAllString(tg.Expr, -1) {
					base, _ := resolve(metrics, series)
					queried[base] = true
				}
			}
		}
	}
	walk(d.Panels)
	must.Eq(t, []string{"Node load", "Hot nodes and moves", "Pool capacity"}, rows)
	for name := range metrics {
		if !queried[name] {
			t.Logf("no panel shows %s yet", name)
		}
	}
}

// TestDashboardCheckExpr shows that the dashboard's check catches what it
// should.
func TestDashboardCheckExpr(t *testing.T) {
	metrics := exportedMetrics(t)
	for _, tc := range []struct {
		expr string
		ok   bool
	}{
		{`max by (node) (ferry_node_usage_ratio{node=~"$node", class="online"})`, true},
		{`histogram_quantile(0.95, sum by (le) (rate(ferry_move_downtime_seconds_bucket[5m])))`, true},
		{`max(ferry_hot_nodes and on (instance) (ferry_planner_leader == 1))`, true},
		{`sum(rate(ferry_moves_total[5m]))`, true},
		{`ferry_node_load`, false},
		{`sum(rate(ferry_moves[5m]))`, false},
		{`ferry_moves_total`, false},
		{`ferry_hot_nodes_bucket`, false},
		{`ferry_node_usage_ratio{pool="a"}`, false},
		{`max by (pool) (ferry_node_usage_ratio)`, false},
		{`sum by (le) (rate(ferry_moves_total[5m]))`, false},
	} {
		problems := checkExpr(metrics, tc.expr)
		must.Eq(t, tc.ok, len(problems) == 0, must.Sprintf("%s: %v", tc.expr, problems))
	}
}
