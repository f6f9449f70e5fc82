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

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	nomad "github.com/hashicorp/nomad/api"
)

// Faults a node's limits answer: checkpoints and records left behind are
// reaped by age, a checkpoint larger than a destination accepts is refused
// there, and an image layer that unpacks to more than the node allows is
// refused before it fills the disk. Each runs one client with the plugin
// options under test, and puts its config back at the end.

// reconfigureClient restarts client K with its config written again from
// the environment plus env (FERRY_GC_C<K>=... and the like), and, at the
// test's end, without env.
func (c *cluster) reconfigureClient(t testing.TB, k string, env ...string) {
	t.Helper()
	restart := func(env []string) error {
		cmd := exec.Command("bash", filepath.Join(c.root, "scripts/cluster.sh"), "restart-client", k, "--config")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("restart-client %s --config %v: %v\n%s", k, env, err, out)
		}
		return nil
	}
	if err := restart(env); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restart(nil); err != nil {
			t.Error(err)
		}
	})
}

// pinnedTo adds to a job of checkpointedService's a constraint that places
// it on node name.
func pinnedTo(job, name string) string {
	return strings.Replace(job, `group "g" {`, fmt.Sprintf(`constraint {
    attribute = "${node.unique.name}"
    value     = %q
  }
  group "g" {`, name), 1)
}

