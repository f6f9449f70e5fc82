package rebalance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/companion/capacity"
	"github.com/ferry-nomad/ferry/companion/migrate"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shoenig/test/must"
)

// A dry run saves the pools' plan for status, and acts on nothing: the
// rebalancer here has no Nomad client, which any action would use.
func TestCapacityDryRunActsOnNothing(t *testing.T) {
	c, err := api.NewClient(&api.Config{Address: catalogtest.StartConsul(t)})
	must.NoError(t, err)
	ctx := context.Background()
	policies := map[string]capacity.Policy{"default": capacity.DefaultPolicy()}
	r := &Rebalancer{
		Config:  Config{DryRun: true, Capacity: policies, Node: "n1"},
		Sources: &Sources{Consul: c},
		Metrics: NewMetrics(),
		Logger:  hclog.NewNullLogger(),
	}
	plan := capacity.Plan{Pools: []capacity.PoolPlan{{Pool: "default", VT: 1, VA: 3, Quota: 10, Why: "take 2 out",
		Actions: []capacity.Action{{Kind: capacity.ActScaleIn, NodeID: "id-b", NodeName: "b"}, {Kind: capacity.ActMove, NodeID: "id-b", AllocID: "x"}}}}}
	var moves sync.WaitGroup
	r.actOnCapacity(ctx, ctx, nil, capacity.State{}, plan, &Inputs{}, &moves)
	moves.Wait()

	saved, err := LoadCapacity(ctx, c)
	must.NoError(t, err)
	must.True(t, saved.DryRun)
	must.Eq(t, "take 2 out", saved.Pools["default"].Why)
	must.Eq(t, policies, saved.Policies)
	must.Eq(t, 0, testutil.CollectAndCount(r.Metrics.capacityActions))
	must.Eq(t, 3.0, testutil.ToFloat64(r.Metrics.poolNodes.WithLabelValues("default", "in_service")))
	must.MapEmpty(t, r.acting)
}

// A planner that lost its lock saves nothing and acts on nothing.
func TestCapacityFenced(t *testing.T) {
	c, err := api.NewClient(&api.Config{Address: catalogtest.StartConsul(t)})
	must.NoError(t, err)
	ctx := context.Background()
	session, _, err := c.Session().Create(&api.SessionEntry{TTL: "30s"}, nil)
	must.NoError(t, err)
	r := &Rebalancer{Config: Config{Node: "n1"}, Sources: &Sources{Consul: c}, Metrics: NewMetrics(), Logger: hclog.NewNullLogger()}
	plan := capacity.Plan{Pools: []capacity.PoolPlan{{Pool: "default",
		Actions: []capacity.Action{{Kind: capacity.ActPark, NodeID: "id-b", NodeName: "b"}}}}}
	var moves sync.WaitGroup
	r.actOnCapacity(ctx, ctx, &migrate.Fence{Key: "ferry/leader", Session: session}, capacity.State{}, plan, &Inputs{}, &moves)
	saved, err := LoadCapacity(ctx, c)
	must.NoError(t, err)
	must.MapEmpty(t, saved.Pools)
	must.Eq(t, 0, testutil.CollectAndCount(r.Metrics.capacityActions))
}

// The operator's commands run with the pool and the count or node in
// their environment, and a failing one is retried with backoff and
// counted.
func TestCapacityCommand(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "scale.sh")
	// Fails the first time, then records its environment.
	must.NoError(t, os.WriteFile(script, []byte(`#!/bin/sh
if [ ! -e "$1/tried" ]; then touch "$1/tried"; echo "cloud busy" >&2; exit 1; fi
echo "$FERRY_POOL $FERRY_COUNT $FERRY_NODE_NAME" > "$1/done"
`), 0o755))
	r := &Rebalancer{Metrics: NewMetrics(), Logger: hclog.NewNullLogger()}
	var running sync.WaitGroup
	start := time.Now()
	r.command(context.Background(), "gpu", capacity.Action{Kind: capacity.ActLaunch, Count: 2}, []string{script, dir},
		[]string{"FERRY_POOL=gpu", "FERRY_COUNT=2"}, &running)
	running.Wait()
	out, err := os.ReadFile(filepath.Join(dir, "done"))
	must.NoError(t, err)
	must.Eq(t, "gpu 2", strings.TrimSpace(string(out)))
	must.Greater(t, commandBackoff-time.Millisecond, time.Since(start))
	must.Eq(t, 1.0, testutil.ToFloat64(r.Metrics.capacityActions.WithLabelValues("gpu", "launch_failed")))
}
