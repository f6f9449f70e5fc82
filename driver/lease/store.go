package lease

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/hashicorp/consul/api"
)

// Fate is what became of an allocation, as Nomad tells it.
type Fate int

const (
	// Live: running, or about to.
	Live Fate = iota
	// Migrating: it moves to another node; its replacement takes its
	// lease over.
	Migrating
	// Gone: stopped for good, or unknown to Nomad.
	Gone
)

// FateFunc tells an allocation's fate.
type FateFunc func(ctx context.Context, allocID string) (Fate, error)

// Store keeps one network's leases.
type Store struct {
	Consul  *api.Client
	Network string
	Pool    Pool
}

// Request is an allocation asking for its address.
type Request struct {
	AllocID string
	// Previous is the allocation it replaces, when Nomad says so.
	Previous string
	Slot     Slot
}

// ErrExhausted: every address of the pool is leased.
var ErrExhausted = errors.New("no free address")

// maxAttempts bounds the retries of a lost check-and-set.
const maxAttempts = 64

// Acquire returns the lease req's allocation holds, creating or taking one
// over: the slot's address when its holder is req.Previous, migrating or
// gone; else the lowest free address of the pool.
func (s *Store) Acquire(ctx context.Context, req Request, fate FateFunc) (*Lease, error) {
	k := keysOf(s.Network)
	for range maxAttempts {
		slotPair, _, err := s.Consul.KV().Get(k.slot(req.Slot), s.q(ctx))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k.slot(req.Slot), err)
		}
		if slotPair != nil {
			l, ok, err := s.fromSlot(ctx, req, slotPair, fate)
			if err != nil || ok {
				return l, err
			}
			if l == nil {
				continue // lost a race: read again
			}
		}
		l, err := s.fresh(ctx, req, slotPair)
		if errors.Is(err, catalog.ErrConflict) {
			continue
		}
		return l, err
	}
	return nil, fmt.Errorf("lease for %s: %w: too many concurrent changes", req.AllocID, catalog.ErrConflict)
}

// fromSlot is the lease of the slot's address when req may hold it: ok
// with the lease; not ok with a nil lease when a race was lost (read again),
// with a non-nil one when the holder is live (req gets a free address).
func (s *Store) fromSlot(ctx context.Context, req Request, slotPair *api.KVPair, fate FateFunc) (*Lease, bool, error) {
	k := keysOf(s.Network)
	addr, err := netip.ParseAddr(string(slotPair.Value))
	if err != nil {
		return nil, false, fmt.Errorf("%s holds %q, not an address", slotPair.Key, slotPair.Value)
	}
	ipPair, _, err := s.Consul.KV().Get(k.ip(addr), s.q(ctx))
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", k.ip(addr), err)
	}
	if ipPair == nil {
		// The slot outlived its lease: drop it and start afresh.
		_, err := s.txn(ctx, api.KVTxnOps{{Verb: api.KVDeleteCAS, Key: slotPair.Key, Index: slotPair.ModifyIndex}})
		return nil, false, err
	}
	var l Lease
	if err := json.Unmarshal(ipPair.Value, &l); err != nil {
		return nil, false, fmt.Errorf("decode %s: %w", ipPair.Key, err)
	}
	if l.AllocID == req.AllocID && !l.Moving {
		return &l, true, nil
	}
	// Its own lease, kept moving by an earlier DEL: held again.
	takeOver := l.AllocID == req.AllocID || l.AllocID == req.Previous || l.Moving
	if !takeOver {
		f, err := fate(ctx, l.AllocID)
		if err != nil {
			return nil, false, fmt.Errorf("the fate of %s, which holds %s: %w", l.AllocID, addr, err)
		}
		takeOver = f != Live
	}
	if !takeOver {
		return &l, false, nil
	}
	if l.AllocID != req.AllocID {
		l.TakenFrom = l.AllocID
	}
	l.AllocID, l.Moving, l.Slot, l.Updated = req.AllocID, false, req.Slot, time.Now().UTC()
	value, err := json.Marshal(l)
	if err != nil {
		return nil, false, err
	}
	ok, err := s.txn(ctx, api.KVTxnOps{
		{Verb: api.KVCAS, Key: ipPair.Key, Value: value, Index: ipPair.ModifyIndex},
		{Verb: api.KVCheckIndex, Key: slotPair.Key, Index: slotPair.ModifyIndex},
	})
	if err != nil || !ok {
		return nil, false, err
	}
	return &l, true, nil
}

