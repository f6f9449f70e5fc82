package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/sdk"
	nomad "github.com/hashicorp/nomad/api"
)

// tick is one "count N t=UNIXNANO" line of memtick.
type tick struct {
	n int
	t time.Time
}

var tickLine = regexp.MustCompile(`count (\d+) t=(\d+)`)

func parseTicks(log string) []tick {
	var out []tick
	for _, m := range tickLine.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		ns, _ := strconv.ParseInt(m[2], 10, 64)
		out = append(out, tick{n, time.Unix(0, ns)})
	}
	return out
}

// downtime is the longest pause of a ticking task across a move: the
// longest gap between consecutive ticks of the logs before and after it,
// merged by count (a restored pipe hands the destination the lines the
// source had not read yet).
func downtime(logs ...string) (time.Duration, error) {
	at := map[int]time.Time{}
	for _, l := range logs {
		for _, tk := range parseTicks(l) {
			at[tk.n] = tk.t
		}
	}
	var ns []int
	for n := range at {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	var longest time.Duration
	for i := 1; i < len(ns); i++ {
		if ns[i] != ns[i-1]+1 {
			return 0, fmt.Errorf("ticks %d to %d are missing: the task did not resume where it stopped", ns[i-1]+1, ns[i]-1)
		}
		longest = max(longest, at[ns[i]].Sub(at[ns[i-1]]))
	}
	if len(ns) < 2 {
		return 0, fmt.Errorf("too few ticks")
	}
	return longest, nil
}

// move is one measured move. complete is, for a lazy move, how long after
// the restore the last page of memory arrived.
type move struct {
	down, dump, transfer, handoff, restore, complete time.Duration
}

// benchRuns is how many times each move is measured; the median counts.
func benchRuns() int {
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 3
}

// benchSizes are the memory sizes moved, in MiB: FERRY_BENCH_SIZES
// ("256,1024,4096"). The 4 GiB case needs about 16 GiB of free memory on a
// dev cluster whose state_dir is in /dev/shm: the task on both nodes while
// it moves, and its checkpoint by copy on both.
func benchSizes(b *testing.B) []int {
	v := os.Getenv("FERRY_BENCH_SIZES")
	if v == "" {
		v = "256,1024,4096"
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("FERRY_BENCH_SIZES: %q is not a list of sizes in MiB, e.g. \"256,1024\"", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// BenchmarkMigrate measures, in one run, how long a task holding 256 MiB,
// 1 GiB and 4 GiB (benchSizes) of touched random memory (memtick, ticking
// every 10 ms) is down while it moves: the floor, `runc checkpoint` + `runc
// restore` of the same container on one node with the same runc and CRIU;
// Ferry node to node through `ferry-companion migrate` and through a plain
// `nomad node drain`, by copy and lazily (checkpoint.mode = "lazy", with
// the time until the last page arrived); and Podman's checkpoint export and
// import on one node, where Podman runs (up to 1 GiB). Downtime is read from
// the task's own ticks; each row is the median of FERRY_BENCH_RUNS (3)
// moves, with its phases and its ratio to the floor. Run it with `make
// bench-migrate`.
func BenchmarkMigrate(b *testing.B) {
	image, bin := benchSetup(b)
	type row struct {
		size, path string
		m          move
		ratio      float64
		note       string
	}
	var rows []row
	for _, mib := range benchSizes(b) {
		size := fmt.Sprintf("%d MiB", mib)
		floor := median(b, benchRuns(), func() move { return floorMove(b, bin, mib) })
		rows = append(rows, row{size, "floor: runc checkpoint + restore, one node", floor, 1, ""})
		for _, mode := range []string{"copy", "lazy"} {
			for _, how := range []string{"migrate", "drain"} {
				m := median(b, benchRuns(), func() move { return dev.ferryMove(b, image, mib, how, mode) })
				path := "Ferry " + mode + ", node to node: ferry-companion migrate"
				if how == "drain" {
					path = "Ferry " + mode + ", node to node: nomad node drain"
				}
				rows = append(rows, row{size, path, m, m.down.Seconds() / floor.down.Seconds(), ""})
			}
		}
		if mib > 1024 {
			continue
		}
		if _, err := exec.LookPath("podman"); err != nil {
			rows = append(rows, row{size: size, path: "Podman checkpoint --export + restore --import, one node", note: "podman not installed"})
			continue
		}
		for _, compress := range []string{"zstd", "none"} {
			m := median(b, benchRuns(), func() move { return podmanMove(b, bin, mib, compress) })
			rows = append(rows, row{size, "Podman --export/--import (--compress " + compress + "), one node", m, m.down.Seconds() / floor.down.Seconds(), ""})
		}
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "\nLive migration downtime (median of %d; memtick ticking every 10 ms; this machine: %d cores, every node on it)\n\n", benchRuns(), numCPU())
	fmt.Fprintf(&out, "| memory | path | downtime | x floor | dump | transfer | handoff | restore | memory complete |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.note != "" {
			fmt.Fprintf(&out, "| %s | %s | %s | | | | | | |\n", r.size, r.path, r.note)
			continue
		}
		fmt.Fprintf(&out, "| %s | %s | %s | %.2f | %s | %s | %s | %s | %s |\n", r.size, r.path, secs(r.m.down), r.ratio,
			secs(r.m.dump), secs(r.m.transfer), secs(r.m.handoff), secs(r.m.restore), secs(r.m.complete))
	}
	fmt.Print(out.String())
	for _, r := range rows {
		if r.note == "" && r.ratio != 1 {
			b.ReportMetric(r.ratio, "x_floor_"+strings.ReplaceAll(r.size, " ", "")+"_"+shortPath(r.path))
		}
	}
}

func shortPath(p string) string {
	lazy := ""
	if strings.Contains(p, "Ferry lazy") {
		lazy = "lazy_"
	}
	switch {
	case strings.Contains(p, "migrate"):
		return lazy + "migrate"
	case strings.Contains(p, "drain"):
		return lazy + "drain"
	case strings.Contains(p, "compress none"):
		return "podman_none"
	default:
		return "podman_zstd"
	}
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func numCPU() int {
	out, _ := exec.Command("nproc").Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// median runs measure n times and returns the run of median downtime.
func median(b *testing.B, n int, measure func() move) move {
	b.Helper()
	var ms []move
	for i := 0; i < n; i++ {
		ms = append(ms, measure())
	}
	slices.SortFunc(ms, func(x, y move) int { return int(x.down - y.down) })
	return ms[len(ms)/2]
}

// pipeLog collects what a container writes to the write end of a pipe.
type pipeLog struct {
	w    *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func newPipeLog(b *testing.B) *pipeLog {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	l := &pipeLog{w: w, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.buf.WriteString(sc.Text() + "\n")
			l.mu.Unlock()
		}
		r.Close()
	}()
	return l
}

func (l *pipeLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitTicks waits until log shows n ticks.
func waitTicks(b *testing.B, what string, log func() string, n int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for len(parseTicks(log())) < n {
		if time.Now().After(deadline) {
			b.Fatalf("%s: no ticks: %s", what, tail(log(), 5))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// memtickBundle is a runc root of its own and a bundle that runs memtick
// (the binary bin) holding mib MiB and ticking every 10 ms.
func memtickBundle(b *testing.B, bin string, mib int) (string, *runctest.Bundle) {
	b.Helper()
	root := b.TempDir()
	bundle := runctest.NewBundle(b, "/memtick", "-mib", strconv.Itoa(mib), "-every", "10ms")
	data, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle.Dir, "rootfs", "memtick"), data, 0o755); err != nil {
		b.Fatal(err)
	}
	runctest.Cleanup(b, root, bundle.ID)
	return root, bundle
}

// benchSetup is what a benchmark moving memtick needs: it runs once, as
// the subreaper of the containers it runs itself; it returns the memtick
// image the dev cluster pulls and the binary for this machine.
func benchSetup(b *testing.B) (image, bin string) {
	b.Helper()
	if b.N > 1 {
		b.Skip("runs once: use -benchtime 1x")
	}
	if err := runctest.Subreaper(); err != nil {
		b.Fatal(err)
	}
	return dev.memtickImage(b), buildGo(b, "memtick", runtime.GOARCH)
}

// floorMove checkpoints a memtick container with `runc checkpoint` and
// restores it with `runc restore` on this node: the least any move of it
// costs with this runc and CRIU.
func floorMove(b *testing.B, bin string, mib int) move {
	b.Helper()
	runc := runctest.RuncPath()
	root, bundle := memtickBundle(b, bin, mib)
	images := filepath.Join(b.TempDir(), "images")
	runcLog := filepath.Join(b.TempDir(), "runc.log")
	// start runs runc with the container's stdio the write end of l.
	start := func(l *pipeLog, args ...string) time.Duration {
		cmd := exec.Command(runc, append([]string{"--root", root, "--log", runcLog}, args...)...)
		cmd.Stdout, cmd.Stderr = l.w, l.w
		t0 := time.Now()
		err := cmd.Run()
		took := time.Since(t0)
		l.w.Close()
		if err != nil {
			out, _ := os.ReadFile(runcLog)
			b.Fatalf("runc %s: %v %s", args[0], err, out)
		}
		return took
	}
	pid := func() int {
		out, err := exec.Command(runc, "--root", root, "state", bundle.ID).Output()
		var st struct {
			Pid int `json:"pid"`
		}
		if err != nil || json.Unmarshal(out, &st) != nil {
			b.Fatalf("runc state: %v", err)
		}
		return st.Pid
	}
	before := newPipeLog(b)
	start(before, "run", "--detach", "--bundle", bundle.Dir, bundle.ID)
	first := pid()
	waitTicks(b, "floor", before.String, 100)

	t0 := time.Now()
	if out, err := exec.Command(runc, "--root", root, "checkpoint", "--image-path", images,
		"--work-path", images+".work", bundle.ID).CombinedOutput(); err != nil {
		b.Fatalf("runc checkpoint: %v %s", err, out)
	}
	dump := time.Since(t0)
	runctest.Reap(first)
	after := newPipeLog(b)
	restore := start(after, "restore", "--detach", "--image-path", images, "--work-path", images+".work2",
		"--bundle", bundle.Dir, bundle.ID)
	restored := pid()
	waitTicks(b, "floor", after.String, 20)
	<-before.done
	down, err := downtime(before.String(), after.String())
	if err != nil {
		b.Fatal(err)
	}
	_ = exec.Command(runc, "--root", root, "delete", "--force", bundle.ID).Run()
	runctest.Reap(restored)
	return move{down: down, dump: dump, restore: restore}
}

// ferryMove runs memtick as a Nomad job and moves it to another node
// through `ferry-companion migrate` or a plain `nomad node drain`, by copy
// or lazily (mode).
func (c *cluster) ferryMove(b *testing.B, image string, mib int, how, mode string) move {
	b.Helper()
	job := fmt.Sprintf("bench-%s-%s-%d", mode, how, mib)
	spec := memtickJob(job, image, mib, 10*time.Millisecond)
	if mode == "lazy" {
		spec = lazyMemtickJob(job, image, mib, 10*time.Millisecond)
	}
	c.runJob(b, spec)
	a := c.waitAlloc(b, job, 3*time.Minute, running)
	c.waitLogs(b, a.ID, "counter", 2*time.Minute, func(s string) bool { return len(parseTicks(s)) >= 100 })
	defer c.purgeAndWait(b, job)
	switch how {
	case "migrate":
		c.companionMigrate(b, a.ID, c.otherNode(b, a.NodeID))
	case "drain":
		defer c.undrain(b, a.NodeID)
		if out, err := c.nomadCLI(b, "node", "drain", "-enable", "-yes", a.NodeID); err != nil {
			b.Fatalf("node drain: %v\n%s", err, out)
		}
	}
	next := c.replacement(b, job, a)
	after := c.waitLogs(b, next.ID, "counter", time.Minute, func(s string) bool { return len(parseTicks(s)) >= 20 })
	before, _ := c.nomadCLI(b, "alloc", "logs", a.ID, "counter")
	down, err := downtime(before, after)
	if err != nil {
		b.Fatal(err)
	}
	// Memory intact: memtick checked it against its sum after the pause.
	c.assertMemoryKept(b, next.ID)
	m := move{down: down}
	checked := "Checkpointed for migration"
	if mode == "lazy" {
		checked = "Checkpointed lazily for migration"
		complete := c.waitEvent(b, next.ID, "Memory complete", 2*time.Minute)
		if complete == nil {
			b.Fatalf("the lazy move's memory never completed:\n%s", c.events(b, next.ID))
		}
		m.complete = ms(complete.Details[sdk.EventLazyMs])
	}
	src, dst := c.events(b, a.ID), c.events(b, next.ID)
	checkpointed, restoring := src.find(checked), dst.find("Restoring from checkpoint")
	restored := dst.find("Restored from checkpoint")
	if checkpointed == nil || restoring == nil || restored == nil {
		b.Fatalf("the move was not a %s restore:\n%s\n%s", mode, src, dst)
	}
	m.dump = ms(checkpointed.Details[sdk.EventDumpMs])
	m.transfer = ms(checkpointed.Details[sdk.EventTransferMs]) + ms(restored.Details[sdk.EventFetchMs])
	m.handoff = time.Unix(0, restoring.Time).Sub(time.Unix(0, checkpointed.Time))
	m.restore = ms(restored.Details[sdk.EventRestoreMs])
	return m
}

func ms(v string) time.Duration {
	n, _ := strconv.ParseInt(v, 10, 64)
	return time.Duration(n) * time.Millisecond
}

// purgeAndWait purges job and waits until none of its allocations runs, so
// that its memory is free for the next.
func (c *cluster) purgeAndWait(t testing.TB, job string) {
	t.Helper()
	c.purge(t, job)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		allocs, _, err := c.api.Jobs().Allocations(job, true, nil)
		if err != nil || !slices.ContainsFunc(allocs, func(a *nomad.AllocationListStub) bool {
			return a.ClientStatus == nomad.AllocClientStatusRunning || a.ClientStatus == nomad.AllocClientStatusPending
		}) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// podmanConf makes Podman use this machine's runc (Debian's crun cannot
// checkpoint) with limits the sandbox allows.
const podmanConf = `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
[engine.runtimes]
runc = ["%s"]
`

// podmanMove checkpoints a memtick container with `podman container
// checkpoint --export` and restores it with `podman container restore
// --import` on this node.
func podmanMove(b *testing.B, bin string, mib int, compress string) move {
	b.Helper()
	dir := b.TempDir()
	conf := filepath.Join(dir, "containers.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(podmanConf, runctest.RuncPath())), 0o644); err != nil {
		b.Fatal(err)
	}
	podman := func(args ...string) (string, time.Duration) {
		cmd := exec.Command("podman", args...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+conf, "PATH=/usr/local/bin:"+os.Getenv("PATH"))
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), time.Since(t0)
	}
	if _, err := exec.Command("podman", "image", "exists", "localhost/ferry-memtick:bench").CombinedOutput(); err != nil {
		rootfs := filepath.Join(dir, "rootfs.tar")
		tarMemtick(b, bin, rootfs)
		podman("import", "--change", `ENTRYPOINT ["/memtick"]`, rootfs, "localhost/ferry-memtick:bench")
	}
	name := "ferry-bench-" + strconv.Itoa(mib)
	_ = exec.Command("podman", "rm", "-f", name).Run()
	podman("run", "-d", "--name", name, "--network", "none", "localhost/ferry-memtick:bench", "-mib", strconv.Itoa(mib), "-every", "10ms")
	defer func() { _ = exec.Command("podman", "rm", "-f", name).Run() }()
	logs := func() string { out, _ := podman("logs", name); return out }
	waitTicks(b, "podman", logs, 100)
	archive := filepath.Join(dir, "checkpoint.tar")
	_, dump := podman("container", "checkpoint", "--compress", compress, "--export", archive, name)
	before := logs()
	podman("rm", name)
	_, restore := podman("container", "restore", "--import", archive)
	waitTicks(b, "podman", logs, len(parseTicks(before))+20)
	down, err := downtime(logs())
	if err != nil {
		b.Fatal(err)
	}
	return move{down: down, dump: dump, restore: restore}
}

// tarMemtick writes a tar holding the memtick binary at /memtick.
func tarMemtick(b *testing.B, bin, dst string) {
	b.Helper()
	dir := b.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "memtick"), data, 0o755); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", dir, "-cf", dst, "memtick").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v %s", err, out)
	}
}
