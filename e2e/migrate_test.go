package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
	"golang.org/x/sys/unix"
)

// statefulJob runs jobspecs/stateful.nomad.hcl as job id and returns its
// running allocation once it has counted a little.
func (c *cluster) statefulJob(t testing.TB, id string, vars ...string) *nomad.AllocationListStub {
	t.Helper()
	image := c.pushBusybox(t, "ferry/busybox:stateful")
	spec, err := os.ReadFile(filepath.Join(c.root, "jobspecs/stateful.nomad.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	c.runJob(t, string(spec), append([]string{"image=" + image, "job=" + id}, vars...)...)
	t.Cleanup(func() { c.purge(t, id) })
	a := c.waitAlloc(t, id, 2*time.Minute, running)
	c.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 10 })
	return a
}

// firstCount is the first "count N" line of a log.
func firstCount(log string) int {
	m := regexp.MustCompile(`count (\d+)`).FindStringSubmatch(log)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// replacement waits for the allocation that replaces old to run: the next
// allocation of the same name (Nomad links a batch job's replacement to the
// allocation it replaces only when it reschedules it).
func (c *cluster) replacement(t testing.TB, job string, old *nomad.AllocationListStub) *nomad.AllocationListStub {
	t.Helper()
	return c.waitAlloc(t, job, 3*time.Minute, func(a *nomad.AllocationListStub) bool {
		return a.ClientStatus == nomad.AllocClientStatusRunning && a.Name == old.Name && a.CreateIndex > old.CreateIndex
	})
}

// assertResumed checks that the task on the new allocation went on counting
// from where the old one stopped, and that its events say it was restored.
func (c *cluster) assertResumed(t testing.TB, oldAlloc, newAlloc string) {
	t.Helper()
	oldLog, _ := c.nomadCLI(t, "alloc", "logs", oldAlloc, "counter")
	last := lastCount(oldLog)
	newLog := c.waitLogs(t, newAlloc, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	first := firstCount(newLog)
	if first <= last || last == 0 {
		t.Fatalf("count did not resume: last on the source %d, first on the destination %d", last, first)
	}
	events := strings.Join(c.taskEvents(t, newAlloc, "counter"), "\n")
	if !strings.Contains(events, "Restored from checkpoint of "+oldAlloc[:8]) {
		t.Fatalf("no restore event:\n%s", events)
	}
	t.Logf("resumed: last count on the source %d, first on the destination %d", last, first)
}

// waitRecordGone waits until the checkpoint record of alloc is removed,
// which happens only after a successful restore.
func (c *cluster) waitRecordGone(t testing.TB, alloc string) {
	t.Helper()
	cat := c.catalog(t)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := cat.Get(context.Background(), alloc, "counter"); err != nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("checkpoint record of %s still in Consul after the restore", alloc)
}

// watchRecord follows the checkpoint record of alloc/task with Consul's
// blocking queries and sends the states it saw, then "removed", once the
// record is deleted (or after two minutes).
func (c *cluster) watchRecord(t testing.TB, alloc, task string) <-chan []string {
	t.Helper()
	cat := c.catalog(t)
	key := cat.Key(alloc, task)
	kv := cat.Client().KV()
	out := make(chan []string, 1)
	go func() {
		var seen []string
		var index uint64
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			pair, meta, err := kv.Get(key, &consulapi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second})
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			index = meta.LastIndex
			if pair == nil {
				if len(seen) > 0 {
					seen = append(seen, "removed")
					break
				}
				continue
			}
			var r struct {
				State string `json:"state"`
			}
			if json.Unmarshal(pair.Value, &r) == nil && (len(seen) == 0 || seen[len(seen)-1] != r.State) {
				seen = append(seen, r.State)
			}
		}
		out <- seen
	}()
	return out
}

