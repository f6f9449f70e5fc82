package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
)

// capacityConfig sizes the default pool between one and three nodes, with
// short rounds; the rebalancer is off, so that only capacity moves work.
const capacityConfig = `
sample {
  interval = "1s"
  window   = "2s"
}
rebalance {
  enabled      = false
  move_timeout = "3m"
}
capacity "default" {
  min           = 1
  max           = 3
  interval      = "2s"
  scale_in_idle = "15s"
}
`

// capacityJob is a batch job of count allocations reserving memory MiB
// each; with checkpointing its task counts in memory, without it it only
// sleeps (and cannot move). placement is an extra constraint or affinity.
const capacityJob = `
job %q {
  datacenters = ["*"]
  type        = "batch"
  %s
  group "sim" {
    count = %d
    reschedule {
      attempts       = 0
      unlimited      = true
      delay          = "5s"
      delay_function = "constant"
    }
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "counter" {
      driver = "ferry"
      config {
        image   = %q
        command = "/bin/sh"
        args    = ["-c", "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.1; done"]
        checkpoint {
          enabled = %t
        }
      }
      kill_timeout = "2m"
      resources {
        cpu    = 100
        memory = %d
      }
    }
  }
}
`

// TestCapacity: with capacity "default" { min = 1 max = 3 } on three
// clients, the companion parks the idle nodes down to one; batch work that
// does not fit makes it unpark nodes up to the quota and no further; when
// the work shrinks, the node whose work can move leaves service with its
// checkpointing task moved live, and is parked; the node running a task
// that cannot move stays. status shows each step.
func TestCapacity(t *testing.T) {
	if out, err := runScript(t, dev.root, "up", "--clients", "3"); err != nil {
		t.Fatalf("cluster.sh up --clients 3: %v\n%s", err, out)
	}
	if n := len(dev.readyNodes(t)); n != 3 {
		t.Fatalf("want 3 ready clients, have %d", n)
	}
	dev.deployCompanion(t, capacityConfig)
	t.Cleanup(func() {
		// The default companion first, which sizes no pool, so that no
		// planner parks a node again; then every node back in service,
		// unmarked (Nomad then places the companion there too).
		dev.deployCompanion(t, "")
		for _, n := range dev.readyNodes(t) {
			dev.eligible(t, n.ID, true)
			dev.setMeta(t, n.ID, sdk.MetaCapacity, nil)
		}
		waitFor(t, time.Minute, "the companion on every client", func() bool { return len(dev.runningAllocs(t, "ferry-companion")) == 3 })
	})
	// Every agent is a Nomad service, for Prometheus to find.
	waitFor(t, time.Minute, "three ferry-companion service registrations", func() bool {
		regs, _, err := dev.api.Services().Get("ferry-companion", nil)
		return err == nil && len(regs) == 3
	})
	image := dev.pushBusybox(t, "ferry/busybox:capacity")
	nodeMem := dev.nodeMemoryMB(t)

	// Idle: parked down to min.
	st := dev.waitPool(t, 2*time.Minute, "two nodes parked", func(p poolRow) bool { return p.inService == 1 && p.parked == 2 })
	parked := dev.marked(t, sdk.CapacityParked)
	if len(parked) != 2 {
		t.Fatalf("want 2 nodes marked parked, have %v\n%s", parked, st)
	}
	// plan shows the next round, with the running planner's policies.
	if p := poolOf(dev.companion(t, "plan")); p.inService != 1 || p.parked != 2 || !strings.Contains(p.why, "nothing to do") {
		t.Fatalf("plan does not show the pool as status does: %+v", p)
	}

	// Four allocations of 60% of a node: one fits in service, three wait;
	// the pool unparks two, the quota of three allows no more.
	big := nodeMem * 6 / 10
	dev.runJob(t, fmt.Sprintf(capacityJob, "cap-big", "", 4, image, false, big))
	t.Cleanup(func() { dev.purge(t, "cap-big") })
	st = dev.waitPool(t, 2*time.Minute, "three nodes in service at the quota", func(p poolRow) bool {
		return p.inService == 3 && p.parked == 0 && strings.Contains(p.why, "quota of 3")
	})
	if p := poolOf(st); p.needed != 4 {
		t.Fatalf("the pool should need 4 nodes for four allocations that do not share one:\n%s", st)
	}
	dev.waitRunning(t, "cap-big", 3)

	// The work shrinks to a task that cannot move, pinned to one node,
	// and a checkpointing one on another: one node suffices. The idle node
	// is parked; the one with the checkpointing task is taken out by
	// moving it live, then parked; the one whose task cannot move stays.
	dev.purge(t, "cap-big")
	nodes := dev.readyNodes(t)
	fixedNode, liveNode := nodes[0], nodes[1]
	dev.runJob(t, fmt.Sprintf(capacityJob, "cap-fixed", pin(fixedNode.Name, false), 1, image, false, nodeMem*3/10))
	t.Cleanup(func() { dev.purge(t, "cap-fixed") })
	dev.runJob(t, fmt.Sprintf(capacityJob, "cap-live", pin(liveNode.Name, true), 1, image, true, nodeMem*3/10))
	t.Cleanup(func() { dev.purge(t, "cap-live") })
	live := dev.waitAlloc(t, "cap-live", 2*time.Minute, running)
	if live.NodeID != liveNode.ID {
		t.Fatalf("cap-live runs on %s, not %s", live.NodeName, liveNode.Name)
	}
	dev.waitLogs(t, live.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 10 })
	fixed := dev.waitAlloc(t, "cap-fixed", 2*time.Minute, running)

	next := dev.replacement(t, "cap-live", live)
	if next.NodeID != fixedNode.ID {
		t.Fatalf("cap-live moved to %s, not to the node left in service %s", next.NodeName, fixedNode.Name)
	}
	dev.assertResumed(t, live.ID, next.ID)
	var moves []*migrate.Record
	waitFor(t, time.Minute, "the move's final record", func() bool {
		moves = dev.migrationsOf(t, live.ID)
		return len(moves) == 1 && moves[0].Result != migrate.ResultInProgress
	})
	if m := moves[0]; m.Result != migrate.ResultRestored || !strings.Contains(m.Reason, "capacity: "+liveNode.Name+" leaves service") {
		t.Fatalf("the move is not recorded as a live capacity move: %+v", *m)
	}
	st = dev.waitPool(t, 2*time.Minute, "two nodes parked again", func(p poolRow) bool { return p.inService == 1 && p.parked == 2 })
	if got := dev.marked(t, sdk.CapacityParked); !slices.Contains(got, liveNode.Name) || slices.Contains(got, fixedNode.Name) {
		t.Fatalf("parked %v: want %s parked and %s in service\n%s", got, liveNode.Name, fixedNode.Name, st)
	}
	if cur, _, err := dev.api.Allocations().Info(fixed.ID, nil); err != nil || cur.ClientStatus != nomad.AllocClientStatusRunning {
		t.Fatalf("the task that cannot move did not keep running: %v %+v", err, cur)
	}
}

