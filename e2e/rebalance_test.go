package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/rebalance"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
)

// rebalanceConfig is the companion's configuration for the rebalancer test:
// fast samples and rounds, and a low CPU threshold that one busy core
// crosses on this machine.
const rebalanceConfig = `
sample {
  interval = "1s"
  window   = "4s"
}
rebalance {
  dry_run      = %t
  interval     = "2s"
  consecutive  = 2
  cooldown     = "10m"
  move_timeout = "3m"
  threshold "cpu" {
    high = 0.25
    low  = 0.15
  }
}
`

// spinnerJob is a CPU-hungry service pinned to one node: online work.
const spinnerJob = `
job "spinner" {
  datacenters = ["*"]
  type        = "service"
  constraint {
    attribute = "${node.unique.name}"
    value     = "%s"
  }
  group "spin" {
    task "spin" {
      driver = "ferry"
      config {
        image   = "%s"
        command = "/bin/sh"
        args    = ["-c", "while :; do :; done"]
      }
      resources {
        cpu    = 500
        memory = 32
      }
    }
  }
}
`

// TestRebalancer: on a three-client cluster, a CPU-hungry service and a
// stateful batch job share node A. In dry run, `plan` and the planner name
// the move and nothing moves; once acting, the companion moves the batch
// job, live, to the least-loaded node; stopping the planner's allocation,
// or killing it, hands the lock on, and nothing moves twice.
func TestRebalancer(t *testing.T) {
	if out, err := runScript(t, dev.root, "up", "--clients", "3"); err != nil {
		t.Fatalf("cluster.sh up --clients 3: %v\n%s", err, out)
	}
	nodes := dev.readyNodes(t)
	if len(nodes) < 3 {
		t.Fatalf("want 3 ready clients, have %d", len(nodes))
	}
	nodeA := nodes[0]
	cfgFile := dev.deployCompanion(t, fmt.Sprintf(rebalanceConfig, true))
	t.Cleanup(func() { dev.deployCompanion(t, "") })

	a := dev.hotWith(t, nodes, func() *nomad.AllocationListStub { return dev.statefulJob(t, "rebalanced") })

	// Dry run: the plan names the move, and nothing moves.
	plan := dev.waitPlan(t, cfgFile, 2*time.Minute, func(out string) bool {
		f := planMove(out, a.ID[:8])
		return f != nil && f[1] == "rebalanced/sim" && f[2] == nodeA.Name && f[3] != nodeA.Name && f[4] == "live"
	})
	if !regexp.MustCompile(`(?m)^` + nodeA.Name + `\s+linux/amd64\s+hot\s`).MatchString(plan) {
		t.Fatalf("the plan does not show %s hot:\n%s", nodeA.Name, plan)
	}
	// Without a file, plan plans with the running planner's policy.
	own := dev.companion(t, "plan")
	if !strings.Contains(own, "Policy: the planner's (saved by ferry-c") || planMove(own, a.ID[:8]) == nil {
		t.Fatalf("plan without -config does not use the planner's policy:\n%s", own)
	}
	time.Sleep(8 * time.Second) // several rounds of the dry-run planner
	if got := dev.migrationsOf(t, a.ID); len(got) != 0 {
		t.Fatalf("dry run moved something: %+v", got)
	}
	if cur, _, err := dev.api.Allocations().Info(a.ID, nil); err != nil || cur.ClientStatus != nomad.AllocClientStatusRunning || cur.DesiredStatus != nomad.AllocDesiredStatusRun {
		t.Fatalf("dry run disturbed the batch allocation: %v %+v", err, cur)
	}

	// Acting: the companion moves the batch job off A, live.
	dev.deployCompanion(t, fmt.Sprintf(rebalanceConfig, false))
	next := dev.replacement(t, "rebalanced", a)
	if next.NodeID == nodeA.ID {
		t.Fatalf("the batch job was replaced on the hot node %s", nodeA.Name)
	}
	dev.assertResumed(t, a.ID, next.ID)
	var moved *migrate.Record
	waitFor(t, time.Minute, "the move's record to finish", func() bool {
		ms := dev.migrationsOf(t, a.ID)
		if len(ms) == 1 && ms[0].Result != "in_progress" {
			moved = ms[0]
			return true
		}
		return false
	})
	if moved.Result != "restored" || moved.SourceNode != nodeA.Name || moved.TargetNode != next.NodeName || moved.Kind != "live" ||
		!strings.Contains(moved.Reason, nodeA.Name+" is hot") {
		t.Fatalf("migration record: %+v", moved)
	}
	status := dev.companion(t, "status")
	if !strings.Contains(status, "restored") || !strings.Contains(status, "Planner: ferry-c") {
		t.Fatalf("status does not show the planner and the move:\n%s", status)
	}

	// The planner's agent counts the move and serves its view.
	holder := dev.planner(t)
	metrics := dev.agentGet(t, holder, "/metrics")
	for _, want := range []string{`ferry_moves_total{result="restored"} 1`, "ferry_planner_leader 1", "ferry_move_downtime_seconds_count 1"} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("the planner's /metrics lack %q:\n%s", want, metrics)
		}
	}
	var st rebalance.Status
	if err := json.Unmarshal([]byte(dev.agentGet(t, holder, "/v1/status")), &st); err != nil {
		t.Fatalf("/v1/status: %v", err)
	}
	if st.Leader == nil || st.Leader.AllocID != holder.AllocID || st.Self == nil || st.LastRound == nil || len(st.Nodes) != 3 {
		t.Fatalf("/v1/status of the planner: %+v", st)
	}

	// Stopping the planner hands the lock to another agent; nothing moves twice.
	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", holder.AllocID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	waitFor(t, time.Minute, "another agent to take the planner's lock", func() bool {
		h, err := rebalance.ReadHolder(context.Background(), dev.catalog(t).Client(), sdk.KeyLeader)
		return err == nil && h != nil && h.AllocID != holder.AllocID
	})
	// Killed outright, a planner cannot release its lock: its session
	// expires and another agent (or its restarted self) takes over.
	killed := dev.planner(t)
	killedAt := time.Now()
	if out, err := dev.nomadCLI(t, "alloc", "signal", "-s", "SIGKILL", killed.AllocID, "agent"); err != nil {
		t.Fatalf("alloc signal: %v\n%s", err, out)
	}
	waitFor(t, 90*time.Second, "a planner after the kill", func() bool {
		h, err := rebalance.ReadHolder(context.Background(), dev.catalog(t).Client(), sdk.KeyLeader)
		return err == nil && h != nil && h.Since.After(killedAt)
	})
	time.Sleep(10 * time.Second) // rounds of the new planner
	if ms := dev.migrationsOf(t, a.ID, next.ID); len(ms) != 1 {
		t.Fatalf("the batch job moved %d times", len(ms))
	}
	if cur, _, err := dev.api.Allocations().Info(next.ID, nil); err != nil || cur.ClientStatus != nomad.AllocClientStatusRunning {
		t.Fatalf("the moved allocation is no longer running: %v", err)
	}

	// A move whose mover died left its source ineligible: the planner
	// closes its record and makes the node eligible again.
	other := nodes[2]
	dev.eligible(t, other.ID, false)
	now := time.Now()
	must(t, dev.migrations(t).Put(context.Background(), &migrate.Record{
		ID: "dead-mover", AllocID: "0000dead", JobID: "ghost",
		SourceNode: other.Name, SourceNodeID: other.ID, SourceMadeIneligible: true,
		Result: "in_progress", StartedAt: now.Add(-20 * time.Minute), Deadline: now.Add(-15 * time.Minute),
	}, nil))
	waitFor(t, time.Minute, "the abandoned move to be closed", func() bool {
		m, err := dev.migrations(t).Get(context.Background(), "dead-mover")
		return err == nil && m.Result == "abandoned"
	})
	if n, _, err := dev.api.Nodes().Info(other.ID, nil); err != nil || n.SchedulingEligibility != nomad.NodeSchedulingEligible {
		t.Fatalf("%s left ineligible by the abandoned move: %v", other.Name, err)
	}
	must(t, dev.migrations(t).Delete(context.Background(), "dead-mover"))
}

