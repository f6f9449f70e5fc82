package lease

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
)

func newStore(t *testing.T, first, last string) (*Store, context.Context) {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: catalogtest.StartConsul(t)})
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	pool := Pool{Subnet: netip.MustParsePrefix("10.98.0.0/24"), First: netip.MustParseAddr(first), Last: netip.MustParseAddr(last),
		Gateway: netip.MustParseAddr("10.98.0.1")}
	must.NoError(t, pool.Validate())
	return &Store{Consul: c, Network: "ferry", Pool: pool}, ctx
}

// fates answers from a table; allocations not in it are live.
func fates(m map[string]Fate) FateFunc {
	var mu sync.Mutex
	return func(_ context.Context, id string) (Fate, error) {
		mu.Lock()
		defer mu.Unlock()
		return m[id], nil
	}
}

func slot(job string, i int) Slot { return Slot{Namespace: "default", Job: job, Group: "g", Index: i} }

func TestAcquireFreshAndAgain(t *testing.T) {
	s, ctx := newStore(t, "10.98.0.1", "10.98.0.20")
	live := fates(nil)
	a, err := s.Acquire(ctx, Request{AllocID: "a", Slot: slot("web", 0)}, live)
	must.NoError(t, err)
	must.Eq(t, "10.98.0.2", a.Address.String(), must.Sprint("the gateway is never leased"))
	must.Eq(t, "02:fe:0a:62:00:02", a.MAC)
	b, err := s.Acquire(ctx, Request{AllocID: "b", Slot: slot("web", 1)}, live)
	must.NoError(t, err)
	must.Eq(t, "10.98.0.3", b.Address.String())
	again, err := s.Acquire(ctx, Request{AllocID: "a", Slot: slot("web", 0)}, live)
	must.NoError(t, err)
	must.Eq(t, a.Address, again.Address)

	// A DEL while Nomad cannot say keeps the lease moving; the same
	// allocation's next ADD holds it again, no longer moving, so that
	// another allocation of the slot does not take it.
	must.NoError(t, s.Release(ctx, "a", true))
	again, err = s.Acquire(ctx, Request{AllocID: "a", Slot: slot("web", 0)}, live)
	must.NoError(t, err)
	must.Eq(t, a.Address, again.Address)
	must.False(t, again.Moving)
	other, err := s.Acquire(ctx, Request{AllocID: "z", Slot: slot("web", 0)}, live)
	must.NoError(t, err)
	must.NotEq(t, a.Address, other.Address)
}

func TestReplacementKeepsAddress(t *testing.T) {
	s, ctx := newStore(t, "10.98.0.10", "10.98.0.20")
	fate := map[string]Fate{}
	old, err := s.Acquire(ctx, Request{AllocID: "old", Slot: slot("sim", 0)}, fates(fate))
	must.NoError(t, err)

	// The source's CNI DEL comes first: the lease is kept, moving.
	must.NoError(t, s.Release(ctx, "old", true))
	leases, err := s.List(ctx)
	must.NoError(t, err)
	must.SliceLen(t, 1, leases)
	must.True(t, leases[0].Moving)

	// The replacement takes it over, address and MAC, even without
	// Nomad naming its previous allocation (a rescheduled batch job).
	next, err := s.Acquire(ctx, Request{AllocID: "next", Slot: slot("sim", 0)}, fates(fate))
	must.NoError(t, err)
	must.Eq(t, old.Address, next.Address)
	must.Eq(t, old.MAC, next.MAC)
	must.False(t, next.Moving)
	must.Eq(t, "old", next.TakenFrom)

	// The replacement's own replacement, named by Nomad, before the DEL.
	third, err := s.Acquire(ctx, Request{AllocID: "third", Previous: "next", Slot: slot("sim", 0)}, fates(fate))
	must.NoError(t, err)
	must.Eq(t, old.Address, third.Address)
	// A DEL of the source after the takeover changes nothing.
	must.NoError(t, s.Release(ctx, "next", false))
	leases, err = s.List(ctx)
	must.NoError(t, err)
	must.SliceLen(t, 1, leases)
	must.Eq(t, "third", leases[0].AllocID)

	// Stopped for good: the lease and the slot are gone; the address is
	// free again.
	must.NoError(t, s.Release(ctx, "third", false))
	leases, err = s.List(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, leases)
	other, err := s.Acquire(ctx, Request{AllocID: "x", Slot: slot("other", 0)}, fates(fate))
	must.NoError(t, err)
	must.Eq(t, old.Address, other.Address)
}

