package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
)

// Faults mid-move: each test breaks one thing while a task moves, and
// checks that the task runs afterwards (restored, or started fresh as its
// checkpoint.on_restore_failure says), that the outcome is recorded, and
// that nothing is left behind.

// hubIP is the dev cluster's hub address: Consul, the registry, the
// Nomad server.
const hubIP = "10.97.0.1"

// firewall adds an iptables rule in client K's network namespace until the
// returned function (also run at the test's end) removes it.
func firewall(t testing.TB, k string, rule ...string) func() {
	t.Helper()
	ns := "ferry-c" + k
	run := func(op string) error {
		args := append([]string{"netns", "exec", ns, "iptables", op}, rule...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("-I"); err != nil {
		t.Fatal(err)
	}
	removed := false
	remove := func() {
		if !removed {
			removed = true
			if err := run("-D"); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(remove)
	return remove
}

// consulOutage makes Consul unreachable from client K: connections to it
// are reset, as when its agent restarts.
func consulOutage(t testing.TB, k string) func() {
	return firewall(t, k, "OUTPUT", "-p", "tcp", "-d", hubIP, "--dport", "8500", "-j", "REJECT", "--reject-with", "tcp-reset")
}

// gracefulCounter counts in memory every 100 ms and says when it is
// stopped; it writes fill MiB to its rootfs first.
func gracefulCounter(fill int) string {
	return fmt.Sprintf(`dd if=/dev/zero of=/fill bs=1M count=%d 2>/dev/null; `+
		`trap 'echo "stopping at $i"; exit 0' INT TERM; `+
		`i=0; while true; do i=$((i+1)); echo count $i; sleep 0.1; done`, fill)
}

// The disk fills up after CRIU dumped the task, while its rootfs is packed:
// the task is restored in place from CRIU's images and stopped normally
// (its own signal handler runs), the record says failed and why, CRIU's
// images are kept, and the replacement starts fresh.
func TestFaultDiskFullAfterDump(t *testing.T) {
	image := dev.pushBusybox(t, "ferry/busybox:fault")
	dev.runJob(t, checkpointedJob("fault-disk", image, gracefulCounter(24), `enabled = true; on_restore_failure = "cold_start"`))
	t.Cleanup(func() { dev.purge(t, "fault-disk") })
	a := dev.waitAlloc(t, "fault-disk", 2*time.Minute, running)
	dev.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 10 })

	// The source writes its checkpoints to state_dir/checkpoints: 8 MiB
	// holds CRIU's images of a shell, not the 24 MiB of its rootfs.
	k := dev.clientIndex(t, a.NodeID)
	scratch := filepath.Join(dev.env["FERRY_RUN"], "c"+k, "checkpoints")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", scratch).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs on %s: %v: %s", scratch, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", scratch).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", scratch, err, out)
		}
	})

	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", a.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	next := dev.waitAlloc(t, "fault-disk", 3*time.Minute, func(s *nomad.AllocationListStub) bool {
		return s.ID != a.ID && s.ClientStatus == nomad.AllocClientStatusRunning
	})
	events := dev.events(t, a.ID)
	for deadline := time.Now().Add(time.Minute); events.find("Checkpoint failed") == nil && time.Now().Before(deadline); {
		time.Sleep(time.Second)
		events = dev.events(t, a.ID)
	}
	t.Logf("source events:\n%s", events)
	if e := events.find("Checkpoint failed after the dump, restored in place, stopping normally"); e == nil {
		t.Fatalf("no event of the restore in place")
	}
	// The restored task got its kill signal: it printed where it stopped.
	oldLog := dev.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return strings.Contains(s, "stopping at") })
	t.Logf("source log ends:\n%s", tail(oldLog, 3))
	rec, err := dev.catalog(t).Get(context.Background(), a.ID, "counter")
	if err != nil {
		t.Fatalf("checkpoint record: %v", err)
	}
	if rec.State != catalog.StateFailed || !strings.Contains(rec.Reason, "restored in place") || !strings.Contains(rec.Reason, "no space left") {
		t.Fatalf("record: state %s, reason %q", rec.State, rec.Reason)
	}
	// CRIU's images are kept; the incomplete rootfs archive is not.
	imgs := filepath.Join(scratch, a.ID, "counter", "images")
	if ents, err := os.ReadDir(imgs); err != nil || len(ents) == 0 {
		t.Fatalf("CRIU's images not kept in %s: %v", imgs, err)
	}
	newLog := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if first := firstCount(newLog); first != 1 {
		t.Fatalf("replacement did not start fresh: first count %d", first)
	}
	newEvents := dev.events(t, next.ID)
	if newEvents.find("Restoring") != nil {
		t.Fatalf("the replacement tried to restore a failed checkpoint:\n%s", newEvents)
	}
	// The dumped container is gone from the source, and so is the restored
	// one: one container of the task, the replacement's.
	dev.purge(t, "fault-disk")
	if out, err := exec.Command("ip", "netns", "exec", "ferry-c"+k, "true").CombinedOutput(); err != nil {
		t.Fatalf("client namespace: %v %s", err, out)
	}
}

