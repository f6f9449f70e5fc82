package cni

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/ferry-nomad/ferry/driver/lease"
	consul "github.com/hashicorp/consul/api"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Name is the plugin's type in a CNI configuration, and the name of the
// driver's binary in the client's cni_path.
const Name = "ferry"

// callTimeout bounds one ADD or DEL's calls to Consul and Nomad.
const callTimeout = 30 * time.Second

// Main runs the plugin: the CNI runtime (Nomad's client) calls it with
// CNI_COMMAND and the configuration on stdin.
func Main(driverVersion string) {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.All, "ferry CNI plugin "+driverVersion)
}

// env is one call's configuration, arguments and clients.
type env struct {
	conf   *Config
	args   *Args
	nomad  *nomad.Client
	leases *lease.Store
}

func newEnv(a *skel.CmdArgs, add bool) (*env, error) {
	conf, err := parseConfig(a.StdinData)
	if err != nil {
		return nil, err
	}
	args, err := parseArgs(a.Args, a.ContainerID, add)
	if err != nil {
		return nil, err
	}
	nc := nomad.DefaultConfig()
	nc.Address, nc.SecretID, nc.Namespace = conf.Nomad.Address, conf.Nomad.Token, string(args.NOMAD_NAMESPACE)
	nomadClient, err := nomad.NewClient(nc)
	if err != nil {
		return nil, fmt.Errorf("nomad.address: %w", err)
	}
	cc := consul.DefaultConfig()
	cc.Address, cc.Token = conf.Consul.Address, conf.Consul.Token
	consulClient, err := consul.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul.address: %w", err)
	}
	return &env{conf: conf, args: args, nomad: nomadClient,
		leases: &lease.Store{Consul: consulClient, Network: conf.Name, Pool: conf.pool}}, nil
}

// fate tells what became of an allocation, from Nomad.
func (e *env) fate(ctx context.Context, allocID string) (lease.Fate, error) {
	return lease.FateOf(ctx, e.nomad, string(e.args.NOMAD_NAMESPACE), allocID)
}

func cmdAdd(a *skel.CmdArgs) error {
	e, err := newEnv(a, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	allocID := string(e.args.NOMAD_ALLOC_ID)
	alloc, _, err := e.nomad.Allocations().Info(allocID, (&nomad.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("read allocation %s from Nomad (nomad.address %s): %w", allocID, e.conf.Nomad.Address, err)
	}
	slot, err := lease.SlotOf(string(e.args.NOMAD_NAMESPACE), string(e.args.NOMAD_JOB_ID), string(e.args.NOMAD_GROUP_NAME), alloc.Name)
	if err != nil {
		return err
	}
	l, err := e.leases.Acquire(ctx, lease.Request{AllocID: allocID, Previous: alloc.PreviousAllocation, Slot: slot}, e.fate)
	if err != nil {
		return fmt.Errorf("lease an address on network %s: %w", e.conf.Name, err)
	}
	result, err := e.attach(a, l)
	if err != nil {
		return err
	}
	return types.PrintResult(result, e.conf.CNIVersion)
}

// attach creates the macvlan in the allocation's namespace with the
// lease's MAC and address, and its routes.
func (e *env) attach(a *skel.CmdArgs, l *lease.Lease) (*current.Result, error) {
	master, err := netlink.LinkByName(e.conf.Master)
	if err != nil {
		return nil, fmt.Errorf("master: %q: %w", e.conf.Master, err)
	}
	netns, err := ns.GetNS(a.Netns)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", a.Netns, err)
	}
	defer netns.Close()
	mac, err := net.ParseMAC(l.MAC)
	if err != nil {
		return nil, fmt.Errorf("lease of %s: %w", l.Address, err)
	}
	if l.TakenFrom != "" {
		releaseHere(l.TakenFrom, mac)
	}
	tmp := fmt.Sprintf("fy%x", time.Now().UnixNano()&0xffffffffff) // renamed inside the namespace
	mtu := e.conf.MTU
	if mtu == 0 {
		mtu = master.Attrs().MTU
	}
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: tmp, MTU: mtu, ParentIndex: master.Attrs().Index,
			Namespace: netlink.NsFd(int(netns.Fd())), HardwareAddr: mac},
		Mode: netlink.MACVLAN_MODE_BRIDGE,
	}
	if err := netlink.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("create a macvlan on %s: %w", e.conf.Master, err)
	}
	prefix := netip.PrefixFrom(l.Address, e.conf.pool.Subnet.Bits())
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: a.IfName, Mac: mac.String(), Sandbox: a.Netns}},
		IPs: []*current.IPConfig{{Interface: current.Int(0), Address: net.IPNet{IP: l.Address.AsSlice(), Mask: net.CIDRMask(prefix.Bits(), 32)},
			Gateway: gatewayIP(e.conf.pool.Gateway)}},
	}
	result.Routes = e.routes()
	err = netns.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(link, a.IfName); err != nil {
			return fmt.Errorf("rename %s to %s: %w", tmp, a.IfName, err)
		}
		if err := configure(link, prefix, result.Routes); err != nil {
			return err
		}
		// Nomad brings up loopback only for its own bridge network.
		if lo, err := netlink.LinkByName("lo"); err == nil {
			if err := netlink.LinkSetUp(lo); err != nil {
				return fmt.Errorf("set lo up: %w", err)
			}
		}
		return announce(a.IfName, l.Address)
	})
	if err != nil {
		_ = netns.Do(func(ns.NetNS) error { return deleteLinks(a.IfName, tmp) })
		return nil, fmt.Errorf("configure %s in %s: %w", a.IfName, a.Netns, err)
	}
	return result, nil
}