// hotWith runs a batch job (run) on nodes[0], A, the other nodes
// ineligible meanwhile, then the CPU-hungry spinner pinned to A; it
// returns the batch job's allocation.
func (c *cluster) hotWith(t testing.TB, nodes []*nomad.NodeListStub, run func() *nomad.AllocationListStub) *nomad.AllocationListStub {
	t.Helper()
	nodeA := nodes[0]
	for _, n := range nodes[1:] {
		c.eligible(t, n.ID, false)
	}
	a := run()
	for _, n := range nodes[1:] {
		c.eligible(t, n.ID, true)
	}
	if a.NodeID != nodeA.ID {
		t.Fatalf("the batch job runs on %s, not %s", a.NodeName, nodeA.Name)
	}
	image := c.pushBusybox(t, "ferry/busybox:spinner")
	c.runJob(t, fmt.Sprintf(spinnerJob, nodeA.Name, image))
	t.Cleanup(func() { c.purge(t, "spinner") })
	c.waitAlloc(t, "spinner", 2*time.Minute, running)
	return a
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// agentGet fetches path from the companion agent of holder's node, inside
// that node's network namespace.
func (c *cluster) agentGet(t testing.TB, holder *rebalance.Holder, path string) string {
	t.Helper()
	ns := holder.NodeName // the dev cluster names namespaces as nodes
	out, err := exec.Command("ip", "netns", "exec", ns, "curl", "-sf", "-m", "10", "http://"+holder.Address+path).Output()
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, holder.NodeName, err)
	}
	return string(out)
}

