// Package agent serves a node's checkpoints to the nodes that restore
// them, and removes a checkpoint once its restore succeeded: the part of
// `ferry-companion agent` (run on every Nomad client by a system job) that
// the drivers talk to.
package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/go-hclog"
)

// Config is the agent's configuration.
type Config struct {
	Listen        string // address to serve on, e.g. ":4700"
	Advertise     string // host:port other nodes reach this agent at
	CheckpointDir string // the driver's checkpoint directory on this node
	Token         string // shared with the drivers' companion.token
	NodeID        string // this Nomad node
	NodeName      string
	ReapInterval  time.Duration // default 2s
}

// Agent serves checkpoints and cleans up after restores.
type Agent struct {
	cfg     Config
	catalog *catalog.Catalog
	logger  hclog.Logger
	routes  map[string]http.Handler
}

// New returns an agent; Run starts it. routes are served next to the
// checkpoints on the agent's port (e.g. "/metrics"); may be nil.
func New(cfg Config, cat *catalog.Catalog, routes map[string]http.Handler, logger hclog.Logger) *Agent {
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = 2 * time.Second
	}
	return &Agent{cfg: cfg, catalog: cat, routes: routes, logger: logger}
}

// Run serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.CheckpointDir, 0o700); err != nil {
		return fmt.Errorf("checkpoint dir: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", (&transfer.Server{Root: a.cfg.CheckpointDir, Token: a.cfg.Token, Logger: a.logger.Named("transfer")}).Handler())
	for pattern, h := range a.routes {
		mux.Handle(pattern, h)
	}
	srv := &http.Server{
		Addr:              a.cfg.Listen,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Listen, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	a.logger.Info("serving checkpoints", "listen", a.cfg.Listen, "advertise", a.cfg.Advertise, "dir", a.cfg.CheckpointDir)

	deregister, err := a.register(ctx)
	if err != nil {
		_ = srv.Close()
		return err
	}
	defer deregister()

	ticker := time.NewTicker(a.cfg.ReapInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		case <-ticker.C:
			a.reap(ctx)
		}
	}
}

// register writes this agent's record in Consul, trying again until ctx
// ends: Consul being away for a while is no reason to stop serving.
func (a *Agent) register(ctx context.Context) (func(), error) {
	wait := time.Second
	for {
		deregister, err := a.catalog.RegisterAgent(ctx, catalog.Agent{
			NodeID:   a.cfg.NodeID,
			NodeName: a.cfg.NodeName,
			Address:  "http://" + a.cfg.Advertise,
		})
		if err == nil {
			return deregister, nil
		}
		a.logger.Warn("cannot register in Consul yet", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("register in Consul: %w", err)
		case <-time.After(wait):
			wait = min(2*wait, 30*time.Second)
		}
	}
}

// reap removes this node's checkpoints whose restore succeeded (or that a
// move across architectures made useless), then their records: a checkpoint
// is never removed before that.
func (a *Agent) reap(ctx context.Context) {
	recs, err := a.catalog.List(ctx)
	if err != nil {
		a.logger.Debug("list checkpoints", "error", err)
		return
	}
	for _, r := range recs {
		// Restored, or started fresh on another architecture: nobody will
		// restore this checkpoint any more. Failed ones are kept.
		if r.SourceNodeID != a.cfg.NodeID || (r.State != catalog.StateRestored && r.State != catalog.StateColdStart) {
			continue
		}
		dir := transfer.CheckpointDir(a.cfg.CheckpointDir, r.AllocID, r.Task)
		if r.Shared {
			dir = r.CheckpointDir
		}
		if err := os.RemoveAll(dir); err != nil {
			a.logger.Warn("remove restored checkpoint", "dir", dir, "error", err)
			continue
		}
		if err := a.catalog.Delete(ctx, r.AllocID, r.Task); err != nil {
			a.logger.Warn("delete checkpoint record", "alloc", r.AllocID, "task", r.Task, "error", err)
			continue
		}
		a.logger.Info("restored checkpoint removed", "alloc", r.AllocID, "task", r.Task, "destination", r.DestNodeName)
	}
}