// fresh leases the lowest free address to req; the slot points at it too
// unless another live allocation holds the slot (slotPair).
func (s *Store) fresh(ctx context.Context, req Request, slotPair *api.KVPair) (*Lease, error) {
	k := keysOf(s.Network)
	taken, _, err := s.Consul.KV().Keys(k.ips(), "", s.q(ctx))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", k.ips(), err)
	}
	used := make(map[string]bool, len(taken))
	for _, key := range taken {
		used[key] = true
	}
	first := s.Pool.First.As4()
	base := binary.BigEndian.Uint32(first[:])
	for i := range s.Pool.size() {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+uint32(i))
		addr := netip.AddrFrom4(b)
		if addr == s.Pool.Gateway || used[k.ip(addr)] {
			continue
		}
		l := Lease{Address: addr, MAC: MACOf(addr).String(), Slot: req.Slot, AllocID: req.AllocID, Updated: time.Now().UTC()}
		value, err := json.Marshal(l)
		if err != nil {
			return nil, err
		}
		ops := api.KVTxnOps{{Verb: api.KVCAS, Key: k.ip(addr), Value: value, Index: 0}}
		if slotPair == nil {
			ops = append(ops, &api.KVTxnOp{Verb: api.KVCAS, Key: k.slot(req.Slot), Value: []byte(addr.String()), Index: 0})
		}
		ok, err := s.txn(ctx, ops)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, catalog.ErrConflict
		}
		return &l, nil
	}
	return nil, fmt.Errorf("network %s, range %s-%s: %w", s.Network, s.Pool.First, s.Pool.Last, ErrExhausted)
}

// Release gives up the leases allocID holds: kept, marked moving, when it
// migrates (its replacement takes them over); removed with their slot
// otherwise. A lease another allocation took over is not touched.
func (s *Store) Release(ctx context.Context, allocID string, migrating bool) error {
	k := keysOf(s.Network)
	for range maxAttempts {
		pairs, _, err := s.Consul.KV().List(k.ips(), s.q(ctx))
		if err != nil {
			return fmt.Errorf("list %s: %w", k.ips(), err)
		}
		var ops api.KVTxnOps
		for _, p := range pairs {
			var l Lease
			if json.Unmarshal(p.Value, &l) != nil || l.AllocID != allocID {
				continue
			}
			if migrating {
				l.Moving, l.Updated = true, time.Now().UTC()
				value, err := json.Marshal(l)
				if err != nil {
					return err
				}
				ops = append(ops, &api.KVTxnOp{Verb: api.KVCAS, Key: p.Key, Value: value, Index: p.ModifyIndex})
				continue
			}
			ops = append(ops, &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: p.Key, Index: p.ModifyIndex})
			slot, _, err := s.Consul.KV().Get(k.slot(l.Slot), s.q(ctx))
			if err != nil {
				return err
			}
			if slot != nil && string(slot.Value) == l.Address.String() {
				ops = append(ops, &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: slot.Key, Index: slot.ModifyIndex})
			}
		}
		if len(ops) == 0 {
			return nil
		}
		ok, err := s.txn(ctx, ops)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("release the leases of %s: %w", allocID, catalog.ErrConflict)
}

// List returns every lease of the network.
func (s *Store) List(ctx context.Context) ([]Lease, error) {
	k := keysOf(s.Network)
	pairs, _, err := s.Consul.KV().List(k.ips(), s.q(ctx))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", k.ips(), err)
	}
	out := make([]Lease, 0, len(pairs))
	for _, p := range pairs {
		var l Lease
		if err := json.Unmarshal(p.Value, &l); err != nil {
			return nil, fmt.Errorf("decode %s: %w", p.Key, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// txn runs ops in one transaction; false when it was rolled back, as a
// lost check-and-set is (someone else wrote first).
func (s *Store) txn(ctx context.Context, ops api.KVTxnOps) (bool, error) {
	txn := make(api.TxnOps, len(ops))
	for i, op := range ops {
		txn[i] = &api.TxnOp{KV: op}
	}
	ok, _, _, err := s.Consul.Txn().Txn(txn, s.q(ctx))
	return ok, err
}

func (s *Store) q(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

// Sweep releases every lease of the network that stale says no allocation
// will take over (its holder's job stopped, or its holder long gone); it
// returns how many. A lease taken over meanwhile is left alone.
func (s *Store) Sweep(ctx context.Context, stale func(context.Context, Lease) (bool, error)) (int, error) {
	leases, err := s.List(ctx)
	if err != nil {
		return 0, err
	}
	released := 0
	var errs []error
	for _, l := range leases {
		ok, err := stale(ctx, l)
		if err != nil {
			errs = append(errs, fmt.Errorf("lease of %s: %w", l.Address, err))
			continue
		}
		if !ok {
			continue
		}
		if err := s.Release(ctx, l.AllocID, false); err != nil {
			errs = append(errs, err)
			continue
		}
		released++
	}
	return released, errors.Join(errs...)
}

// Networks are the names of the networks with leases in Consul.
func Networks(ctx context.Context, c *api.Client) ([]string, error) {
	keys, _, err := c.KV().Keys(sdk.PrefixNetworks, "/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", sdk.PrefixNetworks, err)
	}
	var out []string
	for _, k := range keys {
		if name := strings.TrimSuffix(strings.TrimPrefix(k, sdk.PrefixNetworks), "/"); name != "" && strings.HasSuffix(k, "/") {
			out = append(out, name)
		}
	}
	return out, nil
}
