// Package e2e runs Ferry on a real Nomad cluster: scripts/cluster.sh starts a
// Consul agent, a Nomad server and Nomad clients, each in its own network
// namespace, with the freshly built driver.
//
// With FERRY_E2E_ACL=1 the cluster runs with Nomad's and Consul's ACLs on
// (scripts/cluster.sh up --acl): the driver and the companion hold tokens
// made from the policies in jobspecs/acl/, and the tests act as the
// operator, with the management tokens.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/sdk"
	"github.com/ferry-nomad/ferry/driver/testutil"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	nomad "github.com/hashicorp/nomad/api"
)

// cluster is the dev cluster the tests run against.
type cluster struct {
	root     string            // repository root
	env      map[string]string // from `scripts/cluster.sh env`
	api      *nomad.Client
	registry string // as clients reach it
	push     string // as this process reaches it
	acl      bool   // Nomad's and Consul's ACLs are on (FERRY_E2E_ACL=1)
}

var dev *cluster

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped, the dev cluster needs root")
		os.Exit(0)
	}
	c, err := startCluster()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	dev = c
	os.Exit(m.Run())
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func startCluster() (*cluster, error) {
	root := repoRoot()
	clients := os.Getenv("FERRY_E2E_CLIENTS")
	if clients == "" {
		clients = "3"
	}
	// Every `up` of the tests keeps the mode: the script reads FERRY_ACL.
	acl := os.Getenv("FERRY_E2E_ACL") == "1"
	if acl {
		os.Setenv("FERRY_ACL", "1")
	} else {
		os.Setenv("FERRY_ACL", "0")
	}
	up := exec.Command("bash", filepath.Join(root, "scripts/cluster.sh"), "up", "--clients", clients)
	up.Stdout, up.Stderr = os.Stdout, os.Stderr
	if err := up.Run(); err != nil {
		return nil, fmt.Errorf("scripts/cluster.sh up: %w", err)
	}
	out, err := exec.Command("bash", filepath.Join(root, "scripts/cluster.sh"), "env").Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/cluster.sh env: %w", err)
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "export ")
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = strings.Trim(v, `"'`)
		}
	}
	// The tests' own API clients, as the CLIs they run, take the tokens
	// (the management tokens, with ACLs) from this process's environment.
	for _, k := range []string{"NOMAD_TOKEN", "CONSUL_HTTP_TOKEN"} {
		if v, ok := env[k]; ok {
			os.Setenv(k, v)
		} else {
			os.Unsetenv(k)
		}
	}
	cfg := nomad.DefaultConfig()
	cfg.Address = env["NOMAD_ADDR"]
	api, err := nomad.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	return &cluster{root: root, env: env, api: api, registry: env["FERRY_REGISTRY"], push: env["FERRY_REGISTRY_PUSH"], acl: acl}, nil
}

// nomadCLI runs the nomad command against the dev cluster.
func (c *cluster) nomadCLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nomad", args...)
	cmd.Env = os.Environ()
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	t.Logf("nomad %s\n%s", strings.Join(args, " "), out)
	return string(out), err
}

// pushBusybox builds a busybox image and pushes it; it returns the
// reference clients use.
func (c *cluster) pushBusybox(t testing.TB, repo string) string {
	t.Helper()
	img := testutil.BusyboxImage(t, v1.Platform{OS: "linux", Architecture: "amd64"})
	testutil.PushImage(t, img, c.push+"/"+repo)
	return c.registry + "/" + repo
}

// runJob registers a jobspec given as HCL with the nomad CLI.
func (c *cluster) runJob(t testing.TB, hcl string, vars ...string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "job.nomad.hcl")
	if err := os.WriteFile(path, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"job", "run", "-detach"}
	for _, v := range vars {
		args = append(args, "-var", v)
	}
	if out, err := c.nomadCLI(t, append(args, path)...); err != nil {
		t.Fatalf("nomad job run: %v\n%s", err, out)
	}
}

func (c *cluster) purge(t testing.TB, job string) {
	_, _, _ = c.api.Jobs().Deregister(job, true, nil)
}