// pin places a job on node: a hard constraint, or an affinity that still
// lets the job move elsewhere.
func pin(node string, soft bool) string {
	if soft {
		return fmt.Sprintf("affinity {\n attribute = \"${node.unique.name}\"\n value = %q\n weight = 100\n }", node)
	}
	return fmt.Sprintf("constraint {\n attribute = \"${node.unique.name}\"\n value = %q\n }", node)
}

// poolRow is the default pool's line in `ferry-companion status`.
type poolRow struct {
	needed, inService, starting, stopping, parked, quota int
	why                                                  string
}

var poolLine = regexp.MustCompile(`(?m)^default\s+eligibility\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(.*)$`)

// poolOf reads the default pool's line from a status.
func poolOf(status string) poolRow {
	m := poolLine.FindStringSubmatch(status)
	if m == nil {
		return poolRow{needed: -1}
	}
	var p poolRow
	fmt.Sscan(strings.Join(m[1:7], " "), &p.needed, &p.inService, &p.starting, &p.stopping, &p.parked, &p.quota)
	p.why = m[7]
	return p
}

// waitPool runs `ferry-companion status` until the default pool's line
// satisfies ok, and returns that status.
func (c *cluster) waitPool(t testing.TB, timeout time.Duration, what string, ok func(poolRow) bool) string {
	t.Helper()
	var out string
	waitFor(t, timeout, what, func() bool {
		out = c.companion(t, "status")
		return ok(poolOf(out))
	})
	return out
}

// marked are the names of the ready nodes whose meta.ferry_capacity is
// value.
func (c *cluster) marked(t testing.TB, value string) []string {
	t.Helper()
	var out []string
	for _, n := range c.readyNodes(t) {
		info, _, err := c.api.Nodes().Info(n.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if info.Meta[sdk.MetaCapacity] == value {
			out = append(out, n.Name)
		}
	}
	return out
}

// setMeta sets (or, with nil, removes) a node's dynamic metadata.
func (c *cluster) setMeta(t testing.TB, node, key string, value *string) {
	t.Helper()
	if _, err := c.api.Nodes().Meta().Apply(&nomad.NodeMetaApplyRequest{NodeID: node, Meta: map[string]*string{key: value}}, nil); err != nil {
		t.Fatal(err)
	}
}

// nodeMemoryMB is the memory a client offers allocations.
func (c *cluster) nodeMemoryMB(t testing.TB) int {
	t.Helper()
	n, _, err := c.api.Nodes().Info(c.readyNodes(t)[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := n.NodeResources.Memory.MemoryMB
	if n.ReservedResources != nil {
		mem -= int64(n.ReservedResources.Memory.MemoryMB)
	}
	return int(mem)
}

// waitRunning waits until count allocations of job run.
func (c *cluster) waitRunning(t testing.TB, job string, count int) {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d allocations of %s running", count, job), func() bool {
		return len(c.runningAllocs(t, job)) == count
	})
}