// A service is drained off its node while no other node may take it: its
// checkpoint is ready, and no destination claims it. The node's driver,
// configured to keep unclaimed checkpoints 20 s, reaps the record and the
// checkpoint then, says so in its reap log and in ferry-companion status;
// once another node is eligible, the replacement starts fresh.
func TestFaultCheckpointsReapedByAge(t *testing.T) {
	nodes := dev.readyNodes(t)
	if len(nodes) < 2 {
		t.Fatalf("want 2 ready clients, have %d", len(nodes))
	}
	src := nodes[0]
	k := dev.clientIndex(t, src.ID)
	dev.reconfigureClient(t, k, "FERRY_GC_C"+k+`=checkpoints { unclaimed = "20s" }`)
	for _, n := range nodes[1:] {
		dev.eligible(t, n.ID, false)
	}
	a := dev.statefulJob(t, "fault-reap", "type=service")
	if a.NodeID != src.ID {
		t.Fatalf("the job runs on %s, not %s", a.NodeName, src.Name)
	}
	if out, err := dev.nomadCLI(t, "node", "drain", "-enable", "-yes", "-detach", "-ignore-system", src.ID); err != nil {
		t.Fatalf("node drain: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = dev.nomadCLI(t, "node", "drain", "-disable", "-yes", src.ID) })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rec, err := dev.catalog(t).WaitState(ctx, a.ID, "counter", catalog.StateReady, catalog.StateFailed)
	if err != nil || rec.State != catalog.StateReady {
		t.Fatalf("checkpoint record: %+v, %v", rec, err)
	}
	if rec.Reap == nil || rec.Reap.Unclaimed != 20*time.Second || rec.Reap.Retention != catalog.DefaultReapRetention {
		t.Fatalf("the record does not carry its node's ages: %+v", rec.Reap)
	}
	readyAt := time.Now()
	dirs := []string{
		filepath.Join(dev.checkpointRoot(t, src.ID), a.ID),
		filepath.Join(dev.env["FERRY_RUN"], "c"+k, "checkpoints", a.ID),
	}
	dev.waitRecordGone(t, a.ID)
	if took := time.Since(readyAt); took < 15*time.Second {
		t.Fatalf("reaped %s after it was ready, before its 20 s", took)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("checkpoint %s left after its record was reaped (%v)", dir, err)
		}
	}
	logs, err := catalog.ReadReaped(context.Background(), dev.catalog(t).Client())
	if err != nil {
		t.Fatal(err)
	}
	var entry *catalog.Reaped
	for _, l := range logs {
		for i, e := range l.Reaped {
			if e.AllocID == a.ID && l.Name == src.Name {
				entry = &l.Reaped[i]
			}
		}
	}
	if entry == nil || entry.State != catalog.StateReady || !strings.Contains(entry.Why, "20s") {
		t.Fatalf("reap log of %s: %+v", src.Name, entry)
	}
	t.Logf("reaped: %s", entry.Why)
	status := dev.companion(t, "status")
	if !strings.Contains(status, "ready") || !strings.Contains(status, "Reaped in the last 24h:") {
		t.Fatalf("status does not show the reaped checkpoint:\n%s", status)
	}

	// Another node may take the task now: it starts fresh.
	dev.eligible(t, nodes[1].ID, true)
	next := dev.replacement(t, "fault-reap", a)
	log := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if first := firstCount(log); first != 1 {
		t.Fatalf("replacement did not start fresh: first count %d", first)
	}
}

// The destination accepts checkpoints of at most 32 MiB: the task's
// (about 100 MB) is refused there, pushed or fetched, nothing of it stays
// on the destination, and the replacement starts fresh (its
// on_restore_failure) with an event naming the option.
func TestFaultCheckpointTooLarge(t *testing.T) {
	a := dev.bigCounter(t, "fault-large")
	target := dev.otherNode(t, a.NodeID)
	var dst string
	for _, n := range dev.readyNodes(t) {
		if n.Name == target {
			dst = dev.clientIndex(t, n.ID)
		}
	}
	dev.reconfigureClient(t, dst, "FERRY_TRANSFER_C"+dst+`=max_checkpoint_size = "32MiB"`)
	t.Logf("ferry-companion migrate:\n%s", dev.companionOut("migrate", a.ID, "--node", target, "--timeout", "5m"))
	next := dev.replacement(t, "fault-large", a)
	if next.NodeName != target {
		t.Fatalf("replacement on %s, not %s", next.NodeName, target)
	}
	log := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if first := firstCount(log); first != 1 {
		t.Fatalf("replacement did not start fresh: first count %d", first)
	}
	events := dev.events(t, next.ID)
	t.Logf("replacement events:\n%s", events)
	var named bool
	for _, e := range events {
		named = named || strings.Contains(e.DisplayMessage, "max_checkpoint_size")
	}
	if !named {
		t.Fatalf("no event of the replacement names transfer.max_checkpoint_size")
	}
	dev.assertMoveEnded(t, "fault-large", a)
}

// A layer that unpacks to 96 MiB (a few hundred KiB compressed) on a node
// that allows 64 MiB per layer: the task fails with an error naming
// images.max_layer_size, and no layer is left unpacked.
func TestFaultImageLayerTooLarge(t *testing.T) {
	node := dev.readyNodes(t)[0]
	k := dev.clientIndex(t, node.ID)
	dev.reconfigureClient(t, k, "FERRY_IMAGES_C"+k+`=max_layer_size = "64MiB"`)

	zeros, err := testutil.Tar(testutil.TarEntry{Name: "zeros", Mode: 0o644, Body: strings.Repeat("\x00", 96<<20)})
	if err != nil {
		t.Fatal(err)
	}
	bomb, err := testutil.LayerFromBytes(zeros)
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := bomb.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	img, err := testutil.ImageFromLayers(v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Config{}, bomb)
	if err != nil {
		t.Fatal(err)
	}
	testutil.PushImage(t, img, dev.push+"/ferry/bomb:1")

	dev.runJob(t, pinnedTo(checkpointedJob("fault-bomb", dev.registry+"/ferry/bomb:1", "true", "enabled = false"), node.Name))
	t.Cleanup(func() { dev.purge(t, "fault-bomb") })
	a := dev.waitAlloc(t, "fault-bomb", 2*time.Minute, func(s *nomad.AllocationListStub) bool {
		return s.ClientStatus == nomad.AllocClientStatusFailed
	})
	events := dev.events(t, a.ID)
	t.Logf("events:\n%s", events)
	var refusal string
	for _, e := range events {
		if strings.Contains(e.DisplayMessage, "images.max_layer_size") {
			refusal = e.DisplayMessage
		}
	}
	if refusal == "" || !strings.Contains(refusal, "decompression bomb") {
		t.Fatalf("no event names images.max_layer_size")
	}
	layer := filepath.Join("/var/lib/ferry-dev", "c"+k, "ferry", "images", "layers", diffID.Algorithm, diffID.Hex)
	if _, err := os.Stat(layer); !os.IsNotExist(err) {
		t.Fatalf("layer %s unpacked despite the limit (%v)", layer, err)
	}
}