func (c *cluster) catalog(t testing.TB) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.NewFromConfig(c.env["CONSUL_HTTP_ADDR"], "", hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// migrations are the companion's migration records on the cluster.
func (c *cluster) migrations(t testing.TB) *migrate.Records {
	return &migrate.Records{Consul: c.catalog(t).Client()}
}

func TestMigrateByAllocStop(t *testing.T) {
	a := dev.statefulJob(t, "move-stop")
	states := dev.watchRecord(t, a.ID, "counter")
	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", a.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	next := dev.replacement(t, "move-stop", a)
	dev.assertResumed(t, a.ID, next.ID)
	// A batch allocation is replaced only once it stopped: nothing to
	// push to, the destination fetches (or reads its own, on the same node).
	if next.NodeID == a.NodeID {
		dev.assertReceived(t, next.ID, "local")
	} else {
		dev.assertReceived(t, next.ID, "fetched")
	}
	dev.waitRecordGone(t, a.ID)
	// The record went through its states in order, and was removed.
	seen := <-states
	order := map[string]int{"checkpointing": 0, "ready": 1, "restoring": 2, "restored": 3, "removed": 4}
	for i := 1; i < len(seen); i++ {
		if order[seen[i]] <= order[seen[i-1]] {
			t.Fatalf("record states out of order: %v", seen)
		}
	}
	if len(seen) < 3 || seen[len(seen)-1] != "removed" {
		t.Fatalf("record states: %v", seen)
	}
	t.Logf("record states: %v", seen)
	srcEvents := strings.Join(dev.taskEvents(t, a.ID, "counter"), "\n")
	if !strings.Contains(srcEvents, "Checkpointed for migration") {
		t.Fatalf("source events do not show the checkpoint:\n%s", srcEvents)
	}

	// A restored task is recovered like any other after a client restart.
	k := dev.clientIndex(t, next.NodeID)
	if out, err := runScript(t, dev.root, "restart-client", k); err != nil {
		t.Fatalf("restart-client %s: %v\n%s", k, err, out)
	}
	before := lastCount(dev.waitLogs(t, next.ID, "counter", time.Minute, func(string) bool { return true }))
	dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) > before+10 })
	info, _, err := dev.api.Allocations().Info(next.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ts := info.TaskStates["counter"]; ts == nil || ts.State != "running" || ts.Restarts != 0 {
		t.Fatalf("restored task after client restart: %+v", ts)
	}
}

func TestMigrateByCompanion(t *testing.T) {
	a := dev.statefulJob(t, "move-companion")
	target := dev.otherNode(t, a.NodeID)
	out := dev.companionMigrate(t, a.ID, target)
	if !strings.Contains(out, "to "+target) || !strings.Contains(out, "restored from its checkpoint") || !strings.Contains(out, "downtime") {
		t.Fatalf("unexpected migrate output:\n%s", out)
	}
	next := dev.replacement(t, "move-companion", a)
	n, _, err := dev.api.Nodes().Info(next.NodeID, nil)
	if err != nil || n.Name != target {
		t.Fatalf("replacement on %v, want %s (%v)", n, target, err)
	}
	src, _, err := dev.api.Nodes().Info(a.NodeID, nil)
	if err != nil || src.SchedulingEligibility != nomad.NodeSchedulingEligible {
		t.Fatalf("source node eligibility not restored: %v %v", src.SchedulingEligibility, err)
	}
	if v, ok := n.Meta[sdk.MetaMigrateTarget]; ok {
		t.Fatalf("target still marked: %q", v)
	}
	dev.assertResumed(t, a.ID, next.ID)
	migrations, err := dev.migrations(t).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range migrations {
		if m.AllocID == a.ID && m.Result == "restored" && m.NewAllocID == next.ID {
			found = true
		}
	}
	if !found {
		t.Fatalf("migration outcome not recorded in Consul: %+v", migrations)
	}
}

func TestJobStopDoesNotCheckpoint(t *testing.T) {
	a := dev.statefulJob(t, "no-move")
	if out, err := dev.nomadCLI(t, "job", "stop", "-detach", "no-move"); err != nil {
		t.Fatalf("job stop: %v\n%s", err, out)
	}
	dev.waitAlloc(t, "no-move", time.Minute, func(s *nomad.AllocationListStub) bool {
		return s.ID == a.ID && s.ClientStatus != nomad.AllocClientStatusRunning
	})
	events := strings.Join(dev.taskEvents(t, a.ID, "counter"), "\n")
	if strings.Contains(events, "Checkpoint") {
		t.Fatalf("a plain job stop checkpointed the task:\n%s", events)
	}
	if _, err := dev.catalog(t).Get(context.Background(), a.ID, "counter"); err == nil {
		t.Fatalf("a plain job stop left a checkpoint record")
	}
}

