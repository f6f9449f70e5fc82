package plugin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/runc"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
)

// nodeIdentity is this client's node in Nomad. A driver is not told which
// node it runs on until it starts a task, so it asks its Nomad agent.
type nodeIdentity struct {
	once  sync.Once
	ready chan struct{}
	id    string
	name  string
	ip    string // the node's unique.network.ip-address
}

func newNodeIdentity() *nodeIdentity { return &nodeIdentity{ready: make(chan struct{})} }

func (n *nodeIdentity) set(id, name, ip string) {
	n.once.Do(func() {
		n.id, n.name, n.ip = id, name, ip
		close(n.ready)
	})
}

// ID returns the node's ID, or "" while it is not known.
func (n *nodeIdentity) ID() string {
	select {
	case <-n.ready:
		return n.id
	default:
		return ""
	}
}

// discoverNode asks the Nomad agent the driver talks to (the plugin's
// nomad.address, by default the local agent) which node it is, trying
// again until it answers or ctx ends.
func discoverNode(ctx context.Context, nomad *nomadapi.Client, logger hclog.Logger) (id, name, ip string, err error) {
	wait := time.Second
	for {
		id, name, ip, err = askNode(ctx, nomad)
		if err == nil {
			logger.Info("node identified", "node_id", id, "node_name", name, "address", ip)
			return id, name, ip, nil
		}
		logger.Debug("cannot identify this node yet", "error", err, "retry_in", wait)
		if wait >= 8*time.Second {
			logger.Warn("cannot identify this node; live moves from and to it wait for it", "error", err)
		}
		select {
		case <-ctx.Done():
			return "", "", "", ctx.Err()
		case <-time.After(wait):
			wait = min(2*wait, 30*time.Second)
		}
	}
}

func askNode(ctx context.Context, nomad *nomadapi.Client) (id, name, ip string, err error) {
	q := (&nomadapi.QueryOptions{}).WithContext(ctx)
	self, err := nomad.Agent().Self()
	if err != nil {
		return "", "", "", fmt.Errorf("read /v1/agent/self from %s: %w", nomad.Address(), err)
	}
	id = self.Stats["client"]["node_id"]
	if id == "" {
		return "", "", "", fmt.Errorf("the Nomad agent at %s is not this node's client agent (no client node_id in /v1/agent/self): point nomad.address at it", nomad.Address())
	}
	node, _, err := nomad.Nodes().Info(id, q)
	if err != nil {
		return "", "", "", fmt.Errorf("read node %s: %w", id, err)
	}
	return id, node.Name, node.Attributes["unique.network.ip-address"], nil
}

// transferEnv is the driver's side of moving checkpoints between nodes,
// there when the plugin config has transfer TLS files.
type transferEnv struct {
	server    *transfer.Server
	serverTLS *tls.Config
	client    *http.Client
	// limits are the plugin's transfer limits, for pushes and fetches.
	limits transfer.Option
	// criuTLS is the same TLS for CRIU's page transfer of a lazy move;
	// pagePorts the ports its page server may take here.
	criuTLS   runc.CriuTLS
	pagePorts *pagePorts
}

// startNode starts what the driver runs for the node as a whole, in the
// background until ctx ends: it learns the node's identity, then serves
// transfers and records its endpoint (with transfer TLS configured), and
// reaps what live moves leave behind. It runs once per configuration, on
// the first fingerprint: Nomad's plugin loader configures a short-lived
// instance of the driver to check the configuration, and only the
// instance Nomad keeps is fingerprinted.
func (d *Driver) startNode(ctx context.Context, conf *Config, env *environment) {
	logger := d.logger.Named("node")
	go func() {
		id, name, ip, err := discoverNode(ctx, env.nomad, logger)
		if err != nil {
			return
		}
		env.node.set(id, name, ip)
		if env.transfer != nil {
			go d.serveTransfer(ctx, conf, env, logger)
		}
		d.reap(ctx, env, conf.GC.Checkpoints.reap, logger.Named("reap"))
	}()
}

// serveTransfer listens on transfer.listen, records the endpoint other
// nodes reach it at, held by a Consul session, and serves until ctx ends.
// A listener still held by the instance this one replaces is waited for.
func (d *Driver) serveTransfer(ctx context.Context, conf *Config, env *environment, logger hclog.Logger) {
	var ln net.Listener
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		var err error
		if ln, err = net.Listen("tcp", conf.Transfer.Listen); err == nil {
			break
		}
		logger.Warn("cannot listen for transfers yet", "listen", conf.Transfer.Listen, "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	addr := conf.Transfer.Advertise
	if addr == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		if env.node.ip == "" {
			_ = ln.Close()
			logger.Error("the node has no unique.network.ip-address: set transfer.advertise; other nodes cannot reach this one")
			return
		}
		addr = net.JoinHostPort(env.node.ip, port)
	}
	logger.Info("serving checkpoint transfers", "listen", ln.Addr().String(), "advertise", addr)
	go func() {
		if err := env.catalog.HoldEndpoint(ctx, catalog.Endpoint{NodeID: env.node.id, NodeName: env.node.name, Address: addr}); err != nil {
			logger.Error("cannot record the transfer endpoint", "error", err)
		}
	}()
	if err := env.transfer.server.Serve(ctx, ln, env.transfer.serverTLS); err != nil && !errors.Is(err, net.ErrClosed) {
		logger.Error("transfer listener stopped", "error", err)
	}
}

// newTransfer prepares the transfers of a configuration with transfer TLS
// files, reading them so that a mistake fails the configuration; nil
// without them.
func (d *Driver) newTransfer(conf *Config, env *environment) (*transferEnv, error) {
	if !conf.Transfer.enabled() {
		return nil, nil
	}
	serverTLS, clientTLS, err := transfer.TLS{
		CAFile: conf.Transfer.CAFile, CertFile: conf.Transfer.CertFile, KeyFile: conf.Transfer.KeyFile,
		ServerName: conf.Transfer.ServerName,
	}.Configs()
	if err != nil {
		return nil, fmt.Errorf("transfer.%w", err)
	}
	return &transferEnv{
		server: &transfer.Server{
			Checkpoints: env.checkpointRoots(),
			Incoming:    env.layout.incoming(),
			Catalog:     env.catalog,
			NodeID:      env.node.ID,
			OnPush:      func(rec *catalog.Record) { d.prefetch(conf, env, rec) },
			Limits:      conf.Transfer.limits,
			Logger:      d.logger.Named("transfer"),
		},
		limits:    transfer.WithLimits(conf.Transfer.limits),
		criuTLS:   runc.CriuTLS{CA: conf.Transfer.CAFile, Cert: conf.Transfer.CertFile, Key: conf.Transfer.KeyFile, AnyName: true},
		pagePorts: newPagePorts(conf.Transfer.pagePorts),
		serverTLS: serverTLS,
		client:    transfer.NewClient(clientTLS),
	}, nil
}

// endpointOf returns the transfer endpoint of node, or an error saying why
// there is none.
func endpointOf(ctx context.Context, env *environment, nodeID, nodeName string) (*catalog.Endpoint, error) {
	ep, err := env.catalog.GetEndpoint(ctx, nodeID)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, fmt.Errorf("the driver on %s records no transfer endpoint (is its transfer TLS configured, and is it running?)", nodeName)
	}
	return ep, err
}
