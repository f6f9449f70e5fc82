package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
)

// TestPeriodicResumeAfterNodeLoss: two counters with periodic checkpoints
// copied to a shared checkpoint_dir run on one client, which is then
// killed as at a power loss. Once Nomad has found the node lost, the
// replacement of the first resumes its count from its last checkpoint (not
// from zero, not beyond it); the second, whose copy could not be written
// (its directory on a full file system), starts fresh with an event saying
// why. The lost allocations' copies go once their replacements started,
// and the replacement's own once the job is purged.
func TestPeriodicResumeAfterNodeLoss(t *testing.T) {
	shared := "/var/lib/ferry-dev/shared-checkpoints"
	dev.reconfigure(t, "FERRY_CHECKPOINT_DIR="+shared)
	defer dev.reconfigure(t)
	copies := filepath.Join(shared, "periodic")
	// Two counters checkpointed every 20 s (jobspecs/stateful.nomad.hcl), on
	// one node: b prefers a's node as a move's destination would be.
	a := dev.statefulJob(t, "periodic-a", "interval=20s")
	node := a.NodeName
	yes := "true"
	dev.setMeta(t, a.NodeID, sdk.MetaMigrateTarget, &yes)
	b := dev.statefulJob(t, "periodic-b", "interval=20s")
	dev.setMeta(t, a.NodeID, sdk.MetaMigrateTarget, nil)
	if b.NodeName != node {
		t.Fatalf("periodic-b runs on %s, not beside periodic-a on %s", b.NodeName, node)
	}
	// b's copies go to a file system with no room for them.
	full := filepath.Join(copies, b.ID)
	if err := os.MkdirAll(full, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full).CombinedOutput(); err != nil {
		t.Fatalf("mount a full file system at %s: %v\n%s", full, err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("umount", full).Run()
		_ = os.RemoveAll(full)
	})
	if e := dev.waitEvent(t, b.ID, "Periodic checkpoint", time.Minute); e == nil || !strings.Contains(e.DisplayMessage, "its copy failed") {
		t.Fatalf("periodic-b's copy did not fail:\n%s", dev.events(t, b.ID))
	}
	// a's next checkpoint, taken after before and recorded by atCheckpoint.
	cat := dev.catalog(t)
	newest := func() *catalog.PeriodicCheckpoint {
		rec, err := cat.GetPeriodic(context.Background(), a.ID, "counter")
		if err != nil || len(rec.Checkpoints) == 0 {
			return nil
		}
		return &rec.Checkpoints[len(rec.Checkpoints)-1]
	}
	before := lastCount(dev.logs(t, a.ID))
	since := time.Now()
	deadline := since.Add(45 * time.Second)
	c := newest()
	for ; c == nil || !c.TakenAt.After(since); c = newest() {
		if time.Now().After(deadline) {
			t.Fatalf("no periodic checkpoint of periodic-a recorded within 45s:\n%s", dev.events(t, a.ID))
		}
		time.Sleep(200 * time.Millisecond)
	}
	atCheckpoint := lastCount(dev.logs(t, a.ID))
	if len(c.Copies) == 0 {
		t.Fatalf("periodic-a's checkpoint %s was not copied off the node: %s\n%s", c.Name, c.CopyError, dev.events(t, a.ID))
	}
	// The count runs on past the checkpoint before the node is lost.
	time.Sleep(3 * time.Second)
	atCrash := lastCount(dev.logs(t, a.ID))

	k := dev.clientIndex(t, a.NodeID)
	if out, err := runScript(t, dev.root, "crash-client", k); err != nil {
		t.Fatalf("crash-client %s: %v\n%s", k, err, out)
	}
	defer func() {
		if out, err := runScript(t, dev.root, "restart-client", k); err != nil {
			t.Errorf("restart-client %s: %v\n%s", k, err, out)
		}
	}()

	next := dev.replacement(t, "periodic-a", a)
	if next.NodeName == node {
		t.Fatalf("replacement on the lost node %s", node)
	}
	first := firstCount(dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 }))
	t.Logf("count: %d before the checkpoint, at most %d at it, %d at the crash; the replacement's first %d", before, atCheckpoint, atCrash, first)
	if first <= before || first > atCheckpoint+1 || atCrash <= atCheckpoint+1 {
		t.Fatalf("count did not resume from the checkpoint: %d before it, at most %d at it, %d at the crash, first on the replacement %d",
			before, atCheckpoint, atCrash, first)
	}
	e := dev.waitEvent(t, next.ID, "Resumed from the checkpoint of", 10*time.Second)
	if e == nil || !strings.Contains(e.DisplayMessage, "before its node was lost") {
		t.Fatalf("no resume event:\n%s", dev.events(t, next.ID))
	}
	t.Logf("periodic-a's replacement: %s", e.DisplayMessage)

	nextB := dev.replacement(t, "periodic-b", b)
	if n := firstCount(dev.waitLogs(t, nextB.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })); n != 1 {
		t.Fatalf("periodic-b did not start fresh: first count %d", n)
	}
	e = dev.waitEvent(t, nextB.ID, "Starting fresh: ", 10*time.Second)
	if e == nil || !strings.Contains(e.DisplayMessage, "has no complete copy off that node") || !strings.Contains(e.DisplayMessage, "no space left on device") {
		t.Fatalf("no event says why periodic-b started fresh:\n%s", dev.events(t, nextB.ID))
	}
	t.Logf("periodic-b's replacement: %s", e.DisplayMessage)

	// The lost allocations' checkpoints were taken up, or could not be.
	for _, lost := range []*nomad.AllocationListStub{a, b} {
		dev.waitPeriodicGone(t, copies, lost.ID)
	}
	// The replacement checkpoints in its turn; its copies go with the job.
	if e := dev.waitEvent(t, next.ID, "Periodic checkpoint", time.Minute); e == nil {
		t.Fatalf("the replacement took no periodic checkpoint:\n%s", dev.events(t, next.ID))
	}
	if _, err := os.Stat(filepath.Join(copies, next.ID, "counter")); err != nil {
		t.Fatalf("the replacement's copies: %v", err)
	}
	for _, job := range []string{"periodic-a", "periodic-b"} {
		if out, err := dev.nomadCLI(t, "job", "stop", "-purge", job); err != nil {
			t.Fatalf("job stop -purge %s: %v\n%s", job, err, out)
		}
	}
	dev.waitPeriodicGone(t, copies, next.ID)
	dev.waitPeriodicGone(t, copies, nextB.ID)
}

// logs is the stdout of allocID's counter.
func (c *cluster) logs(t testing.TB, allocID string) string {
	t.Helper()
	out, _ := c.nomadCLI(t, "alloc", "logs", allocID, "counter")
	return out
}

// waitPeriodicGone waits until alloc's periodic checkpoints are gone: their
// record in Consul and their copies under dir.
func (c *cluster) waitPeriodicGone(t testing.TB, dir, alloc string) {
	t.Helper()
	cat := c.catalog(t)
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		_, err = cat.GetPeriodic(context.Background(), alloc, "counter")
		_, serr := os.Stat(filepath.Join(dir, alloc, "counter"))
		if errors.Is(err, catalog.ErrNotFound) && errors.Is(serr, os.ErrNotExist) {
			return
		}
		if err == nil {
			err = serr
		}
	}
	t.Fatalf("periodic checkpoints of %s still there: %v", alloc, err)
}
