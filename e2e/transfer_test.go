package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/ferry-nomad/ferry/driver/transfer"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-uuid"
	nomad "github.com/hashicorp/nomad/api"
)

// memtickImage builds e2e/testdata/memtick for this machine into a
// one-layer image and pushes it; it returns the reference clients use.
func (c *cluster) memtickImage(t testing.TB) string {
	t.Helper()
	img := goImage(t, "memtick", runtime.GOARCH)
	testutil.PushImage(t, img, c.push+"/ferry/memtick:1")
	return c.registry + "/ferry/memtick:1"
}

// memtickJob is a checkpointed service job "id" whose task "counter" runs
// memtick holding mib MiB of random memory and ticking every `every`.
func memtickJob(id, image string, mib int, every time.Duration) string {
	return checkpointedService(id, image, fmt.Sprintf(`args = ["-mib", "%d", "-every", "%s"]`, mib, every), "enabled = true", mib+96)
}

// runMemtick runs memtickJob and returns its allocation once it ticks.
func (c *cluster) runMemtick(t testing.TB, id string, mib int, every time.Duration) *nomad.AllocationListStub {
	t.Helper()
	c.runJob(t, memtickJob(id, c.memtickImage(t), mib, every))
	t.Cleanup(func() { c.purge(t, id) })
	a := c.waitAlloc(t, id, 3*time.Minute, running)
	c.waitLogs(t, a.ID, "counter", 2*time.Minute, func(s string) bool { return lastCount(s) >= 5 })
	return a
}

// assertMemoryKept checks that memtick on the new allocation checked its
// memory after the move and found it whole.
func (c *cluster) assertMemoryKept(t testing.TB, allocID string) {
	t.Helper()
	log := c.waitLogs(t, allocID, "counter", time.Minute, func(s string) bool { return strings.Contains(s, "verify ") })
	if strings.Contains(log, "verify BAD") || !strings.Contains(log, "verify ok") {
		t.Fatalf("memory not intact after the move:\n%s", tail(log, 10))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// undrain ends a drain of node and makes it eligible again, and waits for
// the companion system job to run on it again.
func (c *cluster) undrain(t testing.TB, nodeID string) {
	t.Helper()
	_, _ = c.nomadCLI(t, "node", "drain", "-disable", "-yes", nodeID)
	_, _ = c.nomadCLI(t, "node", "eligibility", "-enable", nodeID)
	if out, err := runScript(t, c.root, "companion"); err != nil {
		t.Fatalf("cluster.sh companion: %v\n%s", err, out)
	}
}

// TestDrainKeepsMemory: the operator's plain command, `nomad node drain
// -enable -yes NODE`, moves a 256 MiB checkpointing service to another
// node with its memory, although the drain stops the companion system job
// on the node too; so does a drain that leaves system jobs alone.
func TestDrainKeepsMemory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"plain", nil},
		{"ignore-system", []string{"-ignore-system"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := "drain-" + tc.name
			a := dev.runMemtick(t, job, 256, 100*time.Millisecond)
			args := append(append([]string{"node", "drain", "-enable", "-yes"}, tc.flags...), a.NodeID)
			t.Cleanup(func() { dev.undrain(t, a.NodeID) })
			if out, err := dev.nomadCLI(t, args...); err != nil {
				t.Fatalf("node drain: %v\n%s", err, out)
			}
			next := dev.replacement(t, job, a)
			if next.NodeID == a.NodeID {
				t.Fatal("the replacement landed on the drained node")
			}
			dev.assertResumed(t, a.ID, next.ID)
			dev.assertReceived(t, next.ID, "pushed")
			dev.assertMemoryKept(t, next.ID)
			dev.waitRecordGone(t, a.ID)
		})
	}
}

