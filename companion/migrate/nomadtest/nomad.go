// Package nomadtest runs a real Nomad dev agent (a server and a client in
// one process) for tests of what the companion does to Nomad's nodes:
// their eligibility, their dynamic metadata.
package nomadtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	nomad "github.com/hashicorp/nomad/api"
)

// NomadBinary is the Nomad agent Start runs (scripts/deps.sh installs it).
// The FERRY_NOMAD_BIN environment variable overrides it.
const NomadBinary = "/usr/local/bin/nomad"

// startTimeout bounds how long the agent may take to register its node.
const startTimeout = 60 * time.Second

// Agent is a Nomad dev agent listening on 127.0.0.1 only.
type Agent struct {
	Addr   string // "http://127.0.0.1:PORT"
	NodeID string // its client's node
	Client *nomad.Client
	*testutil.Daemon
}

// Start starts a Nomad dev agent on free loopback ports, with its own data
// directory and cgroup parent (so that it touches nothing of another
// agent on the host), waits until its client's node is registered and
// ready, and kills it when the test ends. Without the nomad binary the
// test is skipped, unless the CI environment variable is set, in which
// case it fails.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin := testutil.Binary(t, NomadBinary, "FERRY_NOMAD_BIN")
	dir := t.TempDir()
	return testutil.StartDaemonRetry(t, "nomad", func(attempt int) (*Agent, error) { return start(bin, dir, attempt) })
}

// agentConfig keeps the dev agent to itself: its ports, its data and
// cgroups, no Consul or Vault, no cloud fingerprinting, raw_exec only.
const agentConfig = `
bind_addr = "127.0.0.1"
data_dir  = %q
ports {
  http = %d
  rpc  = %d
  serf = %d
}
consul {
  client_auto_join = false
  server_auto_join = false
  auto_advertise   = false
}
client {
  cgroup_parent = "/ferry-nomadtest-%d"
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean,consul,vault,cni"
    "driver.allowlist"     = "raw_exec"
  }
}
`

func start(bin, parent string, attempt int) (*Agent, error) {
	ports, err := testutil.FreePorts(3)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(parent, strconv.Itoa(attempt))
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "agent.hcl")
	body := fmt.Sprintf(agentConfig, filepath.Join(dir, "data"), ports[0], ports[1], ports[2], ports[0])
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	d, err := testutil.StartDaemon(bin, dir, "agent", "-dev", "-config", conf, "-log-level", "warn")
	if err != nil {
		return nil, err
	}
	a := &Agent{Addr: "http://127.0.0.1:" + strconv.Itoa(ports[0]), Daemon: d}
	cfg := nomad.DefaultConfig()
	cfg.Address = a.Addr
	if a.Client, err = nomad.NewClient(cfg); err != nil {
		a.Stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if a.NodeID, err = waitNode(ctx, a); err != nil {
		a.Stop()
		return nil, fmt.Errorf("nomad on %s: %w\n%s", a.Addr, err, a.Log())
	}
	return a, nil
}

// waitNode polls the agent until its client's node is registered, ready
// and eligible, and returns its ID.
func waitNode(ctx context.Context, a *Agent) (string, error) {
	var last error
	for {
		select {
		case <-a.Exited():
			return "", fmt.Errorf("agent exited early: %v", a.ExitErr())
		case <-ctx.Done():
			return "", fmt.Errorf("no ready node within %s (last: %v)", startTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
		nodes, _, err := a.Client.Nodes().List((&nomad.QueryOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			last = err
		case len(nodes) == 0:
			last = fmt.Errorf("no node registered yet")
		case nodes[0].Status != nomad.NodeStatusReady || nodes[0].SchedulingEligibility != nomad.NodeSchedulingEligible:
			last = fmt.Errorf("node %s is %s, %s", nodes[0].Name, nodes[0].Status, nodes[0].SchedulingEligibility)
		default:
			return nodes[0].ID, nil
		}
	}
}