// readyNodes lists the ready clients, by name.
func (c *cluster) readyNodes(t testing.TB) []*nomad.NodeListStub {
	t.Helper()
	nodes, _, err := c.api.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []*nomad.NodeListStub
	for _, n := range nodes {
		if n.Status == nomad.NodeStatusReady {
			out = append(out, n)
		}
	}
	return out
}

func (c *cluster) eligible(t testing.TB, nodeID string, on bool) {
	t.Helper()
	if _, err := c.api.Nodes().ToggleEligibility(nodeID, on, nil); err != nil {
		t.Fatal(err)
	}
	if !on {
		t.Cleanup(func() { _, _ = c.api.Nodes().ToggleEligibility(nodeID, true, nil) })
	}
}

// deployCompanion resubmits the companion with config as its configuration
// file (the defaults when empty), and returns the file.
func (c *cluster) deployCompanion(t testing.TB, config string) string {
	t.Helper()
	file := ""
	if config != "" {
		file = filepath.Join(t.TempDir(), "companion.hcl")
		if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("bash", filepath.Join(c.root, "scripts/cluster.sh"), "companion")
	cmd.Env = append(os.Environ(), "FERRY_COMPANION_CONFIG="+file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh companion: %v\n%s", err, out)
	}
	return file
}

// planMove is the fields of the line of the plan's moves that moves the
// allocation with ID prefix id: ALLOC JOB FROM TO KIND REASON...
func planMove(plan, id string) []string {
	_, moves, _ := strings.Cut(plan, "Moves (")
	moves, _, _ = strings.Cut(moves, "\n\n")
	for _, line := range strings.Split(moves, "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[0] == id {
			return f
		}
	}
	return nil
}

// companion runs ferry-companion against the dev cluster.
func (c *cluster) companion(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.root, "bin/ferry-companion"), args...)
	cmd.Env = os.Environ()
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	t.Logf("ferry-companion %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("ferry-companion %s: %v", args[0], err)
	}
	return string(out)
}

// waitPlan runs `ferry-companion plan` until its output satisfies ok.
func (c *cluster) waitPlan(t testing.TB, cfgFile string, timeout time.Duration, ok func(string) bool) string {
	t.Helper()
	var out string
	waitFor(t, timeout, "a plan that moves the batch job", func() bool {
		out = c.companion(t, "plan", "-config", cfgFile)
		return ok(out)
	})
	return out
}

// migrationsOf lists the migration records of the allocations given.
func (c *cluster) migrationsOf(t testing.TB, allocs ...string) []*migrate.Record {
	t.Helper()
	all, err := c.migrations(t).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*migrate.Record
	for _, m := range all {
		if slices.Contains(allocs, m.AllocID) {
			out = append(out, m)
		}
	}
	return out
}

// planner is who holds the planner's lock.
func (c *cluster) planner(t testing.TB) *rebalance.Holder {
	t.Helper()
	var h *rebalance.Holder
	waitFor(t, time.Minute, "a planner", func() bool {
		var err error
		h, err = rebalance.ReadHolder(context.Background(), c.catalog(t).Client(), sdk.KeyLeader)
		return err == nil && h != nil && h.AllocID != ""
	})
	b, _ := json.Marshal(h)
	t.Logf("planner: %s", b)
	return h
}

func waitFor(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}