// tamperWhenReady waits for the record of alloc's task to become ready and
// then records another manifest digest in it, as someone who can write
// Consul but not the source's disk would.
func (c *cluster) tamperWhenReady(t testing.TB, alloc, task string) <-chan error {
	t.Helper()
	kv := c.catalog(t).Client().KV()
	key := c.catalog(t).Key(alloc, task)
	done := make(chan error, 1)
	go func() {
		var index uint64
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			pair, meta, err := kv.Get(key, &consulapi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second})
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			index = meta.LastIndex
			var rec map[string]any
			if pair == nil || json.Unmarshal(pair.Value, &rec) != nil || rec["state"] != string(catalog.StateReady) {
				continue
			}
			rec["manifest_sha256"] = strings.Repeat("0", 64)
			value, _ := json.Marshal(rec)
			ok, _, err := kv.CAS(&consulapi.KVPair{Key: key, Value: value, ModifyIndex: pair.ModifyIndex}, nil)
			if err == nil && ok {
				done <- nil
				return
			}
		}
		done <- fmt.Errorf("record of %s never became ready to tamper with", alloc)
	}()
	return done
}

// TestTamperedManifestRefused: the manifest digest in the record does not
// match the checkpoint's manifest: the destination refuses the checkpoint
// before CRIU sees it, starts the task fresh, and the source's checkpoint
// and the record stay.
func TestTamperedManifestRefused(t *testing.T) {
	a := dev.statefulJob(t, "move-tampered")
	tampered := dev.tamperWhenReady(t, a.ID, "counter")
	if out, err := dev.nomadCLI(t, "alloc", "stop", "-detach", a.ID); err != nil {
		t.Fatalf("alloc stop: %v\n%s", err, out)
	}
	if err := <-tampered; err != nil {
		t.Fatal(err)
	}
	next := dev.replacement(t, "move-tampered", a)
	events := strings.Join(dev.taskEvents(t, next.ID, "counter"), "\n")
	if !regexp.MustCompile(`Restore failed, starting fresh: .*manifest.*sha256.*refusing the checkpoint`).MatchString(events) {
		t.Fatalf("events do not refuse the tampered checkpoint:\n%s", events)
	}
	if strings.Contains(events, runcRestoreLog) {
		t.Fatalf("CRIU saw the tampered checkpoint:\n%s", events)
	}
	newLog := dev.waitLogs(t, next.ID, "counter", time.Minute, func(s string) bool { return firstCount(s) > 0 })
	if firstCount(newLog) != 1 {
		t.Fatalf("the task did not start fresh: first count %d", firstCount(newLog))
	}
	rec, err := dev.catalog(t).Get(context.Background(), a.ID, "counter")
	if err != nil || rec.State != catalog.StateFailed {
		t.Fatalf("record after a refused checkpoint: %+v, %v", rec, err)
	}
	if !dev.hasCheckpoint(t, a.NodeID, a.ID) {
		t.Fatal("source checkpoint removed after a refused restore")
	}
}

// hasCheckpoint reports whether the node keeps a checkpoint of alloc's
// task "counter": where the move wrote it (state_dir) or where it is kept
// for later (data_dir).
func (c *cluster) hasCheckpoint(t testing.TB, nodeID, alloc string) bool {
	k := c.clientIndex(t, nodeID)
	for _, root := range []string{
		fmt.Sprintf("%s/c%s/checkpoints", c.env["FERRY_RUN"], k),
		c.checkpointRoot(t, nodeID),
	} {
		dir, _ := checkpoint.Dir(root, alloc, "counter")
		if _, err := os.Stat(filepath.Join(dir, checkpoint.ManifestName)); err == nil {
			return true
		}
	}
	return false
}

// runcRestoreLog is the CRIU log a restore that reached CRIU names.
const runcRestoreLog = "restore.log"

// checkpointRoot is where the driver of the node writes checkpoints.
func (c *cluster) checkpointRoot(t testing.TB, nodeID string) string {
	return fmt.Sprintf("/var/lib/ferry-dev/c%s/ferry/checkpoints", c.clientIndex(t, nodeID))
}

// devNode is one client of the dev cluster as the transfer tests see it.
type devNode struct {
	k      string // "1", "2", ...
	id, ip string
	client *http.Client
}

