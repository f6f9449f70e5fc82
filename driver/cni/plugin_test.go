package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/lease"
	consul "github.com/hashicorp/consul/api"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
	"github.com/vishvananda/netlink"
)

// netns creates a network namespace for the test and returns its path.
func netns(t *testing.T, name string) string {
	t.Helper()
	name = fmt.Sprintf("ferry-cni-%s-%d", name, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s (needs root)", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/var/run/netns/" + name
}

// allocations serves Nomad's allocation API from a table: the plugin's
// reads of the allocations it configures.
type allocations struct {
	mu     sync.Mutex
	allocs map[string]*nomad.Allocation
}

func (a *allocations) set(al *nomad.Allocation) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.allocs[al.ID] = al
}

func (a *allocations) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.allocs[strings.TrimPrefix(r.URL.Path, "/v1/allocation/")]
	if !ok {
		http.Error(w, "alloc not found", http.StatusNotFound)
		return
	}
	_ = json.NewEncoder(w).Encode(al)
}

func TestAddDelKeepsAddressAcrossAMove(t *testing.T) {
	host, first, second := netns(t, "host"), netns(t, "a"), netns(t, "b")
	// The node's uplink: a veth in the node's namespace, as the dev
	// cluster's clients have.
	must.NoError(t, withNetNS(host, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "peer0"}); err != nil {
			return err
		}
		for _, name := range []string{"uplink0", "peer0"} {
			link, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
		}
		return nil
	}))
	consulAddr := catalogtest.StartConsul(t)
	allocs := &allocations{allocs: map[string]*nomad.Allocation{}}
	api := httptest.NewServer(allocs)
	t.Cleanup(api.Close)
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "ferry", "type": "ferry", "master": "uplink0",
	  "subnet": "10.99.0.0/24", "range_start": "10.99.0.10", "range_end": "10.99.0.20", "gateway": "10.99.0.1",
	  "consul": {"address": %q}, "nomad": {"address": %q}}`, consulAddr, api.URL)
	// As Nomad calls it: CNI_ARGS for ADD, the allocation as the container
	// ID always.
	cmd := func(nsPath, alloc string) *skel.CmdArgs {
		return &skel.CmdArgs{ContainerID: alloc, Netns: nsPath, IfName: "eth0", StdinData: []byte(conf),
			Args: "IgnoreUnknown=true;NOMAD_ALLOC_ID=" + alloc + ";NOMAD_JOB_ID=sim;NOMAD_GROUP_NAME=g;NOMAD_NAMESPACE=default"}
	}
	del := func(nsPath, alloc string) *skel.CmdArgs {
		return &skel.CmdArgs{ContainerID: alloc, Netns: nsPath, IfName: "eth0", StdinData: []byte(conf)}
	}
	inHost := func(fn func(*skel.CmdArgs) error, a *skel.CmdArgs) error {
		return withNetNS(host, func() error { return fn(a) })
	}

	allocs.set(&nomad.Allocation{ID: "old", Name: "sim.g[0]", ClientStatus: "pending"})
	must.NoError(t, inHost(cmdAdd, cmd(first, "old")))
	addr, mac := linkOf(t, first)
	must.Eq(t, "10.99.0.10/24", addr)
	must.Eq(t, lease.MACOf(netip.MustParseAddr("10.99.0.10")).String(), mac)
	must.NoError(t, inHost(cmdCheck, cmd(first, "old")))

	// The allocation migrates: its DEL keeps the lease for the
	// replacement, which comes up with the same address and MAC.
	allocs.set(&nomad.Allocation{ID: "old", Name: "sim.g[0]", ClientStatus: "complete", DesiredTransition: nomad.DesiredTransition{Migrate: ptr(true)}})
	must.NoError(t, inHost(cmdDel, del(first, "old")))
	allocs.set(&nomad.Allocation{ID: "new", Name: "sim.g[0]", PreviousAllocation: "old", ClientStatus: "pending"})
	must.NoError(t, inHost(cmdAdd, cmd(second, "new")))
	addr2, mac2 := linkOf(t, second)
	must.Eq(t, addr, addr2)
	must.Eq(t, mac, mac2)

	// Stopped for good: the lease is released.
	allocs.set(&nomad.Allocation{ID: "new", Name: "sim.g[0]", ClientStatus: "complete", DesiredStatus: "stop"})
	must.NoError(t, inHost(cmdDel, del(second, "new")))
	c, err := consul.NewClient(&consul.Config{Address: consulAddr})
	must.NoError(t, err)
	leases, err := (&lease.Store{Consul: c, Network: "ferry"}).List(context.Background())
	must.NoError(t, err)
	must.SliceEmpty(t, leases)
	must.Error(t, withNetNS(second, func() error { _, err := netlink.LinkByName("eth0"); return err }))
}

func TestConfigErrorsNameTheField(t *testing.T) {
	_, err := parseConfig([]byte(`{"cniVersion": "1.0.0", "name": "ferry", "type": "ferry", "subnet": "10.0.0.0", "range_start": "x"}`))
	must.Error(t, err)
	for _, want := range []string{"master: required", `subnet: "10.0.0.0" is not a prefix`, `range_start: "x" is not an address`,
		"consul.address: required", "nomad.address: required"} {
		must.StrContains(t, err.Error(), want)
	}
	_, err = parseArgs("IgnoreUnknown=true", "", true)
	must.ErrorContains(t, err, `network { mode = "cni/ferry" }`)
}

// linkOf is the address and MAC of eth0 in the namespace at path.
func linkOf(t *testing.T, path string) (addr, mac string) {
	t.Helper()
	must.NoError(t, withNetNS(path, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 {
			return fmt.Errorf("addresses %v: %v", addrs, err)
		}
		addr, mac = addrs[0].IPNet.String(), link.Attrs().HardwareAddr.String()
		return nil
	}))
	return addr, mac
}

func ptr[T any](v T) *T { return &v }
