// Package catalogtest runs a real Consul dev agent for tests of packages that
// use the checkpoint catalogue (or Consul in general).
package catalogtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
)

// ConsulBinary is the Consul agent StartConsul runs (scripts/deps.sh installs
// it). The FERRY_CONSUL_BIN environment variable overrides it.
const ConsulBinary = "/usr/local/bin/consul"

// startTimeout bounds how long an agent may take to be ready.
const startTimeout = 30 * time.Second

// Agent is a Consul dev agent (a single in-memory server) listening on
// 127.0.0.1 only.
type Agent struct {
	// Addr is the HTTP API address, "127.0.0.1:PORT", in the form
	// CONSUL_HTTP_ADDR and consul/api's Config.Address take.
	Addr string
	*testutil.Daemon
}

// StartConsul starts a Consul dev agent on free loopback ports, waits until
// it has elected itself leader, and kills it when the test ends. It returns
// the HTTP API address, "127.0.0.1:PORT". Without the consul binary the test
// is skipped, unless the CI environment variable is set, in which case it
// fails.
func StartConsul(t testing.TB) string {
	t.Helper()
	return RunConsul(t).Addr
}

// RunConsul is StartConsul for tests that need the agent itself, e.g. to stop
// it before the test ends or to print its log.
func RunConsul(t testing.TB) *Agent {
	t.Helper()
	return RunConsulWith(t, ConsulOptions{})
}

// ConsulOptions configure RunConsulWith.
type ConsulOptions struct {
	// ACLManagementToken, when set, enables ACLs with a default-deny
	// policy and this token (a UUID) as the initial management token;
	// requests without a token, or with another one, are then refused.
	ACLManagementToken string
}

// RunConsulWith is RunConsul with options, e.g. ACLs.
func RunConsulWith(t testing.TB, opts ConsulOptions) *Agent {
	t.Helper()
	bin := testutil.Binary(t, ConsulBinary, "FERRY_CONSUL_BIN")
	dir := t.TempDir()
	return testutil.StartDaemonRetry(t, "consul", func(int) (*Agent, error) { return startAgent(bin, dir, opts) })
}

func startAgent(bin, dir string, opts ConsulOptions) (*Agent, error) {
	ports, err := testutil.FreePorts(4)
	if err != nil {
		return nil, err
	}
	httpPort, serfLAN, serfWAN, server := ports[0], ports[1], ports[2], ports[3]
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	args := []string{"agent", "-dev",
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-http-port", strconv.Itoa(httpPort),
		// The dev agent binds gRPC on 8502 and gRPC-TLS on 8503 by
		// default, which would collide between agents of parallel tests.
		"-grpc-port", "-1",
		"-grpc-tls-port", "-1",
		"-dns-port", "-1",
		"-serf-lan-port", strconv.Itoa(serfLAN),
		"-serf-wan-port", strconv.Itoa(serfWAN),
		"-server-port", strconv.Itoa(server),
		"-log-level", "warn",
	}
	if opts.ACLManagementToken != "" {
		args = append(args, "-hcl", fmt.Sprintf(
			"acl {\nenabled = true\ndefault_policy = \"deny\"\ntokens {\ninitial_management = %q\n}\n}",
			opts.ACLManagementToken))
	}
	d, err := testutil.StartDaemon(bin, dir, args...)
	if err != nil {
		return nil, err
	}
	a := &Agent{Addr: addr, Daemon: d}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := waitReady(ctx, a, opts.ACLManagementToken); err != nil {
		a.Stop()
		return nil, fmt.Errorf("consul on %s: %w\n%s", a.Addr, err, a.Log())
	}
	return a, nil
}

// waitReady polls the agent until it has elected itself leader and
// registered its own node, which sessions need ("Missing node
// registration" before).
func waitReady(ctx context.Context, a *Agent, token string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		select {
		case <-a.Exited():
			return fmt.Errorf("agent exited early: %v", a.ExitErr())
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s (last: %v)", startTimeout, last)
		case <-time.After(25 * time.Millisecond):
		}
		var leader string
		if err := getJSON(ctx, client, "http://"+a.Addr+"/v1/status/leader", token, &leader); err != nil {
			last = err
			continue
		}
		if leader == "" {
			last = errors.New("no leader yet")
			continue
		}
		var nodes []json.RawMessage
		if err := getJSON(ctx, client, "http://"+a.Addr+"/v1/catalog/nodes", token, &nodes); err != nil {
			last = err
			continue
		}
		if len(nodes) > 0 {
			return nil
		}
		last = errors.New("the agent's node is not registered yet")
	}
}

// getJSON decodes what url answers into out.
func getJSON(ctx context.Context, client *http.Client, url, token string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s: decode %q: %w", url, body, err)
	}
	return nil
}