// Consul is unreachable from both clients for a few seconds right as the
// task moves: every step of the move retries, and the task resumes from its
// checkpoint.
func TestFaultConsulOutageMidMove(t *testing.T) {
	a := dev.statefulJob(t, "fault-consul")
	states := dev.watchRecord(t, a.ID, "counter")
	var restore []func()
	for _, n := range []string{"1", "2", "3"} {
		restore = append(restore, consulOutage(t, n))
	}
	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", a.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	time.Sleep(5 * time.Second)
	for _, r := range restore {
		r()
	}
	next := dev.replacement(t, "fault-consul", a)
	dev.assertResumed(t, a.ID, next.ID)
	dev.waitRecordGone(t, a.ID)
	seen := <-states
	if len(seen) < 2 || seen[len(seen)-1] != "removed" {
		t.Fatalf("record states: %v", seen)
	}
	t.Logf("record states: %v", seen)
}

// The destination's Nomad client is killed and started again while it
// fetches the task's checkpoint (pushes to it refused, the source's uplink
// slowed so that the fetch takes seconds): the restarted client starts the task again, which takes
// up the interrupted restore, resumes the count, and runs one container;
// the move's steering is undone though its target restarted.
func TestFaultDestinationRestartMidRestore(t *testing.T) {
	a := dev.bigBatchCounter(t, "fault-restart")
	src := dev.clientIndex(t, a.NodeID)
	target := dev.otherNode(t, a.NodeID)
	var dst string
	for _, n := range dev.readyNodes(t) {
		if n.Name == target {
			dst = dev.clientIndex(t, n.ID)
		}
	}
	// No push to the destination: it fetches the checkpoint once it
	// claimed it, slowly.
	firewall(t, src, "OUTPUT", "-p", "tcp", "-d", fmt.Sprintf("10.97.0.%d", 10+atoi(t, dst)), "--dport", "4701",
		"-j", "REJECT", "--reject-with", "tcp-reset")
	unshape := shape(t, src, "50mbit")
	cat := dev.catalog(t)
	restoring := make(chan *catalog.Record, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		r, _ := cat.WaitState(ctx, a.ID, "counter", catalog.StateRestoring, catalog.StateRestored, catalog.StateFailed, catalog.StateColdStart)
		restoring <- r
	}()
	done := make(chan string, 1)
	go func() { done <- dev.companionOut("migrate", a.ID, "--node", target) }()
	r := <-restoring
	if r == nil || r.State != catalog.StateRestoring {
		t.Fatalf("record never seen restoring: %+v", r)
	}
	// A few seconds into the fetch.
	time.Sleep(3 * time.Second)
	// Killed, not stopped: a Nomad client stopped gracefully waits for
	// the task's start, restore included, to return.
	k := dev.clientIndex(t, r.DestNodeID)
	if out, err := runScript(t, dev.root, "kill-client", k); err != nil {
		t.Fatalf("kill-client %s: %v\n%s", k, err, out)
	}
	unshape()
	if out, err := runScript(t, dev.root, "restart-client", k); err != nil {
		t.Fatalf("restart-client %s: %v\n%s", k, err, out)
	}
	t.Logf("ferry-companion migrate:\n%s", <-done)
	next := dev.replacement(t, "fault-restart", a)
	dev.assertResumed(t, a.ID, next.ID)
	events := dev.events(t, next.ID)
	if e := events.find("Resuming the interrupted restore"); e == nil {
		t.Fatalf("the restarted client did not take up the interrupted restore:\n%s", events)
	}
	if ids := dev.containersOf(t, k, next.ID); len(ids) != 1 {
		t.Fatalf("containers of %s on ferry-c%s: %v, want one", next.ID, k, ids)
	}
	dev.waitRecordGone(t, a.ID)
	dev.assertMoveEnded(t, "fault-restart", a)
}