// configure brings link up with its address and routes, in the current
// namespace.
func configure(link netlink.Link, prefix netip.Prefix, routes []*types.Route) error {
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s: %w", prefix, err)
	}
	if err := setUp(link); err != nil {
		return err
	}
	for _, r := range routes {
		dst := r.Dst
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Gw: r.GW}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("add route %s via %s: %w", dst.String(), r.GW, err)
		}
	}
	return nil
}

// releaseHere removes the interface with mac from the network namespace of
// allocation prev, when prev ran on this node (Nomad names an allocation's
// namespace after it): a replacement placed on its predecessor's node comes
// up while the predecessor's namespace, which Nomad tears down only when it
// collects the allocation, still holds the address and MAC. The
// predecessor is stopped: its interface serves nothing.
func releaseHere(prev string, mac net.HardwareAddr) {
	path := filepath.Join(netnsDir, prev)
	if _, err := os.Stat(path); err != nil {
		return
	}
	_ = withNetNS(path, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, link := range links {
			if bytes.Equal(link.Attrs().HardwareAddr, mac) {
				_ = netlink.LinkDel(link)
			}
		}
		return nil
	})
}

// netnsDir is where Nomad keeps allocations' network namespaces.
const netnsDir = "/var/run/netns"

// macBusyWait is how long ADD waits for another macvlan with the lease's
// MAC on the same uplink to go: the predecessor of a replacement placed on
// the same node, whose CNI DEL Nomad runs as it stops.
const macBusyWait = 20 * time.Second

// setUp brings link up, waiting while its MAC is still another link's on
// the uplink (EADDRINUSE).
func setUp(link netlink.Link) error {
	deadline := time.Now().Add(macBusyWait)
	for {
		err := netlink.LinkSetUp(link)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline):
			return fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deleteLinks removes the links of these names that exist, in the current
// namespace.
func deleteLinks(names ...string) error {
	var errs []error
	for _, name := range names {
		if link, err := netlink.LinkByName(name); err == nil {
			errs = append(errs, netlink.LinkDel(link))
		}
	}
	return errors.Join(errs...)
}

// routes are the configured routes, or a default route via the gateway.
func (e *env) routes() []*types.Route {
	gw := gatewayIP(e.conf.pool.Gateway)
	if len(e.conf.Routes) == 0 {
		if gw == nil {
			return nil
		}
		return []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: gw}}
	}
	var out []*types.Route
	for _, r := range e.conf.Routes {
		p := netip.MustParsePrefix(r.Dst) // checked by parseConfig
		via := gw
		if r.Via != "" {
			via = net.ParseIP(r.Via)
		}
		out = append(out, &types.Route{Dst: net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, GW: via})
	}
	return out
}

func gatewayIP(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}

// cmdDel removes the interface and gives up the allocation's lease: kept,
// moving, when the allocation migrates (its checkpoint may be restored
// with it), or when Nomad cannot say.
func cmdDel(a *skel.CmdArgs) error {
	e, err := newEnv(a, false)
	if err != nil {
		return err
	}
	if a.Netns != "" {
		_ = withNetNS(a.Netns, func() error { return deleteLinks(a.IfName) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	allocID := string(e.args.NOMAD_ALLOC_ID)
	f, err := e.fate(ctx, allocID)
	if err != nil {
		f = lease.Migrating // unknown: never release what may still be restored
	}
	return e.leases.Release(ctx, allocID, f != lease.Gone)
}

// cmdCheck verifies that the interface holds the lease's address.
func cmdCheck(a *skel.CmdArgs) error {
	e, err := newEnv(a, false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	leases, err := e.leases.List(ctx)
	if err != nil {
		return err
	}
	var held *lease.Lease
	for i := range leases {
		if leases[i].AllocID == string(e.args.NOMAD_ALLOC_ID) {
			held = &leases[i]
		}
	}
	if held == nil {
		return fmt.Errorf("allocation %s holds no lease on network %s", e.args.NOMAD_ALLOC_ID, e.conf.Name)
	}
	return ns.WithNetNSPath(a.Netns, func(ns.NetNS) error {
		link, err := netlink.LinkByName(a.IfName)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, ad := range addrs {
			if ad.IP.Equal(held.Address.AsSlice()) {
				return nil
			}
		}
		return errors.New(a.IfName + " lacks " + held.Address.String())
	})
}

// withNetNS runs fn in the network namespace at path.
func withNetNS(path string, fn func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}
