package e2e

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
)

// BenchmarkMigrateStream measures a TCP stream across a live move on the
// Ferry network: a client in the hub namespace reads seqserve's sequence
// over one connection while `ferry-companion migrate` moves the task node
// to node; the stream's longest pause is compared with the downtime of the
// same task moved without a connection (read from its own ticks), and no
// line may be lost or repeated. Each figure is the median of
// FERRY_BENCH_RUNS (3) moves. Run it with `make bench-migrate`.
func BenchmarkMigrateStream(b *testing.B) {
	if b.N > 1 {
		b.Skip("runs once: use -benchtime 1x")
	}
	ref := dev.registry + "/ferry/seqserve:bench"
	testutil.PushImage(b, goImage(b, "seqserve", runtime.GOARCH), dev.push+"/ferry/seqserve:bench")
	var alone, gaps, withConn []time.Duration
	for range benchRuns() {
		alone = append(alone, dev.streamMove(b, ref, false).down)
		m := dev.streamMove(b, ref, true)
		gaps, withConn = append(gaps, m.gap), append(withConn, m.down)
	}
	down, gap := medianOf(alone), medianOf(gaps)
	ratio := gap.Seconds() / down.Seconds()
	fmt.Printf("\nTCP stream across a live move (median of %d; seqserve, a line every 10 ms; this machine: %d cores, every node on it)\n\n", benchRuns(), numCPU())
	fmt.Printf("| | time |\n|---|---|\n")
	fmt.Printf("| downtime, no connection | %s |\n| downtime, with the connection | %s |\n| stream gap | %s |\n| gap x downtime | %.2f |\n\n",
		secs(down), secs(medianOf(withConn)), secs(gap), ratio)
	fmt.Println("Every run: no line lost or repeated, one connection throughout.")
	b.ReportMetric(ratio, "x_downtime_gap")
}

// streamResult is one move of seqserve.
type streamResult struct{ down, gap time.Duration }

// streamMove runs seqserve on the Ferry network and moves it with
// ferry-companion migrate, reading its stream through the move when
// connected.
func (c *cluster) streamMove(b *testing.B, ref string, connected bool) streamResult {
	b.Helper()
	job := "bench-stream"
	c.runJob(b, fmt.Sprintf(seqJob, job, 1, ref))
	defer c.purgeAndWait(b, job)
	a := c.waitAlloc(b, job, 2*time.Minute, running)
	c.waitLogs(b, a.ID, "seq", time.Minute, func(s string) bool { return len(parseTicks(s)) >= 100 })
	var s *stream
	if connected {
		l := c.leaseOf(b, a.ID)
		if l == nil {
			b.Fatalf("allocation %s holds no lease", a.ID)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		conn, err := dialInNetNS(ctx, "/var/run/netns/ferry-hub", "tcp", net.JoinHostPort(l.Address.String(), "8080"))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		s = readStream(b, conn)
		<-s.started
		time.Sleep(time.Second)
	}
	c.companionMigrate(b, a.ID, c.otherNode(b, a.NodeID))
	next := c.replacement(b, job, a)
	after := c.waitLogs(b, next.ID, "seq", time.Minute, func(s string) bool { return len(parseTicks(s)) >= 100 })
	before, _ := c.nomadCLI(b, "alloc", "logs", a.ID, "seq")
	down, err := downtime(before, after)
	if err != nil {
		b.Fatal(err)
	}
	r := streamResult{down: down}
	if s != nil {
		time.Sleep(time.Second)
		r.gap, _ = s.check(b)
	}
	return r
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
