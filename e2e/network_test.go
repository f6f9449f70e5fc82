package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/lease"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/testutil"
	nomad "github.com/hashicorp/nomad/api"
)

// seqJob serves a sequence (e2e/testdata/seqserve) on the Ferry network,
// checkpointed with its established connections.
const seqJob = `
job %q {
  datacenters = ["*"]
  type        = "service"
  group "g" {
    count = %d
    network {
      mode = "cni/ferry"
    }
    task "seq" {
      driver = "ferry"
      config {
        image = %q
        checkpoint {
          enabled         = true
          tcp_established = true
        }
      }
      kill_timeout = "1m"
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
`

// stream reads a seqserve connection and checks every line follows the
// last: no line lost or repeated; it keeps the longest pause.
type stream struct {
	mu      sync.Mutex
	next    uint64
	maxGap  time.Duration
	last    time.Time
	err     error
	started chan struct{}
}

func readStream(t testing.TB, conn net.Conn) *stream {
	s := &stream{started: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			n, err := strconv.ParseUint(strings.TrimPrefix(sc.Text(), "seq "), 10, 64)
			now := time.Now()
			s.mu.Lock()
			switch {
			case err != nil:
				s.err = fmt.Errorf("line %q", sc.Text())
			case n != s.next:
				s.err = fmt.Errorf("read seq %d, want %d: a line was lost or repeated", n, s.next)
			}
			if !s.last.IsZero() && now.Sub(s.last) > s.maxGap {
				s.maxGap = now.Sub(s.last)
			}
			if s.next == 0 {
				close(s.started)
			}
			s.next, s.last = n+1, now
			failed := s.err != nil
			s.mu.Unlock()
			if failed {
				return
			}
		}
		s.mu.Lock()
		if s.err == nil {
			s.err = fmt.Errorf("the stream ended after seq %d: %v", s.next, sc.Err())
		}
		s.mu.Unlock()
	}()
	return s
}

// check fails the test if the stream broke, and returns its longest pause
// and how many lines came.
func (s *stream) check(t testing.TB) (time.Duration, uint64) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.maxGap, s.next
}

// leaseOf is the lease allocation id holds on the Ferry network.
func (c *cluster) leaseOf(t testing.TB, allocID string) *lease.Lease {
	t.Helper()
	leases, err := (&lease.Store{Consul: c.catalog(t).Client(), Network: "ferry"}).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range leases {
		if leases[i].AllocID == allocID {
			return &leases[i]
		}
	}
	return nil
}

