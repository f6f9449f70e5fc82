package cni

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
)

// announceCount is how many gratuitous ARPs an announcement sends: one may
// be lost.
const announceCount = 3

// announce sends gratuitous ARPs for addr from ifName, in the current
// network namespace, so that switches and peers learn at once where addr
// (and its MAC) now is.
func announce(ifName string, addr netip.Addr) error {
	ifi, err := net.InterfaceByName(ifName)
	if err != nil {
		return err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return fmt.Errorf("announce %s on %s: %w", addr, ifName, err)
	}
	defer c.Close()
	// RFC 5227's announcement: a request whose sender and target are addr.
	p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, addr, ethernet.Broadcast, addr)
	if err != nil {
		return err
	}
	for range announceCount {
		if err := c.WriteTo(p, ethernet.Broadcast); err != nil {
			return fmt.Errorf("announce %s on %s: %w", addr, ifName, err)
		}
	}
	return nil
}

// Announce sends gratuitous ARPs for every IPv4 address of the interfaces
// of the network namespace at nsPath: the driver calls it once a task is
// restored, so that the L2 learns the new port of its address at once.
func Announce(nsPath string) error {
	return withNetNS(nsPath, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) == 0 {
				continue
			}
			addrs, err := ifi.Addrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.IP.To4() != nil {
						if err := announce(ifi.Name, ip); err != nil {
							return err
						}
					}
				}
			}
		}
		return nil
	})
}
