package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/rebalance"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
)

// plannerFaultConfig is the rebalancer test's acting configuration with a
// short move_timeout: a move whose planner died counts as abandoned (past
// its deadline and a minute's grace) under two minutes after it started.
func plannerFaultConfig(t testing.TB) string {
	t.Helper()
	acting := fmt.Sprintf(rebalanceConfig, false)
	cfg := strings.Replace(acting, `move_timeout = "3m"`, `move_timeout = "45s"`, 1)
	if cfg == acting {
		t.Fatal("rebalanceConfig has no move_timeout of 3m to shorten")
	}
	return cfg
}

// companionLines logs the lines of the companion agents' logs (every
// allocation of ferry-companion created since since, the stopped ones
// included) that mention one of needles.
func (c *cluster) companionLines(t testing.TB, since time.Time, needles ...string) {
	t.Helper()
	allocs, _, err := c.api.Jobs().Allocations("ferry-companion", true, nil)
	if err != nil {
		t.Logf("companion allocations: %v", err)
		return
	}
	for _, a := range allocs {
		if a.CreateTime < since.UnixNano() {
			continue
		}
		cmd := exec.Command("nomad", "alloc", "logs", "-stderr", a.ID, "agent")
		cmd.Env = os.Environ()
		for k, v := range c.env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, _ := cmd.CombinedOutput()
		var lines []string
		for _, line := range strings.Split(string(out), "\n") {
			for _, n := range needles {
				if strings.Contains(line, n) {
					lines = append(lines, line)
					break
				}
			}
		}
		if len(lines) > 0 {
			t.Logf("companion agent %s on %s:\n%s", a.ID[:8], a.NodeName, strings.Join(lines, "\n"))
		}
	}
}

