package plugin

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"
	nomadapi "github.com/hashicorp/nomad/api"
)

// lazyNodes is what decides whether a task that asked for a lazy move gets
// one: whether each node can take part (its fingerprint's
// driver.ferry.checkpoint.lazy, and why not), and whether the nodes can
// authenticate each other's page transfer (transfer TLS).
type lazyNodes struct {
	source, sourceWhy string // "true", or why not
	tls               bool
	dest              *nomadapi.Node // nil: not placed yet, or unknown
	destErr           error
	sameNode          bool // the replacement is placed on this node
}

// lazyRefusal is why a task that asked for a lazy move is moved by copy
// instead, for its task event; "" when it moves lazily.
func lazyRefusal(n lazyNodes) string {
	switch {
	case n.source != "true":
		return "this node cannot serve it: " + n.sourceWhy
	case !n.tls:
		return "the page transfer needs the transfer TLS options (transfer { ca_file, cert_file, key_file }) on both nodes"
	case n.destErr != nil:
		return fmt.Sprintf("cannot tell whether the destination can take it: %v", n.destErr)
	case n.dest == nil:
		return "Nomad has not placed the replacement yet: only a placed destination can fetch the memory as the task runs"
	case n.sameNode:
		return "the replacement is placed on this node, where the memory need not travel"
	}
	d, ok := n.dest.Drivers[sdk.DriverName]
	if !ok || !d.Detected {
		return fmt.Sprintf("the destination %s has no ferry driver", n.dest.Name)
	}
	if d.Attributes[sdk.AttrCheckpointLazy] != "true" {
		return fmt.Sprintf("the destination %s cannot take it (its %s is not true; its client's log says why)", n.dest.Name, sdk.AttrCheckpointLazy)
	}
	return ""
}

// lazyNodesOf gathers lazyNodes for a move of the task from node self to
// the replacement next (nil when not placed).
func (d *Driver) lazyNodesOf(ctx context.Context, env *environment, self string, next *nomadapi.Allocation) lazyNodes {
	var n lazyNodes
	ok, why := env.criu.lazySupport()
	n.source, n.sourceWhy = fmt.Sprint(ok), why
	n.tls = env.transfer != nil
	if next == nil {
		return n
	}
	n.sameNode = next.NodeID == self
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n.dest, _, n.destErr = env.nomad.Nodes().Info(next.NodeID, (&nomadapi.QueryOptions{}).WithContext(qctx))
	return n
}

// lazyPlan is where a lazy move's source serves the task's memory: its
// page server's address, at a port held until release.
type lazyPlan struct {
	pageServer string
	release    func()
}

// planLazy decides whether the task moves lazily to the replacement next
// and, if it does, where its page server listens; otherwise it says why
// the task moves by copy.
func (d *Driver) planLazy(ctx context.Context, conf *Config, env *environment, self string, next *nomadapi.Allocation) (*lazyPlan, string) {
	if why := lazyRefusal(d.lazyNodesOf(ctx, env, self, next)); why != "" {
		return nil, why
	}
	host := env.node.ip
	if conf.Transfer.Advertise != "" {
		host, _, _ = net.SplitHostPort(conf.Transfer.Advertise)
	}
	if host == "" {
		return nil, "this node's address is unknown (no unique.network.ip-address): set transfer.advertise"
	}
	port, release, err := env.transfer.pagePorts.take()
	if err != nil {
		return nil, err.Error() + ": widen it, or wait for the moves under way to end"
	}
	return &lazyPlan{pageServer: net.JoinHostPort(host, strconv.Itoa(port)), release: release}, ""
}