// devNodes returns clients 1 to 3, each with a transfer client that dials
// from inside its network namespace with its own certificate.
func (c *cluster) devNodes(t testing.TB) []*devNode {
	t.Helper()
	var out []*devNode
	for _, n := range c.readyNodes(t) {
		k, ok := strings.CutPrefix(n.Name, "ferry-c")
		if !ok {
			continue
		}
		i, _ := strconv.Atoi(k)
		tlsDir := c.env["FERRY_TLS"]
		_, conf, err := transfer.TLS{
			CAFile:   filepath.Join(tlsDir, "nomad-agent-ca.pem"),
			CertFile: filepath.Join(tlsDir, "c"+k, "global-client-nomad.pem"),
			KeyFile:  filepath.Join(tlsDir, "c"+k, "global-client-nomad-key.pem"),
		}.Configs()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &devNode{k: k, id: n.ID, ip: fmt.Sprintf("10.97.0.%d", 10+i), client: clientInNetNS(conf, "/var/run/netns/"+n.Name)})
	}
	if len(out) < 3 {
		t.Fatalf("want three clients, have %d", len(out))
	}
	slices.SortFunc(out, func(a, b *devNode) int { return strings.Compare(a.k, b.k) })
	return out
}

// clientInNetNS is a transfer client whose connections are made inside the
// network namespace at path, as that node's driver makes them.
func clientInNetNS(conf *tls.Config, path string) *http.Client {
	c := transfer.NewClient(conf)
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNetNS(ctx, path, network, addr)
	}
	return c
}

