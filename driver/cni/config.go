// Package cni is the Ferry CNI plugin: it gives a Nomad group on
// `network { mode = "cni/ferry" }` an address and a MAC of its own on the
// nodes' shared L2, leased in Consul (driver/lease), so that a replacement
// of a migrating allocation comes up with its predecessor's address and MAC
// and its restored TCP connections stay open.
//
// The interface is a macvlan (bridge mode) on the node's uplink: nothing on
// the node is reconfigured (a Linux bridge would have to take over the
// uplink and its address), and every group's MAC is its own on the wire.
// Its costs: the node itself cannot reach its macvlan children (peers on
// the L2 can), and the switch port must accept several MACs.
//
// The driver's binary is the plugin: installed into the client's cni_path
// under the name "ferry", it runs as the plugin (see Main). Its
// configuration is one plugin of a conflist named like the network:
//
//	{
//	  "cniVersion": "1.0.0",
//	  "name": "ferry",
//	  "plugins": [{
//	    "type": "ferry",
//	    "master": "eth0",
//	    "subnet": "10.97.0.0/24",
//	    "range_start": "10.97.0.100",
//	    "range_end": "10.97.0.199",
//	    "gateway": "10.97.0.1",
//	    "consul": {"address": "127.0.0.1:8500"},
//	    "nomad": {"address": "http://127.0.0.1:4646"}
//	  }]
//	}
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/ferry-nomad/ferry/driver/lease"
)

// Config is the plugin's entry in the conflist.
type Config struct {
	types.NetConf
	// Master is the node's uplink on the shared L2.
	Master string `json:"master"`
	MTU    int    `json:"mtu,omitempty"`
	// The pool: leased addresses range_start..range_end of subnet.
	Subnet     string `json:"subnet"`
	RangeStart string `json:"range_start"`
	RangeEnd   string `json:"range_end"`
	Gateway    string `json:"gateway,omitempty"`
	// Routes besides the subnet's; default: 0.0.0.0/0 via the gateway.
	Routes []Route `json:"routes,omitempty"`
	Consul Server  `json:"consul"`
	Nomad  Server  `json:"nomad"`

	pool lease.Pool
}

// Route is a destination prefix, through the gateway unless Via is set.
type Route struct {
	Dst string `json:"dst"`
	Via string `json:"via,omitempty"`
}

// Server is the address and token of a Consul or Nomad agent.
type Server struct {
	Address string `json:"address"`
	Token   string `json:"token,omitempty"`
}

// parseConfig reads and checks the plugin's configuration; errors name the
// field.
func parseConfig(data []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("ferry CNI configuration: %w", err)
	}
	var errs []error
	if c.Master == "" {
		errs = append(errs, errors.New(`master: required: the node's interface on the shared L2, e.g. "eth0"`))
	}
	subnet, err := netip.ParsePrefix(c.Subnet)
	if err != nil {
		errs = append(errs, fmt.Errorf("subnet: %q is not a prefix such as \"10.97.0.0/24\"", c.Subnet))
	}
	first, err1 := netip.ParseAddr(c.RangeStart)
	last, err2 := netip.ParseAddr(c.RangeEnd)
	if err1 != nil {
		errs = append(errs, fmt.Errorf("range_start: %q is not an address", c.RangeStart))
	}
	if err2 != nil {
		errs = append(errs, fmt.Errorf("range_end: %q is not an address", c.RangeEnd))
	}
	var gw netip.Addr
	if c.Gateway != "" {
		if gw, err = netip.ParseAddr(c.Gateway); err != nil {
			errs = append(errs, fmt.Errorf("gateway: %q is not an address", c.Gateway))
		}
	}
	for i, r := range c.Routes {
		if _, err := netip.ParsePrefix(r.Dst); err != nil {
			errs = append(errs, fmt.Errorf("routes[%d].dst: %q is not a prefix", i, r.Dst))
		}
		if r.Via != "" {
			if _, err := netip.ParseAddr(r.Via); err != nil {
				errs = append(errs, fmt.Errorf("routes[%d].via: %q is not an address", i, r.Via))
			}
		}
	}
	if c.Consul.Address == "" {
		errs = append(errs, errors.New(`consul.address: required: the node's Consul agent, e.g. "127.0.0.1:8500"`))
	}
	if c.Nomad.Address == "" {
		errs = append(errs, errors.New(`nomad.address: required: the node's Nomad agent, e.g. "http://127.0.0.1:4646"`))
	}
	if len(errs) == 0 {
		c.pool = lease.Pool{Subnet: subnet, First: first, Last: last, Gateway: gw}
		if err := c.pool.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("ferry CNI configuration: %w", err)
	}
	return &c, nil
}

// Args are what Nomad passes in CNI_ARGS.
type Args struct {
	types.CommonArgs
	NOMAD_ALLOC_ID   types.UnmarshallableString //nolint:revive // CNI_ARGS names
	NOMAD_JOB_ID     types.UnmarshallableString
	NOMAD_GROUP_NAME types.UnmarshallableString
	NOMAD_NAMESPACE  types.UnmarshallableString
}

// parseArgs reads CNI_ARGS. Nomad passes them to ADD only; DEL and CHECK
// need only the allocation, which is the container ID Nomad gives.
func parseArgs(s, containerID string, add bool) (*Args, error) {
	var a Args
	if err := types.LoadArgs(s, &a); err != nil {
		return nil, fmt.Errorf("CNI_ARGS: %w", err)
	}
	if a.NOMAD_ALLOC_ID == "" {
		a.NOMAD_ALLOC_ID = types.UnmarshallableString(containerID)
	}
	if add && (a.NOMAD_ALLOC_ID == "" || a.NOMAD_JOB_ID == "" || a.NOMAD_GROUP_NAME == "") {
		return nil, errors.New("CNI_ARGS lack NOMAD_ALLOC_ID, NOMAD_JOB_ID or NOMAD_GROUP_NAME: the ferry network serves Nomad groups (network { mode = \"cni/ferry\" })")
	}
	if a.NOMAD_NAMESPACE == "" {
		a.NOMAD_NAMESPACE = "default"
	}
	return &a, nil
}