// holdingPeer listens in the hub namespace and holds every connection it
// accepts open until the test ends: a TCP peer outside the tasks.
func holdingPeer(t testing.TB) net.Listener {
	t.Helper()
	ln, err := listenInNetNS("/var/run/netns/ferry-hub", "10.97.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, conn)
		}
	}()
	return ln
}

// listenInNetNS opens a TCP listener inside the network namespace at path
// (its socket stays there).
func listenInNetNS(path, addr string) (ln net.Listener, err error) {
	err = inNetNS(path, func() error {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// inNetNS runs fn on a thread inside the network namespace at path: the
// sockets fn opens stay there. The thread that entered the namespace is
// never unlocked, so Go discards it.
func inNetNS(path string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter %s: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// TestFailedDumpStopsNormally: a task CRIU cannot dump (it holds an
// established TCP connection and did not ask for tcp_established) is
// reported, recorded as failed and stopped as usual; its replacement starts
// fresh at once instead of waiting for a checkpoint.
func TestFailedDumpStopsNormally(t *testing.T) {
	ln := holdingPeer(t)
	image := dev.pushBusybox(t, "ferry/busybox:stateful")
	peer := strings.Replace(ln.Addr().String(), ":", " ", 1)
	job := checkpointedJob("dump-fails", image, "sleep 100000 | nc "+peer+" & "+counterScript, "enabled = true")
	dev.runJob(t, job)
	t.Cleanup(func() { dev.purge(t, "dump-fails") })
	a := dev.waitAlloc(t, "dump-fails", 2*time.Minute, running)
	dev.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 10 })

	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", a.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	next := dev.replacement(t, "dump-fails", a)
	src := strings.Join(dev.taskEvents(t, a.ID, "counter"), "\n")
	if !strings.Contains(src, "Checkpoint failed, stopping normally") || !strings.Contains(src, "tcp-established") {
		t.Fatalf("source events do not report the failed dump:\n%s", src)
	}
	rec, err := dev.catalog(t).Get(context.Background(), a.ID, "counter")
	if err != nil || rec.State != catalog.StateFailed {
		t.Fatalf("record after a failed dump: %+v, %v", rec, err)
	}
	newLog := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if firstCount(newLog) != 1 {
		t.Fatalf("replacement did not start fresh: first count %d", firstCount(newLog))
	}
	if events := strings.Join(dev.taskEvents(t, next.ID, "counter"), "\n"); strings.Contains(events, "Waiting for the checkpoint") && strings.Contains(events, "within checkpoint.restore_wait") {
		t.Fatalf("replacement waited for a checkpoint that failed:\n%s", events)
	}
}

// reconfigure rewrites the clients' configs with env set and restarts them.
func (c *cluster) reconfigure(t testing.TB, env ...string) {
	t.Helper()
	clients := len(c.readyNodes(t))
	up := exec.Command("bash", filepath.Join(c.root, "scripts/cluster.sh"), "up", "--clients", strconv.Itoa(clients))
	up.Env = append(os.Environ(), env...)
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	for k := 1; k <= clients; k++ {
		if out, err := runScript(t, c.root, "restart-client", strconv.Itoa(k)); err != nil {
			t.Fatalf("restart-client %d: %v\n%s", k, err, out)
		}
	}
}

// TestMigrateSharedCheckpointDir: with checkpoint_dir on storage all
// clients share, the destination restores from it without a transfer, and
// the checkpoint is removed after the restore.
func TestMigrateSharedCheckpointDir(t *testing.T) {
	shared := "/var/lib/ferry-dev/shared-checkpoints"
	dev.reconfigure(t, "FERRY_CHECKPOINT_DIR="+shared)
	defer dev.reconfigure(t)

	a := dev.statefulJob(t, "move-shared")
	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", a.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	next := dev.replacement(t, "move-shared", a)
	dev.assertResumed(t, a.ID, next.ID)
	dev.assertReceived(t, next.ID, "shared")
	events := strings.Join(dev.taskEvents(t, next.ID, "counter"), "\n")
	if strings.Contains(events, "Fetching checkpoint") {
		t.Fatalf("the checkpoint was transferred despite the shared checkpoint_dir:\n%s", events)
	}
	dev.waitRecordGone(t, a.ID)
	dir, _ := checkpoint.Dir(shared, a.ID, "counter")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("shared checkpoint not removed after the restore: %v", err)
	}
}

// otherNode is the name of a ready node other than nodeID.
func (c *cluster) otherNode(t testing.TB, nodeID string) string {
	t.Helper()
	nodes, _, err := c.api.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID != nodeID && n.Status == "ready" {
			return n.Name
		}
	}
	t.Fatal("no other ready node")
	return ""
}

