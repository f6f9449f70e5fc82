package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/runc/runctest"
	"github.com/ferry-nomad/ferry/driver/sdk"
)

// pauses are the pauses of a ticking task longer than 50 ms: the ticks
// come every 10 ms, so each is a freeze.
func pauses(log string) []time.Duration {
	ticks := parseTicks(log)
	var out []time.Duration
	for i := 1; i < len(ticks); i++ {
		if gap := ticks[i].t.Sub(ticks[i-1].t); gap > 50*time.Millisecond {
			out = append(out, gap)
		}
	}
	return out
}

// BenchmarkPeriodic measures how long a periodic checkpoint
// (checkpoint.interval) freezes a task holding 256 MiB and 1 GiB of touched
// random memory (memtick, ticking every 10 ms), next to a plain `runc
// checkpoint --leave-running` of the same container on one node with the
// same runc and CRIU, in the same run: the longest pause of the task's
// ticks around each checkpoint, median of FERRY_BENCH_RUNS (3)
// checkpoints. Run it with `make bench-periodic`.
func BenchmarkPeriodic(b *testing.B) {
	image, bin := benchSetup(b)
	type row struct {
		size         string
		floor, ferry time.Duration
		bytes        string
	}
	var rows []row
	for _, mib := range []int{256, 1024} {
		floor := leaveRunningFreeze(b, bin, mib, benchRuns())
		ferry, bytes := dev.periodicFreeze(b, image, mib, benchRuns())
		rows = append(rows, row{size: fmt.Sprintf("%d MiB", mib), floor: floor, ferry: ferry, bytes: bytes})
	}
	fmt.Printf("\nPeriodic checkpoint freeze (median of %d; memtick ticking every 10 ms; this machine: %d cores)\n\n", benchRuns(), numCPU())
	fmt.Printf("| memory | runc checkpoint --leave-running | Ferry periodic checkpoint | x runc | checkpoint size |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		ratio := r.ferry.Seconds() / r.floor.Seconds()
		fmt.Printf("| %s | %s | %s | %.2f | %s |\n", r.size, secs(r.floor), secs(r.ferry), ratio, r.bytes)
		b.ReportMetric(ratio, "x_runc_"+r.size[:len(r.size)-4]+"MiB")
	}
}

// leaveRunningFreeze runs memtick in a runc container and checkpoints it
// n times with `runc checkpoint --leave-running`, returning the median
// freeze its ticks show.
func leaveRunningFreeze(b *testing.B, bin string, mib, n int) time.Duration {
	b.Helper()
	runc := runctest.RuncPath()
	root, bundle := memtickBundle(b, bin, mib)
	log := newPipeLog(b)
	cmd := exec.Command(runc, "--root", root, "run", "--detach", "--bundle", bundle.Dir, bundle.ID)
	cmd.Stdout, cmd.Stderr = log.w, log.w
	err := cmd.Run()
	log.w.Close()
	if err != nil {
		b.Fatalf("runc run: %v %s", err, log.String())
	}
	waitTicks(b, "leave-running", log.String, 100)
	for i := range n {
		images := filepath.Join(b.TempDir(), "images")
		if out, err := exec.Command(runc, "--root", root, "checkpoint", "--leave-running", "--image-path", images,
			"--work-path", images+".work", bundle.ID).CombinedOutput(); err != nil {
			b.Fatalf("runc checkpoint --leave-running: %v %s", err, out)
		}
		waitTicks(b, "leave-running", log.String, len(parseTicks(log.String()))+50)
		if got := len(pauses(log.String())); got < i+1 {
			b.Fatalf("checkpoint %d: no pause in the ticks", i+1)
		}
		_ = os.RemoveAll(images)
	}
	_ = exec.Command(runc, "--root", root, "delete", "--force", bundle.ID).Run()
	return medianOf(pauses(log.String()))
}

// periodicFreeze runs memtick as a Nomad job with checkpoint.interval =
// "10s", keep = 1, until n periodic checkpoints were taken, and returns the
// median freeze its ticks show and the last checkpoint's size.
func (c *cluster) periodicFreeze(b *testing.B, image string, mib, n int) (time.Duration, string) {
	b.Helper()
	job := fmt.Sprintf("bench-periodic-%d", mib)
	c.runJob(b, checkpointedService(job, image, fmt.Sprintf(`args = ["-mib", "%d", "-every", "10ms"]`, mib),
		`enabled = true; interval = "10s"; keep = 1`, mib+96))
	defer c.purgeAndWait(b, job)
	a := c.waitAlloc(b, job, 3*time.Minute, running)
	var taken int
	var bytes string
	for deadline := time.Now().Add(time.Duration(n+3) * 15 * time.Second); taken < n; time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			b.Fatalf("%d periodic checkpoints of %d taken:\n%s", taken, n, c.events(b, a.ID))
		}
		taken = 0
		for _, e := range c.events(b, a.ID) {
			switch {
			case strings.HasPrefix(e.DisplayMessage, "Periodic checkpoint failed"):
				b.Fatalf("periodic checkpoint: %s", e.DisplayMessage)
			case strings.HasPrefix(e.DisplayMessage, "Periodic checkpoint:"):
				taken++
				if n, err := strconv.ParseInt(e.Details[sdk.EventBytes], 10, 64); err == nil {
					bytes = fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
				}
			}
		}
	}
	log := c.waitLogs(b, a.ID, "counter", time.Minute, func(s string) bool { return len(pauses(s)) >= n })
	p := pauses(log)
	slices.Sort(p)
	return medianOf(p[len(p)-n:]), bytes
}
