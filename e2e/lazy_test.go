package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
	"golang.org/x/sys/unix"
)

// lazyMemtickJob is memtickJob moving lazily (checkpoint.mode = "lazy").
func lazyMemtickJob(id, image string, mib int, every time.Duration) string {
	return checkpointedService(id, image, fmt.Sprintf(`args = ["-mib", "%d", "-every", "%s"]`, mib, every),
		`enabled = true; mode = "lazy"`, mib+96)
}

// runLazyMemtick runs lazyMemtickJob and returns its allocation once it
// ticks.
func (c *cluster) runLazyMemtick(t testing.TB, id string, mib int) *nomad.AllocationListStub {
	t.Helper()
	// memtick checks its memory after a pause of three ticks: a lazy
	// move pauses it for less than 300 ms.
	c.runJob(t, lazyMemtickJob(id, c.memtickImage(t), mib, 10*time.Millisecond))
	t.Cleanup(func() { c.purge(t, id) })
	a := c.waitAlloc(t, id, 3*time.Minute, running)
	c.waitLogs(t, a.ID, "counter", 2*time.Minute, func(s string) bool { return lastCount(s) >= 50 })
	return a
}

// assertMovedLazily checks a lazy move from old to next: the source
// checkpointed without the memory and served it, the destination ran the
// task before its memory came and then had all of it, the memory is
// intact, the record went through restoring_lazy to restored and is gone,
// and the source's paused container is gone too.
func (c *cluster) assertMovedLazily(t testing.TB, old *nomad.AllocationListStub, next *nomad.AllocationListStub, states <-chan []string) {
	t.Helper()
	c.assertResumed(t, old.ID, next.ID)
	c.assertMemoryKept(t, next.ID)
	if e := c.waitEvent(t, old.ID, "Checkpointed lazily for migration", 10*time.Second); e == nil || e.Details[sdk.EventLazy] != "true" {
		t.Fatalf("source events do not show a lazy checkpoint:\n%s", c.events(t, old.ID))
	}
	complete := c.waitEvent(t, next.ID, "Memory complete", time.Minute)
	dst := c.events(t, next.ID)
	restored := dst.find("Restored from checkpoint")
	if restored == nil || restored.Details[sdk.EventLazy] != "true" || complete == nil {
		t.Fatalf("destination events do not show a lazy restore and its memory complete:\n%s", dst)
	}
	if restored.Details[sdk.EventRestore] != string(catalog.StateRestored) || complete.Details[sdk.EventLazyPages] == "" {
		t.Fatalf("lazy events' details: %v, %v", restored.Details, complete.Details)
	}
	c.waitRecordGone(t, old.ID)
	seen := <-states
	if strings.Join(seen, " ") != "checkpointing ready restoring restoring_lazy restored removed" &&
		!strings.Contains(strings.Join(seen, " "), "restoring_lazy restored") {
		t.Fatalf("record states: %v", seen)
	}
	k := c.clientIndex(t, old.NodeID)
	deadline := time.Now().Add(time.Minute)
	for len(c.containersOf(t, k, old.ID)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the source's paused container is still there: %v", c.containersOf(t, k, old.ID))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("record states: %v; %s; %s", seen, restored.DisplayMessage, complete.DisplayMessage)
}

// TestLazyMoveByCompanion: a 256 MiB task with checkpoint.mode = "lazy"
// moved by `ferry-companion migrate` runs on the destination before its
// memory arrived, and then has all of it, intact.
func TestLazyMoveByCompanion(t *testing.T) {
	const job = "lazy-companion"
	a := dev.runLazyMemtick(t, job, 256)
	states := dev.watchRecord(t, a.ID, "counter")
	out := dev.companionMigrate(t, a.ID, dev.otherNode(t, a.NodeID))
	if !strings.Contains(out, "restored from its checkpoint") {
		t.Fatalf("unexpected migrate output:\n%s", out)
	}
	dev.assertMovedLazily(t, a, dev.replacement(t, job, a), states)
}

// TestLazyDrainKeepsMemory: the operator's plain `nomad node drain -enable
// -yes NODE` moves a lazy task with its memory.
func TestLazyDrainKeepsMemory(t *testing.T) {
	const job = "lazy-drain"
	a := dev.runLazyMemtick(t, job, 256)
	states := dev.watchRecord(t, a.ID, "counter")
	t.Cleanup(func() { dev.undrain(t, a.NodeID) })
	if out, err := dev.nomadCLI(t, "node", "drain", "-enable", "-yes", a.NodeID); err != nil {
		t.Fatalf("node drain: %v\n%s", err, out)
	}
	next := dev.replacement(t, job, a)
	if next.NodeID == a.NodeID {
		t.Fatal("the replacement landed on the drained node")
	}
	dev.assertMovedLazily(t, a, next, states)
}

// TestLazyFallsBackToCopy: a drain while no other node is eligible leaves
// the replacement unplaced, so no destination can fetch the memory as the
// task runs: the task moves by copy, with an event saying why, and resumes
// with its memory once a node is eligible.
func TestLazyFallsBackToCopy(t *testing.T) {
	const job = "lazy-fallback"
	a := dev.runLazyMemtick(t, job, 64)
	var others []string
	for _, n := range dev.readyNodes(t) {
		if n.ID != a.NodeID {
			others = append(others, n.ID)
			dev.eligible(t, n.ID, false)
		}
	}
	t.Cleanup(func() { dev.undrain(t, a.NodeID) })
	if out, err := dev.nomadCLI(t, "node", "drain", "-enable", "-yes", "-detach", "-ignore-system", a.NodeID); err != nil {
		t.Fatalf("node drain: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rec, err := dev.catalog(t).WaitState(ctx, a.ID, "counter", catalog.StateReady, catalog.StateFailed)
	if err != nil || rec.State != catalog.StateReady || rec.Lazy != nil {
		t.Fatalf("checkpoint by copy not ready: %+v %v", rec, err)
	}
	if e := dev.waitEvent(t, a.ID, "Moving by copy, not lazily", 30*time.Second); e == nil || !strings.Contains(e.DisplayMessage, "has not placed the replacement") {
		t.Fatalf("source events do not say why the move is by copy:\n%s", dev.events(t, a.ID))
	}
	for _, id := range others {
		dev.eligible(t, id, true)
	}
	next := dev.replacement(t, job, a)
	dev.assertResumed(t, a.ID, next.ID)
	dev.assertMemoryKept(t, next.ID)
	if dst := dev.events(t, next.ID); dst.find("Restored from checkpoint") == nil {
		t.Fatalf("destination events do not show a restore by copy:\n%s", dst)
	}
}

// TestLazySourceKilledMidCopy: the source's page server dies (its CRIU
// killed, as with the node) while the memory still streams to the
// destination, its uplink slowed: the destination's task is killed before
// it can read a missing page, with an event naming the cause, the record
// says failed, and the job's restart policy applies: the task starts
// again, fresh. Never a task silently running with holes in its memory.
func TestLazySourceKilledMidCopy(t *testing.T) {
	const job = "lazy-killed"
	a := dev.runLazyMemtick(t, job, 256)
	srcK := dev.clientIndex(t, a.NodeID)
	shape(t, srcK, "40mbit")
	out := make(chan string, 1)
	go func() {
		out <- dev.companionOut("migrate", a.ID, "--node", dev.otherNode(t, a.NodeID), "--timeout", "3m")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rec, err := dev.catalog(t).WaitState(ctx, a.ID, "counter", catalog.StateRestoringLazy, catalog.StateFailed, catalog.StateRestored)
	if err != nil || rec.State != catalog.StateRestoringLazy {
		t.Fatalf("lazy restore not under way: %+v %v", rec, err)
	}
	// The record says how much of the memory is still to come: some has
	// come, most has not.
	for deadline := time.Now().Add(20 * time.Second); rec.Lazy == nil || rec.Lazy.PagesLeft == 0 || rec.Lazy.PagesLeft == rec.Lazy.Pages; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the record does not count the pages left as they come: %+v", rec.Lazy)
		}
		if rec, err = dev.catalog(t).Get(ctx, a.ID, "counter"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("record: %s, %d of %d pages left, from %s", rec.State, rec.Lazy.PagesLeft, rec.Lazy.Pages, rec.Lazy.PageServer)
	killed := killCriuIn(t, "ferry-c"+srcK)
	t.Logf("killed the source's CRIU %v; migrate: %s", killed, <-out)
	rec, err = dev.catalog(t).WaitState(ctx, a.ID, "counter", catalog.StateFailed, catalog.StateRestored)
	if err != nil || rec.State != catalog.StateFailed || !strings.Contains(rec.Reason, "memory did not all arrive") {
		t.Fatalf("record after the source died: %+v %v", rec, err)
	}
	lost := dev.waitEvent(t, rec.DestAllocID, "Memory lost", time.Minute)
	if lost == nil || lost.Details[sdk.EventRestore] != string(catalog.StateFailed) {
		t.Fatalf("destination events do not name the lost memory:\n%s", dev.events(t, rec.DestAllocID))
	}
	t.Logf("destination: %s", lost.DisplayMessage)
	log, _ := dev.nomadCLI(t, "alloc", "logs", rec.DestAllocID, "counter")
	if strings.Contains(log, "verify BAD") {
		t.Fatalf("the task ran with holes in its memory:\n%s", tail(log, 10))
	}
	// The job has no restarts: Nomad reschedules it, and it starts fresh.
	next := dev.waitAlloc(t, job, 3*time.Minute, func(s *nomad.AllocationListStub) bool {
		return running(s) && s.ID != a.ID && s.ID != rec.DestAllocID
	})
	fresh := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if firstCount(fresh) != 1 {
		t.Fatalf("the rescheduled task did not start fresh: first count %d", firstCount(fresh))
	}
}

// killCriuIn SIGKILLs every CRIU process in network namespace ns (a dev
// cluster client's) and returns their PIDs.
func killCriuIn(t testing.TB, ns string) []int {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", ns), &want); err != nil {
		t.Fatal(err)
	}
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		// CRIU renames itself ("criu: dump --rpc ..."), but not its comm.
		comm, err := os.ReadFile(filepath.Join(p, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "criu" {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join(p, "ns", "net"), &st) != nil || st.Dev != want.Dev || st.Ino != want.Ino {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(p))
		if err == nil && unix.Kill(pid, unix.SIGKILL) == nil {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		t.Fatalf("no CRIU process in %s", ns)
	}
	return pids
}