// The planner is killed (SIGKILL) in the middle of a move it started: the
// allocation stopped, its 100 MB checkpoint streaming off the hot node over
// a slowed uplink. The drivers finish the move without it: the task
// resumes its count on the planned destination. Another agent, or the
// killed one restarted, takes the planner's lock and, past the move's
// deadline and a minute's grace, closes the dead planner's record and
// undoes its steering; nothing is left behind and nothing moves twice.
func TestFaultPlannerKilledMidMove(t *testing.T) {
	const job = "fault-planner"
	nodes := dev.readyNodes(t)
	if len(nodes) < 3 {
		t.Fatalf("want 3 ready clients, have %d", len(nodes))
	}
	nodeA := nodes[0]
	t.Cleanup(func() { dev.deployCompanion(t, "") })

	a := dev.hotWith(t, nodes, func() *nomad.AllocationListStub { return dev.bigBatchCounter(t, job) })

	// A's uplink slowed, the companion acts: its planner moves the batch
	// job off A.
	unshape := shape(t, dev.clientIndex(t, nodeA.ID), "50mbit")
	deployed := time.Now()
	dev.deployCompanion(t, plannerFaultConfig(t))
	var rec *migrate.Record
	waitFor(t, 2*time.Minute, "the planner to stop the batch allocation for its move", func() bool {
		for _, m := range dev.migrationsOf(t, a.ID) {
			if m.Result == migrate.ResultInProgress && m.AllocStopped {
				rec = m
				return true
			}
		}
		return false
	})
	if rec.Kind != "live" || rec.SourceNode != nodeA.Name || rec.TargetNode == "" || rec.TargetNode == nodeA.Name ||
		!strings.Contains(rec.Reason, nodeA.Name+" is hot") {
		t.Fatalf("the planner's move: %+v", rec)
	}
	cat := dev.catalog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := cat.WaitState(ctx, a.ID, "counter", catalog.StateCheckpointing, catalog.StateFailed)
	if err != nil || cp.State != catalog.StateCheckpointing {
		t.Fatalf("checkpoint not streaming: %+v %v", cp, err)
	}
	// The mover is the agent that held the lock when the move started.
	holder := dev.planner(t)
	if !holder.Since.Before(rec.StartedAt) {
		t.Fatalf("the planner on %s took the lock at %s, after the move started at %s", holder.NodeName, holder.Since, rec.StartedAt)
	}
	// A few seconds into about sixteen of streaming.
	time.Sleep(3 * time.Second)
	if cp, err := cat.Get(ctx, a.ID, "counter"); err != nil || cp.State != catalog.StateCheckpointing {
		t.Fatalf("checkpoint no longer streaming: %+v %v", cp, err)
	}
	killedAt := time.Now()
	if out, err := dev.nomadCLI(t, "alloc", "signal", "-s", "SIGKILL", holder.AllocID, "agent"); err != nil {
		t.Fatalf("alloc signal: %v\n%s", err, out)
	}
	unshape()
	t.Logf("planner %s on %s killed with migration %s in progress (checkpoint pushed: %t)",
		holder.AllocID[:8], holder.NodeName, rec.ID, cp.Push != nil)

	// Killed outright, the planner cannot release its lock: its session
	// expires and another agent (or its restarted self) takes over.
	waitFor(t, 90*time.Second, "a planner after the kill", func() bool {
		h, err := rebalance.ReadHolder(context.Background(), cat.Client(), sdk.KeyLeader)
		return err == nil && h != nil && h.Since.After(killedAt)
	})
	dev.planner(t)

	// The drivers finish the move: the task resumes on the planned node.
	next := dev.replacement(t, job, a)
	if next.NodeName != rec.TargetNode {
		t.Fatalf("the batch job was replaced on %s, not on the planned %s", next.NodeName, rec.TargetNode)
	}
	dev.assertResumed(t, a.ID, next.ID)
	// Nobody follows the move any more: its record says it is in progress
	// until the planner finds it abandoned.
	if m, err := dev.migrations(t).Get(context.Background(), rec.ID); err != nil || m.Result != migrate.ResultInProgress {
		t.Fatalf("the killed planner's move was closed before its deadline: %+v %v", m, err)
	}

	// Closed past its deadline and a minute's grace, within a few rounds.
	var final *migrate.Record
	bound := rec.Deadline.Add(time.Minute + 45*time.Second)
	waitFor(t, time.Until(bound), "the killed planner's move to be closed", func() bool {
		m, err := dev.migrations(t).Get(context.Background(), rec.ID)
		if err == nil && m.Result != migrate.ResultInProgress {
			final = m
			return true
		}
		return false
	})
	t.Logf("move %s closed %s after it started, %s past its deadline: %s: %s", final.ID,
		final.FinishedAt.Sub(final.StartedAt).Round(time.Second), final.FinishedAt.Sub(final.Deadline).Round(time.Second), final.Result, final.Reason)
	if final.SourceMadeIneligible || final.TargetMarked {
		t.Fatalf("the closed record still names steering to undo: %+v", final)
	}
	// The planner that closes it finds what the drivers did: the
	// replacement restored, which its cooldown then covers.
	if final.Result != migrate.ResultAbandoned || !final.AllocStopped || final.NewAllocID != next.ID ||
		!strings.Contains(final.Reason, "after stopping the allocation") || !strings.Contains(final.Reason, "restored from its checkpoint") {
		t.Fatalf("abandoned record: %+v", final)
	}
	dev.assertMoveEnded(t, job, a)
	dev.companionLines(t, deployed, rec.ID, a.ID, "planner lock")
	t.Logf("the killed planner's task:\n%s", strings.Join(dev.taskEvents(t, holder.AllocID, "agent"), "\n"))

	// Rounds of the new planner: A stays hot, and nothing moves again.
	time.Sleep(10 * time.Second)
	if ms := dev.migrationsOf(t, a.ID, next.ID); len(ms) != 1 {
		t.Fatalf("the batch job moved %d times", len(ms))
	}
	if cur, _, err := dev.api.Allocations().Info(next.ID, nil); err != nil || cur.ClientStatus != nomad.AllocClientStatusRunning || cur.NodeID != next.NodeID {
		t.Fatalf("the moved allocation is no longer running where it was restored: %v", err)
	}
}