func TestLiveHolderKeepsItsAddress(t *testing.T) {
	s, ctx := newStore(t, "10.98.0.10", "10.98.0.20")
	fate := map[string]Fate{}
	a, err := s.Acquire(ctx, Request{AllocID: "a", Slot: slot("web", 0)}, fates(fate))
	must.NoError(t, err)
	// Another allocation of the same index while a runs (an update that
	// starts the new one first): a free address.
	b, err := s.Acquire(ctx, Request{AllocID: "b", Slot: slot("web", 0)}, fates(fate))
	must.NoError(t, err)
	must.NotEq(t, a.Address, b.Address)
	// Once a is gone, the next of the index takes the slot's address.
	fate["a"] = Gone
	c, err := s.Acquire(ctx, Request{AllocID: "c", Slot: slot("web", 0)}, fates(fate))
	must.NoError(t, err)
	must.Eq(t, a.Address, c.Address)
	// b's release leaves c's slot alone.
	must.NoError(t, s.Release(ctx, "b", false))
	d, err := s.Acquire(ctx, Request{AllocID: "c", Slot: slot("web", 0)}, fates(fate))
	must.NoError(t, err)
	must.Eq(t, a.Address, d.Address)
}

// Concurrent starts never share an address, for distinct slots or one.
func TestConcurrentStarts(t *testing.T) {
	s, ctx := newStore(t, "10.98.0.10", "10.98.0.59")
	live := fates(nil)
	const n = 24
	got := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sl := slot("job", i)
			if i%3 == 0 {
				sl = slot("same", 0) // eight allocations racing for one slot
			}
			l, err := s.Acquire(ctx, Request{AllocID: fmt.Sprintf("alloc-%d", i), Slot: sl}, live)
			errs[i] = err
			if l != nil {
				got[i] = l.Address
			}
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range n {
		must.NoError(t, errs[i])
		if j, dup := seen[got[i]]; dup {
			t.Fatalf("allocations %d and %d both hold %s", j, i, got[i])
		}
		seen[got[i]] = i
	}
	leases, err := s.List(ctx)
	must.NoError(t, err)
	must.SliceLen(t, n, leases)
}

func TestExhausted(t *testing.T) {
	s, ctx := newStore(t, "10.98.0.10", "10.98.0.11")
	live := fates(nil)
	for i := range 2 {
		_, err := s.Acquire(ctx, Request{AllocID: fmt.Sprint(i), Slot: slot("j", i)}, live)
		must.NoError(t, err)
	}
	_, err := s.Acquire(ctx, Request{AllocID: "x", Slot: slot("j", 9)}, live)
	must.ErrorIs(t, err, ErrExhausted)
	must.ErrorContains(t, err, "range 10.98.0.10-10.98.0.11")
}

func TestSlotOf(t *testing.T) {
	s, err := SlotOf("default", "web", "api", "web.api[3]")
	must.NoError(t, err)
	must.Eq(t, Slot{Namespace: "default", Job: "web", Group: "api", Index: 3}, s)
	for _, bad := range []string{"web.api", "web.api[x]", "web.api[-1]"} {
		_, err := SlotOf("default", "web", "api", bad)
		must.Error(t, err)
	}
}

func TestSweepAndNetworks(t *testing.T) {
	s, ctx := newStore(t, "10.98.0.10", "10.98.0.20")
	live := fates(nil)
	for _, id := range []string{"keep", "stale"} {
		_, err := s.Acquire(ctx, Request{AllocID: id, Slot: slot(id, 0)}, live)
		must.NoError(t, err)
	}
	n, err := s.Sweep(ctx, func(_ context.Context, l Lease) (bool, error) { return l.AllocID == "stale", nil })
	must.NoError(t, err)
	must.Eq(t, 1, n)
	leases, err := s.List(ctx)
	must.NoError(t, err)
	must.SliceLen(t, 1, leases)
	must.Eq(t, "keep", leases[0].AllocID)
	nets, err := Networks(ctx, s.Consul)
	must.NoError(t, err)
	must.Eq(t, []string{"ferry"}, nets)
}