// shape slows client K's uplink to rate until the returned function (also
// run at the test's end) lifts it.
func shape(t testing.TB, k, rate string) func() {
	t.Helper()
	ns := "ferry-c" + k
	tc := func(args ...string) error {
		args = append([]string{"netns", "exec", ns, "tc", "qdisc"}, args...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := tc("add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "64kb", "latency", "500ms"); err != nil {
		t.Fatal(err)
	}
	lifted := false
	lift := func() {
		if !lifted {
			lifted = true
			if err := tc("del", "dev", "eth0", "root"); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(lift)
	return lift
}

// companionOut is companion for another goroutine than the test's: it
// returns the output, an error included, and never fails the test.
func (c *cluster) companionOut(args ...string) string {
	cmd := exec.Command(filepath.Join(c.root, "bin/ferry-companion"), args...)
	cmd.Env = os.Environ()
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s\n(%v)", out, err)
	}
	return string(out)
}

// containersOf lists the running containers of alloc on client K, as
// runc sees them under the driver's state_dir.
func (c *cluster) containersOf(t testing.TB, k, alloc string) []string {
	t.Helper()
	root := filepath.Join(c.env["FERRY_RUN"], "c"+k, "runc")
	out, err := exec.Command("runc", "--root", root, "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc list in %s: %v", root, err)
	}
	var ids []string
	for _, id := range strings.Fields(string(out)) {
		if strings.HasPrefix(id, alloc) {
			ids = append(ids, id)
		}
	}
	return ids
}

// The mover dies (SIGKILL) in the middle of `ferry-companion migrate`,
// after it steered the nodes and stopped the allocation: the planner takes
// the move for abandoned past its deadline, undoes the steering its record
// names, and records it abandoned; the task runs on its replacement.
func TestFaultMoverKilledMidMove(t *testing.T) {
	a := dev.statefulJob(t, "fault-mover")
	target := dev.otherNode(t, a.NodeID)
	cmd := exec.Command(filepath.Join(dev.root, "bin/ferry-companion"), "migrate", a.ID, "--node", target, "--timeout", "20s")
	cmd.Env = os.Environ()
	for k, v := range dev.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	records := dev.migrations(t)
	var rec *migrate.Record
	deadline := time.Now().Add(time.Minute)
	for rec == nil && time.Now().Before(deadline) {
		list, _ := records.List(context.Background())
		for _, m := range list {
			if m.AllocID == a.ID && m.AllocStopped && m.SourceMadeIneligible && m.TargetMarked {
				rec = m
			}
		}
		if rec == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if rec == nil {
		t.Fatal("the move never recorded its steering")
	}
	_ = cmd.Process.Kill()
	if err := <-exited; err == nil {
		t.Fatal("the mover finished before it could be killed")
	}
	t.Logf("mover killed with migration %s in progress", rec.ID)

	// Past its deadline and a minute's grace, the planner closes it.
	var final *migrate.Record
	deadline = time.Now().Add(4 * time.Minute)
	for final == nil && time.Now().Before(deadline) {
		list, _ := records.List(context.Background())
		for _, m := range list {
			if m.ID == rec.ID && m.Result == migrate.ResultAbandoned {
				final = m
			}
		}
		time.Sleep(2 * time.Second)
	}
	if final == nil {
		t.Fatalf("move %s never recorded abandoned", rec.ID)
	}
	t.Logf("abandoned: %s", final.Reason)
	src, _, err := dev.api.Nodes().Info(a.NodeID, nil)
	if err != nil || src.SchedulingEligibility != nomad.NodeSchedulingEligible {
		t.Fatalf("source node left %v (%v)", src.SchedulingEligibility, err)
	}
	for _, n := range dev.readyNodes(t) {
		info, _, err := dev.api.Nodes().Info(n.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := info.Meta[sdk.MetaMigrateTarget]; ok {
			t.Fatalf("node %s still marked as a migration target", n.Name)
		}
	}
	next := dev.replacement(t, "fault-mover", a)
	dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) > 0 })
}

// bigCounter runs a checkpointed service whose task holds about 100 MB of
// memory and counts, as job, and returns its running allocation.
func (c *cluster) bigCounter(t testing.TB, job string) *nomad.AllocationListStub {
	return c.bigCounterWith(t, job, "")
}

// bigCounterWith is bigCounter with more checkpoint settings.
func (c *cluster) bigCounterWith(t testing.TB, job, checkpoint string) *nomad.AllocationListStub {
	t.Helper()
	return c.runCounting(t, job, c.bigCounterJob(t, job, checkpoint))
}

// bigBatchCounter is bigCounter as a batch job, rescheduled as
// jobspecs/stateful.nomad.hcl is, so that it can be moved.
func (c *cluster) bigBatchCounter(t testing.TB, job string) *nomad.AllocationListStub {
	t.Helper()
	spec := c.bigCounterJob(t, job, "")
	spec = strings.Replace(spec, `type        = "service"`, `type        = "batch"`, 1)
	spec = strings.Replace(spec, `group "g" {`, `group "g" {
    reschedule {
      attempts       = 0
      unlimited      = true
      delay          = "5s"
      delay_function = "constant"
    }`, 1)
	return c.runCounting(t, job, spec)
}

// bigCounterJob is the jobspec of bigCounter's job, with more checkpoint
// settings.
func (c *cluster) bigCounterJob(t testing.TB, job, checkpoint string) string {
	t.Helper()
	image := c.pushBusybox(t, "ferry/busybox:fault")
	script := `x=$(yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | head -c 100000000); ` + gracefulCounter(0)
	return checkpointedService(job, image, fmt.Sprintf("command = \"/bin/sh\"\n        args    = [\"-c\", %q]", script), `enabled = true; on_restore_failure = "cold_start"`+checkpoint, 400)
}

// runCounting runs spec as job and returns its allocation once its task
// counted to ten.
func (c *cluster) runCounting(t testing.TB, job, spec string) *nomad.AllocationListStub {
	t.Helper()
	c.runJob(t, spec)
	t.Cleanup(func() { c.purge(t, job) })
	a := c.waitAlloc(t, job, 2*time.Minute, running)
	c.waitLogs(t, a.ID, "counter", 2*time.Minute, func(s string) bool { return lastCount(s) >= 10 })
	return a
}

// moveSlowly moves a with ferry-companion migrate to another node with the
// source's uplink slowed, and returns a few seconds into the checkpoint's
// streaming to the destination (the record says ready once everything but
// the manifest went out); the channel gives the mover's output at its end.
func (c *cluster) moveSlowly(t testing.TB, a *nomad.AllocationListStub) (src, dst string, unshape func(), done <-chan string) {
	t.Helper()
	src = c.clientIndex(t, a.NodeID)
	target := c.otherNode(t, a.NodeID)
	unshape = shape(t, src, "50mbit")
	out := make(chan string, 1)
	go func() { out <- c.companionOut("migrate", a.ID, "--node", target, "--timeout", "5m") }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := c.catalog(t).WaitState(ctx, a.ID, "counter", catalog.StateCheckpointing, catalog.StateFailed)
	if err != nil || r.State == catalog.StateFailed || r.Push == nil {
		t.Fatalf("checkpoint not streaming: %+v %v", r, err)
	}
	// A few seconds into about sixteen of streaming.
	time.Sleep(3 * time.Second)
	if r, err := c.catalog(t).Get(ctx, a.ID, "counter"); err != nil || r.State != catalog.StateCheckpointing {
		t.Fatalf("checkpoint no longer streaming: %+v %v", r, err)
	}
	for _, n := range c.readyNodes(t) {
		if n.Name == target {
			dst = c.clientIndex(t, n.ID)
		}
	}
	return src, dst, unshape, out
}

// assertMoveEnded checks that a's move ended with its task running
// (restored, or started fresh), the outcome recorded by the mover, the
// nodes' steering undone, and no received checkpoint of a left on any
// client.
func (c *cluster) assertMoveEnded(t testing.TB, job string, a *nomad.AllocationListStub) {
	t.Helper()
	next := c.replacement(t, job, a)
	c.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) > 0 })
	events := c.events(t, next.ID)
	t.Logf("replacement events:\n%s", events)
	var result string
	deadline := time.Now().Add(2 * time.Minute)
	for result == "" && time.Now().Before(deadline) {
		list, _ := c.migrations(t).List(context.Background())
		for _, m := range list {
			if m.AllocID == a.ID && m.Result != migrate.ResultInProgress {
				result = m.Result + ": " + m.Reason
			}
		}
		time.Sleep(time.Second)
	}
	if result == "" {
		t.Fatalf("no outcome recorded for the move of %s", a.ID)
	}
	t.Logf("outcome: %s", result)
	for _, n := range c.readyNodes(t) {
		info, _, err := c.api.Nodes().Info(n.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if info.SchedulingEligibility != nomad.NodeSchedulingEligible {
			t.Fatalf("node %s left %s", n.Name, info.SchedulingEligibility)
		}
		if _, ok := info.Meta[sdk.MetaMigrateTarget]; ok {
			t.Fatalf("node %s still marked as a migration target", n.Name)
		}
	}
	// Received checkpoints go once their restore ended, or with the
	// driver's next pass over the records.
	deadline = time.Now().Add(3 * time.Minute)
	for {
		var left []string
		for _, k := range []string{"1", "2", "3"} {
			dir := filepath.Join(c.env["FERRY_RUN"], "c"+k, "incoming", a.ID)
			if _, err := os.Stat(dir); err == nil {
				left = append(left, dir)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("received checkpoints left behind: %v", left)
		}
		time.Sleep(2 * time.Second)
	}
}

// The network between source and destination is cut (packets dropped both
// ways) for longer than a transfer may stall, while the checkpoint streams:
// the stalled push is given up on both sides, and the move ends, restored
// once the network is back or started fresh, with nothing left behind.
func TestFaultNetworkCutMidTransfer(t *testing.T) {
	a := dev.bigCounter(t, "fault-netcut")
	src, dst, unshape, done := dev.moveSlowly(t, a)
	dstIP := fmt.Sprintf("10.97.0.%d", 10+atoi(t, dst))
	cutOut := firewall(t, src, "OUTPUT", "-d", dstIP, "-j", "DROP")
	cutIn := firewall(t, src, "INPUT", "-s", dstIP, "-j", "DROP")
	time.Sleep(40 * time.Second)
	cutOut()
	cutIn()
	unshape()
	t.Logf("ferry-companion migrate:\n%s", <-done)
	dev.assertMoveEnded(t, "fault-netcut", a)
}

// The source's Nomad client (agent and driver) is killed while the
// checkpoint streams, and started again: the checkpoint is never recorded
// ready, so the replacement starts fresh after restore_wait, the outcome is
// recorded, and what the push brought is removed.
func TestFaultSourceKilledMidTransfer(t *testing.T) {
	// The dump's record is left checkpointing: the replacement waits
	// restore_wait for it.
	a := dev.bigCounterWith(t, "fault-srckill", `; restore_wait = "30s"`)
	src, _, unshape, done := dev.moveSlowly(t, a)
	if out, err := runScript(t, dev.root, "kill-client", src); err != nil {
		t.Fatalf("kill-client %s: %v\n%s", src, err, out)
	}
	unshape()
	time.Sleep(5 * time.Second)
	if out, err := runScript(t, dev.root, "restart-client", src); err != nil {
		t.Fatalf("restart-client %s: %v\n%s", src, err, out)
	}
	t.Logf("ferry-companion migrate:\n%s", <-done)
	dev.assertMoveEnded(t, "fault-srckill", a)
}

func atoi(t testing.TB, s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}