// companionMigrate runs `ferry-companion migrate ALLOC --node TARGET`.
func (c *cluster) companionMigrate(t testing.TB, allocID, target string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.root, "bin/ferry-companion"), "migrate", allocID, "--node", target)
	cmd.Env = os.Environ()
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	t.Logf("ferry-companion migrate:\n%s", out)
	if err != nil {
		t.Fatalf("ferry-companion migrate: %v", err)
	}
	return string(out)
}

// TestMigrateTCPToNewAddress: a task that asked for tcp_established holds a
// TCP connection and moves to a node with another address: it is restored
// with the connection closed, and goes on.
func TestMigrateTCPToNewAddress(t *testing.T) {
	ln := holdingPeer(t)
	image := dev.pushBusybox(t, "ferry/busybox:stateful")
	peer := strings.Replace(ln.Addr().String(), ":", " ", 1)
	job := checkpointedJob("move-tcp", image, "sleep 100000 | nc "+peer+" & "+counterScript, "enabled = true; tcp_established = true")
	dev.runJob(t, job)
	t.Cleanup(func() { dev.purge(t, "move-tcp") })
	a := dev.waitAlloc(t, "move-tcp", 2*time.Minute, running)
	dev.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 10 })

	dev.companionMigrate(t, a.ID, dev.otherNode(t, a.NodeID))
	next := dev.replacement(t, "move-tcp", a)
	if next.NodeID == a.NodeID {
		t.Fatal("the replacement landed on the source node")
	}
	src := strings.Join(dev.taskEvents(t, a.ID, "counter"), "\n")
	if !strings.Contains(src, "Checkpointed for migration") {
		t.Fatalf("the task with an established connection was not checkpointed:\n%s", src)
	}
	dev.assertResumed(t, a.ID, next.ID)
}

// TestRestoreFailureStartsFresh: the destination's port is taken, so CRIU
// cannot restore the task's listening socket and the restore fails after its
// shim started: the task starts fresh, with an event giving CRIU's reason,
// and its logs still reach Nomad.
func TestRestoreFailureStartsFresh(t *testing.T) {
	image := dev.pushBusybox(t, "ferry/busybox:stateful")
	const port = "47011"
	job := checkpointedJob("restore-fails", image, "sleep 100000 | nc -l -p "+port+" & "+counterScript, "enabled = true")
	dev.runJob(t, job)
	t.Cleanup(func() { dev.purge(t, "restore-fails") })
	a := dev.waitAlloc(t, "restore-fails", 2*time.Minute, running)
	dev.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 10 })

	// Something else holds the port on the destination.
	target := dev.otherNode(t, a.NodeID)
	ln, err := listenInNetNS("/var/run/netns/"+target, "0.0.0.0:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	dev.companionMigrate(t, a.ID, target)
	next := dev.replacement(t, "restore-fails", a)
	events := strings.Join(dev.taskEvents(t, next.ID, "counter"), "\n")
	if !strings.Contains(events, "Restore failed, starting fresh") || !strings.Contains(events, "restore.log") {
		t.Fatalf("events do not give the restore failure:\n%s", events)
	}
	newLog := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return lastCount(s) >= 5 })
	if firstCount(newLog) != 1 {
		t.Fatalf("the task did not start fresh: first count %d", firstCount(newLog))
	}
	rec, err := dev.catalog(t).Get(context.Background(), a.ID, "counter")
	if err != nil || rec.State != catalog.StateFailed {
		t.Fatalf("record after a failed restore: %+v, %v", rec, err)
	}
}

