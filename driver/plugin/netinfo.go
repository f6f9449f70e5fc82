package plugin

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/hashicorp/nomad/plugins/drivers"
	"golang.org/x/sys/unix"
)

// networkOf describes a task's network so a destination can set up the same:
// the group namespace's interfaces, addresses, MAC, routes, plus Nomad's view
// (ports, hostname, DNS).
func networkOf(cfg *drivers.TaskConfig) (catalog.Network, error) {
	n := catalog.Network{Mode: "host"}
	if cfg.Resources != nil && cfg.Resources.Ports != nil {
		for _, p := range *cfg.Resources.Ports {
			n.Ports = append(n.Ports, catalog.Port{Label: p.Label, Value: p.Value, To: p.To, HostIP: p.HostIP})
		}
	}
	if cfg.DNS != nil {
		n.DNS = &catalog.DNS{Servers: cfg.DNS.Servers, Searches: cfg.DNS.Searches, Options: cfg.DNS.Options}
	}
	iso := cfg.NetworkIsolation
	if iso == nil || iso.Path == "" {
		return n, nil
	}
	n.Mode, n.NetNSPath = "group", iso.Path
	if iso.HostsConfig != nil {
		n.Hostname = iso.HostsConfig.Hostname
	}
	err := inNetNS(iso.Path, func() error {
		ifaces, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				n.Addresses = append(n.Addresses, a.String())
			}
			if n.MAC == "" && len(ifc.HardwareAddr) > 0 {
				n.MAC = ifc.HardwareAddr.String()
			}
		}
		n.Routes, n.Gateway = readRoutes()
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("read network of %s: %w", iso.Path, err)
	}
	return n, nil
}

// inNetNS runs fn on a thread of its own inside the network namespace at
// path. If the thread cannot return to its namespace it stays locked, and Go
// discards it when the goroutine ends.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", path, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave %s: %w", path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// readRoutes reads the IPv4 routing table of the current thread's namespace.
func readRoutes() (routes []string, gateway string) {
	f, err := os.Open("/proc/thread-self/net/route")
	if err != nil {
		return nil, ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 {
			continue
		}
		dst, gw, mask := hexIP(fl[1]), hexIP(fl[2]), hexIP(fl[7])
		ones, _ := net.IPMask(mask.To4()).Size()
		r := fmt.Sprintf("%s/%d dev %s", dst, ones, fl[0])
		if !gw.Equal(net.IPv4zero) {
			r += " via " + gw.String()
			if ones == 0 {
				gateway = gw.String()
			}
		}
		routes = append(routes, r)
	}
	return routes, gateway
}

func hexIP(s string) net.IP {
	var v uint32
	if _, err := fmt.Sscanf(s, "%X", &v); err != nil {
		return net.IPv4zero
	}
	ip := make(net.IP, 4)
	binary.LittleEndian.PutUint32(ip, v)
	return ip
}

// nonlocalBindKnobs are the sysctls that let a socket bind an address its
// namespace does not have.
var nonlocalBindKnobs = []string{"/proc/sys/net/ipv4/ip_nonlocal_bind", "/proc/sys/net/ipv6/ip_nonlocal_bind"}

// allowNonlocalBind lets sockets bind foreign addresses in the task's network
// namespace (the group's, or the node's with host networking) until the
// returned function restores the previous settings.
func allowNonlocalBind(cfg *drivers.TaskConfig) (undo func(), err error) {
	path := "/proc/thread-self/ns/net"
	if iso := cfg.NetworkIsolation; iso != nil && iso.Path != "" {
		path = iso.Path
	}
	set := func(values map[string]string) error {
		return inNetNS(path, func() error {
			for knob, v := range values {
				if err := os.WriteFile(knob, []byte(v), 0o644); err != nil && !os.IsNotExist(err) {
					return err
				}
			}
			return nil
		})
	}
	old := map[string]string{}
	err = inNetNS(path, func() error {
		for _, knob := range nonlocalBindKnobs {
			b, err := os.ReadFile(knob)
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				return err
			}
			old[knob] = strings.TrimSpace(string(b))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %v: %w", nonlocalBindKnobs, err)
	}
	on := map[string]string{}
	for knob := range old {
		on[knob] = "1"
	}
	if err := set(on); err != nil {
		return nil, fmt.Errorf("allow non-local binds: %w", err)
	}
	return func() { _ = set(old) }, nil
}
