// Package lease keeps the addresses of the Ferry network in Consul KV, so
// that an allocation's replacement gets its predecessor's address and MAC
// and no two live allocations ever hold one address.
//
// Two kinds of keys per network, written together in one transaction with
// check-and-set, so that concurrent starts never share an address:
//
//	ferry/net/<network>/ip/<address>                       the lease (Lease, JSON)
//	ferry/net/<network>/slot/<namespace>/<job>/<group>/<index>  the address of a group's allocation index
//
// A lease is held by one allocation. A replacement (same namespace, job,
// group and allocation index) takes its predecessor's lease over when the
// predecessor is its previous allocation, or is gone; any other allocation
// gets a free address. A lease is released when its holder stops for good;
// one whose holder migrates is kept, marked moving, until the replacement
// takes it over (its checkpoint may still be restored).
package lease

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"
)

// Lease is one address held by an allocation.
type Lease struct {
	Address netip.Addr `json:"address"`
	MAC     string     `json:"mac"`
	Slot    Slot       `json:"slot"`
	AllocID string     `json:"alloc_id"`
	// Moving: the holder migrates; its replacement takes the lease over.
	Moving bool `json:"moving,omitempty"`
	// TakenFrom is the allocation the holder took the lease over from.
	TakenFrom string    `json:"taken_from,omitempty"`
	Updated   time.Time `json:"updated"`
}

// Slot is a group's allocation index: what a replacement shares with the
// allocation it replaces.
type Slot struct {
	Namespace string `json:"namespace"`
	Job       string `json:"job"`
	Group     string `json:"group"`
	Index     int    `json:"index"`
}

// SlotOf is the slot of an allocation named "<job>.<group>[<index>]"
// (Nomad's allocation names) in namespace.
func SlotOf(namespace, job, group, allocName string) (Slot, error) {
	open := strings.LastIndexByte(allocName, '[')
	if open < 0 || !strings.HasSuffix(allocName, "]") {
		return Slot{}, fmt.Errorf("allocation name %q has no index", allocName)
	}
	i, err := strconv.Atoi(allocName[open+1 : len(allocName)-1])
	if err != nil || i < 0 {
		return Slot{}, fmt.Errorf("allocation name %q has no index", allocName)
	}
	return Slot{Namespace: namespace, Job: job, Group: group, Index: i}, nil
}

// MACOf is the MAC address of a lease of addr: locally administered,
// unicast, 02:fe followed by the IPv4 address, so that the same address
// always comes with the same MAC.
func MACOf(addr netip.Addr) net.HardwareAddr {
	a := addr.As4()
	return net.HardwareAddr{0x02, 0xfe, a[0], a[1], a[2], a[3]}
}

// Pool is the addresses a network leases: Range within Subnet, less the
// gateway.
type Pool struct {
	Subnet  netip.Prefix
	First   netip.Addr // first leased address
	Last    netip.Addr // last leased address
	Gateway netip.Addr
}

// Validate checks the pool; errors name the field of the plugin's
// configuration.
func (p Pool) Validate() error {
	switch {
	case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4():
		return fmt.Errorf("subnet: %q must be an IPv4 prefix such as \"10.97.0.0/24\"", p.Subnet)
	case !p.First.IsValid() || !p.Subnet.Contains(p.First):
		return fmt.Errorf("range_start: %s must be an address of subnet %s", p.First, p.Subnet)
	case !p.Last.IsValid() || !p.Subnet.Contains(p.Last) || p.Last.Less(p.First):
		return fmt.Errorf("range_end: %s must be an address of subnet %s, not before range_start", p.Last, p.Subnet)
	case p.Gateway.IsValid() && !p.Subnet.Contains(p.Gateway):
		return fmt.Errorf("gateway: %s must be an address of subnet %s", p.Gateway, p.Subnet)
	}
	return nil
}

// size is how many addresses the range holds.
func (p Pool) size() int {
	f, l := p.First.As4(), p.Last.As4()
	return int(binary.BigEndian.Uint32(l[:])-binary.BigEndian.Uint32(f[:])) + 1
}

// keys are the KV keys of one network.
type keys struct{ prefix string }

func keysOf(network string) keys { return keys{prefix: sdk.PrefixNetworks + network + "/"} }

func (k keys) ip(a netip.Addr) string { return k.prefix + "ip/" + a.String() }
func (k keys) ips() string            { return k.prefix + "ip/" }
func (k keys) slot(s Slot) string {
	return k.prefix + "slot/" + s.Namespace + "/" + s.Job + "/" + s.Group + "/" + strconv.Itoa(s.Index)
}
