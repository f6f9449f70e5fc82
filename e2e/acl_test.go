package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestACLPolicies runs with ACLs on (FERRY_E2E_ACL=1) only: Nomad and
// Consul refuse a request without a token; the companion's tokens, made
// from jobspecs/acl/companion.*.hcl, move an allocation live with
// `ferry-companion migrate` (the drivers doing their part with theirs,
// from jobspecs/acl/driver.*.hcl); and an agent whose Nomad token lacks
// node write stops at once, naming its token setting and the rule.
func TestACLPolicies(t *testing.T) {
	if !dev.acl {
		t.Skip("ACLs are off: FERRY_E2E_ACL=1 (make e2e-acl) turns them on")
	}
	t.Run("anonymous", func(t *testing.T) {
		for _, url := range []string{
			dev.env["NOMAD_ADDR"] + "/v1/nodes",
			"http://" + dev.env["CONSUL_HTTP_ADDR"] + "/v1/kv/ferry/leader",
		} {
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("GET %s without a token: %s, want 403", url, resp.Status)
			}
		}
	})

	t.Run("migrate with the companion's tokens", func(t *testing.T) {
		a := dev.statefulJob(t, "acl-move")
		target := dev.otherNode(t, a.NodeID)
		cmd := exec.Command(filepath.Join(dev.root, "bin/ferry-companion"), "migrate", a.ID, "--node", target)
		cmd.Env = dev.commandEnv("NOMAD_TOKEN="+dev.aclToken(t, "companion.nomad"),
			"CONSUL_HTTP_TOKEN="+dev.aclToken(t, "companion.consul"))
		out, err := cmd.CombinedOutput()
		t.Logf("ferry-companion migrate:\n%s", out)
		if err != nil || !strings.Contains(string(out), "restored from its checkpoint") {
			t.Fatalf("ferry-companion migrate with the companion's tokens: %v", err)
		}
		next := dev.replacement(t, "acl-move", a)
		dev.assertResumed(t, a.ID, next.ID)
	})

	t.Run("agent without node write", func(t *testing.T) {
		node := dev.readyNodes(t)[0]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// The driver's Nomad token reads nodes but does not write them.
		cmd := exec.CommandContext(ctx, filepath.Join(dev.root, "bin/ferry-companion"), "agent",
			"-listen", "127.0.0.1:0", "-advertise", "127.0.0.1:4700", "-node-id", node.ID,
			"-nomad-token-file", filepath.Join(dev.env["FERRY_ACL_DIR"], "driver.nomad"),
			"-consul-token-file", filepath.Join(dev.env["FERRY_ACL_DIR"], "companion.consul"))
		cmd.Env = dev.commandEnv("NOMAD_TOKEN=", "CONSUL_HTTP_TOKEN=")
		out, err := cmd.CombinedOutput()
		t.Logf("ferry-companion agent:\n%s", out)
		if err == nil || ctx.Err() != nil {
			t.Fatalf("the agent did not stop at once: %v", err)
		}
		for _, want := range []string{"nomad.token (-nomad-token, NOMAD_TOKEN)", "permission denied", `node { policy = "write" }`, "jobspecs/acl/companion.nomad.hcl"} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("the agent's error does not say %q", want)
			}
		}
	})
}

// commandEnv is the environment of a command run against the dev cluster:
// this process's, the cluster's, then extra (KEY=VALUE, which win).
func (c *cluster) commandEnv(extra ...string) []string {
	env := os.Environ()
	for k, v := range c.env {
		env = append(env, k+"="+v)
	}
	return append(env, extra...)
}

// aclToken is the secret ID the dev cluster keeps as name in FERRY_ACL_DIR
// (scripts/cluster/acl.sh).
func (c *cluster) aclToken(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.env["FERRY_ACL_DIR"], name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