// dialInNetNS connects to addr from inside the network namespace at path
// (the socket stays there).
func dialInNetNS(ctx context.Context, path, network, addr string) (conn net.Conn, err error) {
	err = inNetNS(path, func() error {
		conn, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

func newAllocID(t testing.TB) string {
	id, err := uuid.GenerateUUID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// fakeCheckpoint writes a small checkpoint of alloc's task "counter" where
// the driver of node src keeps its checkpoints, and returns its manifest's
// digest.
func (c *cluster) fakeCheckpoint(t testing.TB, src *devNode, alloc string) string {
	t.Helper()
	dir, err := checkpoint.Dir(c.checkpointRoot(t, src.id), alloc, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = checkpoint.Remove(dir) })
	data := []byte("not really CRIU's inventory")
	if err := os.WriteFile(filepath.Join(dir, "images", "inventory.img"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	m := checkpoint.Manifest{Version: checkpoint.Version, AllocID: alloc, Task: "counter", Bytes: int64(len(data)), Files: []checkpoint.File{{
		Path: "images/inventory.img", Size: int64(len(data)), Sum: checkpoint.FileSum(data), Mode: 0o600,
	}}}
	raw, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.WriteManifest(dir, raw); err != nil {
		t.Fatal(err)
	}
	return checkpoint.Digest(raw)
}

// recordMove records a move of alloc's task "counter" from src, claimed by
// the destination: the fetch is granted to node to with a new secret,
// which it returns.
func (c *cluster) recordMove(t testing.TB, src, to *devNode, alloc, digest string) string {
	t.Helper()
	secret, sha := transfer.NewSecret()
	cat := c.catalog(t)
	rec := &catalog.Record{AllocID: alloc, Task: "counter", SourceNodeID: src.id, SourceNodeName: "ferry-c" + src.k,
		State: catalog.StateRestoring, ManifestSHA256: digest,
		Fetch: &catalog.Grant{NodeID: to.id, SHA256: sha, Expires: time.Now().Add(10 * time.Minute).UTC()}}
	if err := cat.Put(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cat.Delete(context.Background(), alloc, "counter") })
	return secret
}

// get requests a checkpoint's manifest from the driver of src, as node
// from, and returns the status and the body.
func (n *devNode) get(t testing.TB, src *devNode, alloc, secret string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+src.ip+":4701/v1/checkpoints/"+alloc+"/counter/manifest.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatalf("GET from ferry-c%s as ferry-c%s: %v", src.k, n.k, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// TestTransferRefusals: the drivers serve a checkpoint only to the node its
// move granted it to, with that move's credential, over TLS: a fetch
// without the credential, with the credential of another allocation, or
// from another node is refused, and so is plain HTTP; the granted node
// gets it.
func TestTransferRefusals(t *testing.T) {
	nodes := dev.devNodes(t)
	src, dst, other := nodes[0], nodes[1], nodes[2]
	allocA, allocB := newAllocID(t), newAllocID(t)
	digestA := dev.fakeCheckpoint(t, src, allocA)
	digestB := dev.fakeCheckpoint(t, src, allocB)
	secretA := dev.recordMove(t, src, dst, allocA, digestA)
	secretB := dev.recordMove(t, src, dst, allocB, digestB)

	status, body := dst.get(t, src, allocA, "")
	if status != http.StatusUnauthorized {
		t.Fatalf("no credential: %d %s", status, body)
	}
	status, body = dst.get(t, src, allocA, secretB)
	if status != http.StatusForbidden || !strings.Contains(body, "not the one granted") {
		t.Fatalf("another allocation's credential: %d %s", status, body)
	}
	status, body = other.get(t, src, allocA, secretA)
	if status != http.StatusForbidden || !strings.Contains(body, "the request comes from "+other.ip) {
		t.Fatalf("another node: %d %s", status, body)
	}
	// Plain HTTP gets no checkpoint.
	out, err := exec.Command("ip", "netns", "exec", "ferry-c"+dst.k, "curl", "-s", "-m", "10",
		"-H", "Authorization: Bearer "+secretA, "http://"+src.ip+":4701/v1/checkpoints/"+allocA+"/counter/manifest.json").CombinedOutput()
	if !strings.Contains(string(out), "HTTP request to an HTTPS server") || strings.Contains(string(out), digestA[:8]) {
		t.Fatalf("plain HTTP: %v %s", err, out)
	}
	// A TLS client without a certificate of the cluster's CA is refused too.
	noCert := clientInNetNS(&tls.Config{InsecureSkipVerify: true}, "/var/run/netns/ferry-c"+dst.k) //nolint:gosec // the server must refuse it
	if _, err := noCert.Get("https://" + src.ip + ":4701/v1/health"); err == nil {
		t.Fatal("a client without a certificate was served")
	}

	// The node granted the fetch, with its credential, gets it.
	dest := filepath.Join(t.TempDir(), allocA, "counter")
	if _, err := transfer.Fetch(context.Background(), dst.client, src.ip+":4701", secretA, allocA, "counter", digestA, dest, nil); err != nil {
		t.Fatalf("the granted fetch failed: %v", err)
	}
	// A record whose digest is not the manifest's is refused by the fetch
	// before it reads the manifest.
	if _, err := transfer.Fetch(context.Background(), dst.client, src.ip+":4701", secretB, allocB, "counter", digestA, t.TempDir()+"/"+allocB+"/counter", nil); err == nil || !strings.Contains(err.Error(), "refusing the checkpoint") {
		t.Fatalf("a manifest that is not the recorded one was accepted: %v", err)
	}
}

// TestRecordPathsIgnored: a checkpoint record is no source of paths. A
// record claiming a restored checkpoint of this node in a directory
// outside the checkpoint directory, or under an allocation ID that is no
// ID, is cleaned up by the driver without removing anything there.
func TestRecordPathsIgnored(t *testing.T) {
	nodes := dev.devNodes(t)
	victim := filepath.Join("/var/lib/ferry-dev", "victim-"+newAllocID(t)[:8])
	if err := os.MkdirAll(victim, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(victim)
	if err := os.WriteFile(filepath.Join(victim, "precious"), []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	kv := dev.catalog(t).Client().KV()
	alloc := newAllocID(t)
	keys := map[string]map[string]any{
		"ferry/checkpoints/" + alloc + "/counter": {
			"alloc_id": alloc, "task": "counter", "state": "restored", "source_node_id": nodes[0].id,
			"checkpoint_dir": victim, "shared": true,
		},
		"ferry/checkpoints/victim-" + alloc[:8] + "/counter": {
			"alloc_id": "victim-" + alloc[:8], "task": "counter", "state": "restored", "source_node_id": nodes[0].id,
			"checkpoint_dir": victim,
		},
	}
	for key, rec := range keys {
		value, _ := json.Marshal(rec)
		if _, err := kv.Put(&consulapi.KVPair{Key: key, Value: value}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The driver handles them: it deletes the ended records of its node.
	deadline := time.Now().Add(time.Minute)
	for key := range keys {
		for {
			pair, _, err := kv.Get(key, nil)
			if err == nil && pair == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("record %s still there: the driver did not clean it up", key)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if data, err := os.ReadFile(filepath.Join(victim, "precious")); err != nil || string(data) != "keep me" {
		t.Fatalf("a record's path was followed: %v", err)
	}
}
