package plugin

import (
	"context"
	"fmt"
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

// lazyNodesOf gathers lazyNodes for a move of the task to the replacement
// next (nil when not placed).
func (d *Driver) lazyNodesOf(ctx context.Context, env *environment, next *nomadapi.Allocation) lazyNodes {
	var n lazyNodes
	ok, why := env.criu.lazySupport()
	n.source, n.sourceWhy = fmt.Sprint(ok), why
	n.tls = env.transfer != nil
	if next == nil {
		return n
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n.dest, _, n.destErr = env.nomad.Nodes().Info(next.NodeID, (&nomadapi.QueryOptions{}).WithContext(qctx))
	return n
}