// TestNetworkIdentity: a task on the Ferry network serves a TCP stream to
// a client in the hub namespace (the clients' shared L2); moved with
// ferry-companion migrate and then by a node drain, it keeps its address
// and MAC, and the client's one connection goes on with no error and no
// line lost or repeated. A lease outlives a failed restore and is released
// when the job stops; concurrent starts never share an address.
func TestNetworkIdentity(t *testing.T) {
	img := goImage(t, "seqserve", "amd64")
	ref := dev.registry + "/ferry/seqserve:1"
	testutil.PushImage(t, img, dev.push+"/ferry/seqserve:1")
	dev.runJob(t, fmt.Sprintf(seqJob, "seq", 1, ref))
	t.Cleanup(func() { dev.purge(t, "seq") })
	a := dev.waitAlloc(t, "seq", 2*time.Minute, running)
	l := dev.leaseOf(t, a.ID)
	if l == nil {
		t.Fatalf("allocation %s holds no lease", a.ID)
	}
	addr := net.JoinHostPort(l.Address.String(), "8080")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var conn net.Conn
	waitFor(t, time.Minute, "the task to serve on "+addr, func() bool {
		var err error
		conn, err = dialInNetNS(ctx, "/var/run/netns/ferry-hub", "tcp", addr)
		return err == nil
	})
	defer conn.Close()
	s := readStream(t, conn)
	select {
	case <-s.started:
	case <-time.After(30 * time.Second):
		t.Fatal("no line from the stream")
	}

	moved := func(how string, old *nomad.AllocationListStub) *nomad.AllocationListStub {
		t.Helper()
		next := dev.replacement(t, "seq", old)
		if next.NodeID == old.NodeID {
			t.Fatalf("%s: the replacement landed on the source node", how)
		}
		nl := dev.leaseOf(t, next.ID)
		if nl == nil || nl.Address != l.Address || nl.MAC != l.MAC {
			t.Fatalf("%s: the replacement holds %+v, not %s %s", how, nl, l.Address, l.MAC)
		}
		events := strings.Join(dev.taskEvents(t, next.ID, "seq"), "\n")
		if !strings.Contains(events, "Restored from checkpoint of "+old.ID[:8]) {
			t.Fatalf("%s: not restored:\n%s", how, events)
		}
		// The stream goes on over the same connection.
		_, before := s.check(t)
		waitFor(t, 30*time.Second, how+": the stream to go on", func() bool {
			_, n := s.check(t)
			return n > before+50
		})
		gap, n := s.check(t)
		t.Logf("%s: %s on %s kept %s; longest pause %s, %d lines so far", how, next.ID[:8], next.NodeName, l.Address, gap, n)
		return next
	}

	dev.companionMigrate(t, a.ID, dev.otherNode(t, a.NodeID))
	b := moved("ferry-companion migrate", a)

	if out, err := dev.nomadCLI(t, "node", "drain", "-enable", "-yes", b.NodeID); err != nil {
		t.Fatalf("nomad node drain: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = dev.nomadCLI(t, "node", "drain", "-disable", "-yes", b.NodeID)
		dev.eligible(t, b.NodeID, true)
	})
	c := moved("nomad node drain", b)
	_, _ = dev.nomadCLI(t, "node", "drain", "-disable", "-yes", b.NodeID)
	dev.eligible(t, b.NodeID, true)

	// A restore that fails (its checkpoint's record tampered with) starts
	// the task fresh, on the address its predecessor held, here on the
	// predecessor's own node (the others ineligible): the predecessor's
	// namespace, which Nomad keeps until it collects the allocation, gives
	// the address up. The job's stop then releases it.
	for _, n := range dev.readyNodes(t) {
		if n.ID != c.NodeID {
			dev.eligible(t, n.ID, false)
			defer dev.eligible(t, n.ID, true)
		}
	}
	tampered := dev.tamperWhenReady(t, c.ID, "seq")
	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", c.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	if err := <-tampered; err != nil {
		t.Fatal(err)
	}
	d := dev.replacement(t, "seq", c)
	if d.NodeID != c.NodeID {
		t.Fatalf("the replacement runs on %s, not on its predecessor's node %s", d.NodeName, c.NodeName)
	}
	if events := strings.Join(dev.taskEvents(t, d.ID, "seq"), "\n"); !strings.Contains(events, "Restore failed, starting fresh") {
		t.Fatalf("the restore did not fail:\n%s", events)
	}
	if dl := dev.leaseOf(t, d.ID); dl == nil || dl.Address != l.Address {
		t.Fatalf("after a failed restore the task holds %+v, not %s", dl, l.Address)
	}
	dev.purge(t, "seq")
	waitFor(t, time.Minute, "the lease of seq to be released", func() bool { return dev.leaseOf(t, d.ID) == nil })

	// A lease left behind, moving, by an allocation Nomad no longer knows
	// (its replacement never came) is released by the planner.
	store := &lease.Store{Consul: dev.catalog(t).Client(), Network: "ferry", Pool: lease.Pool{
		Subnet: netip.MustParsePrefix("10.97.0.0/24"), First: netip.MustParseAddr("10.97.0.100"), Last: netip.MustParseAddr("10.97.0.199")}}
	ghost := newAllocID(t)
	if _, err := store.Acquire(ctx, lease.Request{AllocID: ghost, Slot: lease.Slot{Namespace: "default", Job: "ghost", Group: "g"}},
		func(context.Context, string) (lease.Fate, error) { return lease.Live, nil }); err != nil {
		t.Fatal(err)
	}
	if err := store.Release(ctx, ghost, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Minute, "the planner to release the lease left behind", func() bool { return dev.leaseOf(t, ghost) == nil })

	// Six allocations starting at once: six addresses.
	dev.runJob(t, fmt.Sprintf(seqJob, "seq-many", 6, ref))
	t.Cleanup(func() { dev.purge(t, "seq-many") })
	dev.waitRunning(t, "seq-many", 6)
	seen := map[string]string{}
	for _, al := range dev.runningAllocs(t, "seq-many") {
		hl := dev.leaseOf(t, al.ID)
		if hl == nil {
			t.Fatalf("allocation %s holds no lease", al.ID)
		}
		if other, dup := seen[hl.Address.String()]; dup {
			t.Fatalf("allocations %s and %s share %s", other, al.ID, hl.Address)
		}
		seen[hl.Address.String()] = al.ID
	}

	// Stopped for good: the leases are released.
	dev.purge(t, "seq-many")
	waitFor(t, time.Minute, "the leases of seq-many to be released", func() bool {
		pairs, _, err := dev.catalog(t).Client().KV().Keys(sdk.PrefixNetworks+"ferry/slot/default/seq-many/", "", nil)
		return err == nil && len(pairs) == 0
	})
}

// runningAllocs are the running allocations of job.
func (c *cluster) runningAllocs(t testing.TB, job string) []*nomad.AllocationListStub {
	t.Helper()
	allocs, _, err := c.api.Jobs().Allocations(job, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []*nomad.AllocationListStub
	for _, a := range allocs {
		if a.ClientStatus == nomad.AllocClientStatusRunning {
			out = append(out, a)
		}
	}
	return out
}