// waitAlloc waits for an allocation of job that satisfies ok.
func (c *cluster) waitAlloc(t testing.TB, job string, timeout time.Duration, ok func(*nomad.AllocationListStub) bool) *nomad.AllocationListStub {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last []*nomad.AllocationListStub
	for time.Now().Before(deadline) {
		allocs, _, err := c.api.Jobs().Allocations(job, true, nil)
		if err == nil {
			last = allocs
			for _, a := range allocs {
				if ok(a) {
					return a
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, a := range last {
		for name, ts := range a.TaskStates {
			for _, e := range ts.Events {
				t.Logf("alloc %s task %s: %s %s", a.ID[:8], name, e.Type, e.DisplayMessage)
			}
		}
	}
	t.Fatalf("job %s: no allocation reached the expected state within %s", job, timeout)
	return nil
}

func running(a *nomad.AllocationListStub) bool {
	return a.ClientStatus == nomad.AllocClientStatusRunning
}

// taskEvents is every event message of a task of an allocation.
func (c *cluster) taskEvents(t testing.TB, allocID, task string) []string {
	t.Helper()
	a, _, err := c.api.Allocations().Info(allocID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	if ts := a.TaskStates[task]; ts != nil {
		for _, e := range ts.Events {
			msgs = append(msgs, e.Type+": "+e.DisplayMessage)
		}
	}
	return msgs
}

// waitLogs waits until the task's stdout satisfies ok and returns it.
func (c *cluster) waitLogs(t testing.TB, allocID, task string, timeout time.Duration, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out string
	for time.Now().Before(deadline) {
		out, _ = c.nomadCLI(t, "alloc", "logs", allocID, task)
		if ok(out) {
			return out
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("logs of %s/%s never matched; last:\n%s", allocID, task, out)
	return ""
}

// clientIndex is K of the dev cluster's client "ferry-cK" an allocation runs on.
func (c *cluster) clientIndex(t testing.TB, nodeID string) string {
	t.Helper()
	n, _, err := c.api.Nodes().Info(nodeID, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := strings.CutPrefix(n.Name, "ferry-c")
	if !ok {
		t.Fatalf("node %s is not a dev cluster client", n.Name)
	}
	return k
}

// runScript runs scripts/cluster.sh with args.
func runScript(t testing.TB, root string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(root, "scripts/cluster.sh")}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// taskEventList is a task's events.
type taskEventList []*nomad.TaskEvent

func (l taskEventList) find(prefix string) *nomad.TaskEvent {
	for _, e := range l {
		if strings.HasPrefix(e.DisplayMessage, prefix) {
			return e
		}
	}
	return nil
}

func (l taskEventList) String() string {
	var s []string
	for _, e := range l {
		s = append(s, e.Type+": "+e.DisplayMessage)
	}
	return strings.Join(s, "\n")
}

// events is the task "counter"'s events of an allocation.
func (c *cluster) events(t testing.TB, allocID string) taskEventList {
	t.Helper()
	a, _, err := c.api.Allocations().Info(allocID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ts := a.TaskStates["counter"]; ts != nil {
		return ts.Events
	}
	return nil
}

// waitEvent waits up to timeout for the task event of allocID's counter
// whose message starts with prefix (the client sends events to the servers
// in batches), and returns it, or nil.
func (c *cluster) waitEvent(t testing.TB, allocID, prefix string, timeout time.Duration) *nomad.TaskEvent {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		if e := c.events(t, allocID).find(prefix); e != nil || time.Now().After(deadline) {
			return e
		}
	}
}

// assertReceived checks how the restored task on allocID got its
// checkpoint: "pushed" while it was dumped, "fetched", "shared" or "local".
func (c *cluster) assertReceived(t testing.TB, allocID, kind string) {
	t.Helper()
	evs := c.events(t, allocID)
	e := evs.find("Restored from checkpoint")
	if e == nil || e.Details[sdk.EventReceived] != kind {
		t.Fatalf("the checkpoint was not %s:\n%s", kind, evs)
	}
}
