// Command ferry-companion is Ferry's daemon and operator tool:
//
//	ferry-companion agent    serve this node's checkpoints (run by a system job)
//	ferry-companion migrate  move an allocation to another node, live
//	ferry-companion version
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferry-nomad/ferry/companion/agent"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/hashicorp/go-hclog"
	nomad "github.com/hashicorp/nomad/api"
)

// version is set at build time with -ldflags.
var version = "0.1.0-dev"

const usage = `usage: ferry-companion <command> [flags]

commands:
  agent     serve this node's checkpoints to other nodes (run by jobspecs/companion.nomad.hcl)
  migrate   move an allocation to another node: ferry-companion migrate ALLOC [--node NODE]
  version   print the version

Nomad and Consul are found as their CLIs find them: NOMAD_ADDR, NOMAD_TOKEN,
CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN.
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
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "ferry-companion", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
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
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	var cfg agent.Config
	fs.StringVar(&cfg.Listen, "listen", ":4700", "address to serve checkpoints on")
	fs.StringVar(&cfg.Advertise, "advertise", os.Getenv("NOMAD_ADDR_http"), "host:port other nodes reach this agent at")
	fs.StringVar(&cfg.CheckpointDir, "checkpoint-dir", "/var/lib/ferry/checkpoints", "the driver's checkpoint directory on this node")
	fs.StringVar(&cfg.Token, "token", os.Getenv("FERRY_TOKEN"), "token drivers present to fetch checkpoints (companion.token)")
	fs.StringVar(&cfg.NodeID, "node-id", "", "this Nomad node's ID")
	fs.StringVar(&cfg.NodeName, "node-name", "", "this Nomad node's name")
	consulAddr := fs.String("consul", "", "Consul address (default CONSUL_HTTP_ADDR)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	cat, err := catalog.NewFromConfig(*consulAddr, "", logger.Named("catalog"))
	if err != nil {
		return err
	}
	return agent.New(cfg, cat, logger.Named("agent")).Run(ctx)
}

func runMigrate(ctx context.Context, args []string, stdout io.Writer, logger hclog.Logger) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	node := fs.String("node", "", "destination node (name or ID); default: Nomad chooses")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for the replacement to run")
	// Flags may follow the allocation ID.
	var alloc string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) > 0 {
			if alloc != "" {
				return fmt.Errorf("migrate takes one allocation, got %q and %q", alloc, args[0])
			}
			alloc, args = args[0], args[1:]
		}
	}
	if alloc == "" {
		return fmt.Errorf("usage: ferry-companion migrate ALLOC [--node NODE] [--timeout 5m]")
	}
	client, err := nomad.NewClient(nomad.DefaultConfig())
	if err != nil {
		return err
	}
	cat, err := catalog.NewFromConfig("", "", logger.Named("catalog"))
	if err != nil {
		return err
	}
	m := &migrate.Mover{Nomad: client, Catalog: cat, Logger: logger.Named("migrate")}
	res, err := m.Move(ctx, migrate.Request{AllocID: alloc, TargetNode: *node, Timeout: *timeout, Reason: "operator"})
	if err != nil {
		return err
	}
	how := "restored from its checkpoint"
	if !res.Restored {
		how = "started fresh: " + res.Reason
	}
	fmt.Fprintf(stdout, "allocation %s moved from %s to %s as %s: %s; downtime %s, %s moved\n",
		res.OldAlloc[:8], res.Source, res.Destination, res.NewAlloc[:8], how,
		res.Downtime.Round(10*time.Millisecond), humanBytes(res.Bytes))
	if res.TargetMissed {
		fmt.Fprintf(stdout, "note: Nomad did not place it on --node %s; give the job the affinity on meta.%s\n", *node, migrate.TargetMeta)
	}
	return nil
}

func humanBytes(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
