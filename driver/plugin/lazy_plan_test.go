package plugin

import (
	"errors"
	"testing"

	"github.com/ferry-nomad/ferry/driver/sdk"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// A lazy move needs both nodes able to take part and the transfer's TLS;
// each missing piece is named for the task's event.
func TestLazyRefusal(t *testing.T) {
	node := func(attr string, detected bool) *nomadapi.Node {
		return &nomadapi.Node{Name: "dest-1", Drivers: map[string]*nomadapi.DriverInfo{
			sdk.DriverName: {Detected: detected, Attributes: map[string]string{sdk.AttrCheckpointLazy: attr}},
		}}
	}
	ready := lazyNodes{source: "true", tls: true, dest: node("true", true)}
	for _, tc := range []struct {
		name string
		edit func(*lazyNodes)
		want string
	}{
		{"lazy", func(*lazyNodes) {}, ""},
		{"source cannot", func(n *lazyNodes) { n.source, n.sourceWhy = "false", "fs.pipe-max-size is 1048576" },
			"this node cannot serve it: fs.pipe-max-size is 1048576"},
		{"no TLS", func(n *lazyNodes) { n.tls = false }, "transfer { ca_file, cert_file, key_file }"},
		{"not placed", func(n *lazyNodes) { n.dest = nil }, "Nomad has not placed the replacement yet"},
		{"destination unknown", func(n *lazyNodes) { n.dest, n.destErr = nil, errors.New("node not found") },
			"cannot tell whether the destination can take it: node not found"},
		{"same node", func(n *lazyNodes) { n.sameNode = true }, "the replacement is placed on this node"},
		{"destination without ferry", func(n *lazyNodes) { n.dest = node("true", false) }, "the destination dest-1 has no ferry driver"},
		{"destination cannot", func(n *lazyNodes) { n.dest = node("false", true) },
			"the destination dest-1 cannot take it (its driver.ferry.checkpoint.lazy is not true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := ready
			tc.edit(&n)
			got := lazyRefusal(n)
			if tc.want == "" {
				must.Eq(t, "", got)
			} else {
				must.StrContains(t, got, tc.want)
			}
		})
	}
}