// archImage is busybox with /etc/arch naming arch, labelled for linux/arch.
// The binaries stay this machine's, so a client that only chooses images
// for another platform runs it natively.
func archImage(t testing.TB, arch string) v1.Image {
	t.Helper()
	base := testutil.BusyboxImage(t, v1.Platform{OS: "linux", Architecture: arch})
	b, err := testutil.Tar(testutil.TarEntry{Name: "etc/arch", Mode: 0o644, Body: arch + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	layer, err := testutil.LayerFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestMoveAcrossArchitectures: with one client choosing images for
// linux/arm64, a task checkpointed on one architecture moves to the other:
// memory cannot cross, so it starts fresh from the destination's image of the
// same index, says so in an event, records the cold start, and the
// checkpoint is then removed.
func TestMoveAcrossArchitectures(t *testing.T) {
	dev.reconfigure(t, "FERRY_PLATFORM_C2=linux/arm64")
	defer dev.reconfigure(t)

	idx := testutil.MultiPlatformIndex(t, map[string]v1.Image{
		"linux/amd64": archImage(t, "amd64"),
		"linux/arm64": archImage(t, "arm64"),
	})
	testutil.PushIndex(t, idx, dev.push+"/ferry/multiarch:1")
	dev.runJob(t, checkpointedJob("cross-arch", dev.registry+"/ferry/multiarch:1", "echo arch $(cat /etc/arch); "+counterScript, "enabled = true"))
	t.Cleanup(func() { dev.purge(t, "cross-arch") })
	a := dev.waitAlloc(t, "cross-arch", 2*time.Minute, running)
	src, dst := "amd64", "arm64"
	if dev.clientIndex(t, a.NodeID) == "2" {
		src, dst = dst, src
	}
	dev.waitLogs(t, a.ID, "counter", time.Minute, func(s string) bool { return strings.Contains(s, "arch "+src) && lastCount(s) >= 10 })

	target := "ferry-c2"
	if src == "arm64" {
		target = "ferry-c1"
	}
	out := dev.companionMigrate(t, a.ID, target)
	if !strings.Contains(out, "started fresh: Moved across architectures") {
		t.Fatalf("ferry-companion migrate does not report the cold start:\n%s", out)
	}
	next := dev.replacement(t, "cross-arch", a)
	events := strings.Join(dev.taskEvents(t, next.ID, "counter"), "\n")
	want := fmt.Sprintf("Moved across architectures (linux/%s to linux/%s)", src, dst)
	if !strings.Contains(events, want) {
		t.Fatalf("events do not say %q:\n%s", want, events)
	}
	log := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if !strings.Contains(log, "arch "+dst) || firstCount(log) != 1 {
		t.Fatalf("destination did not start fresh from the %s image:\n%s", dst, log)
	}
	// The checkpoint record is removed as soon as the cold start is
	// recorded in it; the move's record keeps it.
	dev.waitRecordGone(t, a.ID)
	migrations, err := dev.migrations(t).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(migrations, func(m *migrate.Record) bool {
		return m.AllocID == a.ID && m.Result == "cold_start" && strings.Contains(m.Reason, "Moved across architectures")
	}) {
		t.Fatalf("the cold cross-architecture start was not recorded: %+v", migrations)
	}
}

// counterScript prints "count N" every 100 ms: state that lives only in memory.
const counterScript = "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.1; done"

// checkpointedJob is a one-task service job that runs `sh -c script` in
// image, with checkpointing set by the HCL attributes in checkpoint
// ("enabled = true; tcp_established = true").
func checkpointedJob(name, image, script, checkpoint string) string {
	return checkpointedService(name, image, fmt.Sprintf("command = \"/bin/sh\"\n        args    = [\"-c\", %q]", script), checkpoint, 64)
}

// checkpointedService is a one-task service job "name" whose task
// "counter" runs image as the HCL attributes run say, with checkpointing
// set by checkpoint and memory MB of memory, written as a user would from
// the README: the steering affinity of ferry-companion migrate, no restart.
func checkpointedService(name, image, run, checkpoint string, memory int) string {
	return fmt.Sprintf(`
job %q {
  datacenters = ["*"]
  type        = "service"
  affinity {
    attribute = "${meta.ferry_migrate_target}"
    value     = "true"
    weight    = 100
  }
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "counter" {
      driver = "ferry"
      config {
        image   = %q
        %s
        checkpoint {
          %s
        }
      }
      kill_timeout = "30s"
      resources {
        cpu    = 100
        memory = %d
      }
    }
  }
}`, name, image, run, strings.ReplaceAll(checkpoint, "; ", "\n          "), memory)
}
