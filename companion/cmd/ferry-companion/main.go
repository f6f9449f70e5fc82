// Command ferry-companion is Ferry's daemon and operator tool:
//
//	ferry-companion agent    measure this node's load, and plan and move when it
//	                         holds the lock (run by a system job)
//	ferry-companion plan     print what the planner would do now; changes nothing
//	ferry-companion status   planner, node loads, moves in flight, last moves
//	ferry-companion migrate  move an allocation to another node, live
//	ferry-companion version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/config"
	"github.com/ferry-nomad/ferry/companion/load"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/companion/planner"
	"github.com/ferry-nomad/ferry/companion/rebalance"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/sdk"
	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// version is set at build time with -ldflags.
var version = "0.1.0-dev"

const usage = `usage: ferry-companion <command> [flags]

commands:
  agent     measure this node's load, rebalance; serves /metrics and /v1/status (run by jobspecs/companion.nomad.hcl)
            ferry-companion agent -config FILE [-dry-run] [-h for every flag]
  plan      print the round the planner would run now: loads, moves, rejections; changes nothing
  status    print the planner, each node's load, moves in flight and the last moves
  migrate   move an allocation to another node: ferry-companion migrate ALLOC [--node NODE]
  version   print the version

Nomad and Consul are found as their CLIs find them: NOMAD_ADDR, NOMAD_TOKEN,
CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE). Every command
reads the same -config FILE (companion/config/example.hcl), whose nomad and
consul blocks hold the addresses and ACL tokens; -h lists each command's flags.
The tokens' policies are in jobspecs/acl/.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := hclog.New(&hclog.LoggerOptions{Name: "ferry-companion", Level: hclog.LevelFromString(envOr("FERRY_LOG_LEVEL", "info")), Output: stderr})
	var err error
	switch args[0] {
	case "agent":
		err = runAgent(ctx, args[1:], logger)
	case "migrate":
		err = runMigrate(ctx, args[1:], stdout, logger)
	case "plan":
		err = runPlan(ctx, args[1:], stdout)
	case "status":
		err = runStatus(ctx, args[1:], stdout)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "ferry-companion", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0 // the flags were printed
	case err != nil:
		fmt.Fprintln(stderr, "error:", explainDenied(err))
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func runAgent(ctx context.Context, args []string, logger hclog.Logger) error {
	cfg, err := config.Load(args, os.Getenv)
	if err != nil {
		return err
	}
	nomadClient, cat, err := newClients(cfg, logger)
	if err != nil {
		return err
	}
	if err := checkAccess(ctx, cfg, nomadClient, cat.Client()); err != nil {
		return fmt.Errorf("checking the agent's access to Nomad and Consul: %w", err)
	}
	metrics := rebalance.NewMetrics()
	var self atomic.Pointer[load.Record]

	loadLogger := logger.Named("load")
	sampler := load.NewSampler(nomadClient, load.SamplerConfig{
		NodeID: cfg.NodeID, NodeName: cfg.NodeName,
		Window: cfg.Sample.Window, Source: cfg.Sample.Source,
		OnlinePriority: cfg.Rebalance.Policy.OnlinePriority,
	}, loadLogger)
	publish := cfg.Sample.Publish()
	publisher := load.NewPublisher(cat.Client(), cfg.Sample.Prefix, publish.SessionTTL(), loadLogger)
	if err := publisher.SetPolicy(publish); err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	rebalancer := &rebalance.Rebalancer{
		Config: rebalance.Config{
			Rebalance: cfg.Rebalance.Enabled, Capacity: cfg.Capacity,
			Policy: cfg.Rebalance.Policy, Interval: cfg.Rebalance.Interval,
			MoveTimeout: cfg.Rebalance.MoveTimeout, DryRun: cfg.Rebalance.DryRun,
			StateKey: cfg.Rebalance.StateKey, Node: cfg.NodeName,
		},
		Sources: sources(cfg, nomadClient, cat),
		Mover:   newMover(nomadClient, cat, logger),
		Metrics: metrics,
		Logger:  logger.Named("planner"),
	}
	status := func(w http.ResponseWriter, r *http.Request) {
		st, err := rebalance.ReadStatus(r.Context(), cat.Client(), cfg.Rebalance.LockKey, cfg.Sample.Prefix)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		st.Self, st.LastRound = self.Load(), rebalancer.Last()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	}
	routes := map[string]http.Handler{
		"/metrics":   promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}),
		"/v1/status": http.HandlerFunc(status),
	}

	// The agent's parts run side by side; the first to fail stops the rest.
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(ctx, cfg.Listen, routes, logger.Named("http")) })
	g.Go(func() error {
		return load.Run(ctx, sampler, publisher, cfg.Sample.Interval, func(r load.Record) {
			self.Store(&r)
			metrics.Record(r)
		})
	})
	// One agent at a time plans: rebalancing rounds, pool sizing, or both.
	if cfg.Rebalance.Enabled || len(cfg.Capacity) > 0 {
		leader := &rebalance.Leader{
			Consul: cat.Client(),
			Key:    cfg.Rebalance.LockKey,
			Holder: rebalance.Holder{
				NodeID: cfg.NodeID, NodeName: cfg.NodeName,
				AllocID: os.Getenv("NOMAD_ALLOC_ID"), Address: cfg.Advertise,
			},
			TTL:       10 * time.Second,
			LockDelay: time.Second,
			Logger:    logger.Named("leader"),
		}
		g.Go(func() error {
			return leader.Run(ctx, func(lockCtx context.Context, fence *migrate.Fence) { rebalancer.Lead(ctx, lockCtx, fence) })
		})
	}
	return g.Wait()
}

// runPlan prints the round the planner would run now; it changes nothing.
func runPlan(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := config.LoadTool("plan", args, os.Getenv)
	if err != nil {
		return err
	}
	nomadClient, cat, err := newClients(cfg, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	in, err := sources(cfg, nomadClient, cat).Read(ctx)
	if err != nil {
		return err
	}
	saved, err := rebalance.LoadState(ctx, cat.Client(), cfg.Rebalance.StateKey)
	if err != nil {
		return err
	}
	// Without a file, plan as the running planner does.
	policy := cfg.Rebalance.Policy
	switch {
	case cfg.File != "":
		fmt.Fprintf(stdout, "Policy: from %s\n\n", cfg.File)
	case saved.Policy != nil:
		policy = *saved.Policy
		fmt.Fprintf(stdout, "Policy: the planner's (saved by %s %s ago)\n\n", orDash(saved.By), rebalance.Age(time.Now(), saved.At))
	default:
		fmt.Fprint(stdout, "Policy: the defaults (no planner has saved one yet)\n\n")
	}
	snap := in.Snapshot()
	printPlan(stdout, in, snap, planner.Round(policy, saved.State, snap))
	return planCapacity(ctx, cfg, cat, nomadClient, in, stdout)
}

// planCapacity prints the sizing round the planner would run now for the
// pools with a policy: the file's, or else the running planner's.
func planCapacity(ctx context.Context, cfg *config.Config, cat *catalog.Catalog, nomadClient *nomad.Client, in *rebalance.Inputs, stdout io.Writer) error {
	sized, err := rebalance.LoadCapacity(ctx, cat.Client())
	if err != nil {
		return err
	}
	policies := cfg.Capacity
	if cfg.File == "" {
		policies = sized.Policies
	}
	if len(policies) == 0 {
		return nil
	}
	snap, err := sources(cfg, nomadClient, cat).CapacitySnapshot(ctx, in, policies)
	if err != nil {
		return err
	}
	snap.MoveBudget = cfg.Rebalance.Policy.Limits.InFlight
	printPools(stdout, capacity.Round(policies, sized.State, snap).Pools)
	return nil
}

// runStatus prints the planner, the nodes' loads and the moves.
func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := config.LoadTool("status", args, os.Getenv)
	if err != nil {
		return err
	}
	_, cat, err := newClients(cfg, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	st, err := rebalance.ReadStatus(ctx, cat.Client(), cfg.Rebalance.LockKey, cfg.Sample.Prefix)
	if err != nil {
		return err
	}
	printStatus(stdout, st, time.Now())
	return nil
}

// newClients are the Nomad client and the Consul catalogue of every
// command, with the configuration's addresses and tokens. The
// configuration has already taken in the environment the API clients
// read, so they are given exactly its values.
func newClients(cfg *config.Config, logger hclog.Logger) (*nomad.Client, *catalog.Catalog, error) {
	nc := nomad.DefaultConfig()
	nc.Address, nc.SecretID = cfg.Nomad.Address, cfg.Nomad.Token
	nomadClient, err := nomad.NewClient(nc)
	if err != nil {
		return nil, nil, fmt.Errorf("nomad client for %s: %w", cfg.Nomad.Address, err)
	}
	cc := consul.DefaultConfig()
	cc.Address, cc.Token, cc.TokenFile = cfg.Consul.Address, cfg.Consul.Token, ""
	consulClient, err := consul.NewClient(cc)
	if err != nil {
		return nil, nil, fmt.Errorf("consul client for %s: %w", cfg.Consul.Address, err)
	}
	return nomadClient, catalog.New(consulClient, "", logger.Named("catalog")), nil
}

func sources(cfg *config.Config, nomadClient *nomad.Client, cat *catalog.Catalog) *rebalance.Sources {
	return &rebalance.Sources{
		Nomad: nomadClient, Consul: cat.Client(), Records: &migrate.Records{Consul: cat.Client()},
		NodesPrefix: cfg.Sample.Prefix,
	}
}

// newMover moves allocations through nomadClient, reading the drivers'
// checkpoint records from cat and keeping its own beside them.
func newMover(nomadClient *nomad.Client, cat *catalog.Catalog, logger hclog.Logger) *migrate.Mover {
	logger = logger.Named("migrate")
	return &migrate.Mover{
		Nomad: nomadClient, Catalog: cat, Logger: logger,
		Records: &migrate.Records{Consul: cat.Client(), Logger: logger},
	}
}

func runMigrate(ctx context.Context, args []string, stdout io.Writer, logger hclog.Logger) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	node := fs.String("node", "", "destination node (name or ID); default: Nomad chooses")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for the replacement to run")
	// Flags may follow the allocation ID.
	cfg, rest, err := config.LoadCommand(fs, args, os.Getenv)
	if err != nil {
		return err
	}
	switch {
	case len(rest) > 1:
		return fmt.Errorf("migrate takes one allocation, got %q and %q", rest[0], rest[1])
	case len(rest) == 0:
		return fmt.Errorf("usage: ferry-companion migrate ALLOC [--node NODE] [--timeout 5m] [-config FILE]")
	}
	alloc := rest[0]
	client, cat, err := newClients(cfg, logger)
	if err != nil {
		return err
	}
	m := newMover(client, cat, logger)
	res, err := m.Move(ctx, migrate.Request{AllocID: alloc, TargetNode: *node, Timeout: *timeout, Reason: "operator"})
	if err != nil {
		return err
	}
	how := fmt.Sprintf("restored from its checkpoint; downtime %s, %s moved", res.Downtime.Round(10*time.Millisecond), humanBytes(res.Bytes))
	if !res.Restored {
		how = fmt.Sprintf("started fresh: %s; downtime %s", res.Reason, res.Downtime.Round(10*time.Millisecond))
	}
	fmt.Fprintf(stdout, "allocation %s moved from %s to %s as %s: %s\n",
		res.OldAlloc[:8], res.Source, res.Destination, res.NewAlloc[:8], how)
	if res.TargetMissed {
		fmt.Fprintf(stdout, "note: Nomad did not place it on --node %s; give the job the affinity on meta.%s\n", *node, sdk.MetaMigrateTarget)
	}
	return nil
}

func humanBytes(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
