package transfer_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/catalog"
	"github.com/ferry-nomad/ferry/driver/catalog/catalogtest"
	"github.com/ferry-nomad/ferry/driver/checkpoint"
	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-uuid"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

const testTask = "app"

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newAllocID(t testing.TB) string {
	id, err := uuid.GenerateUUID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// world is a Consul agent, a CA, and nodes whose drivers serve transfers on
// loopback addresses of their own (127.0.0.2, 127.0.0.3, ...).
type world struct {
	t   testing.TB
	cat *catalog.Catalog
	ca  *testutil.CA
}

func newWorld(t testing.TB) *world {
	t.Helper()
	addr := catalogtest.StartConsul(t)
	cat, err := catalog.NewFromConfig(addr, "", testutil.Logger(t, hclog.Debug))
	must.NoError(t, err)
	return &world{t: t, cat: cat, ca: testutil.NewCA(t)}
}

// node is one node's driver: its transfer server, and a client that dials
// from the node's address.
type node struct {
	id, name, ip string
	addr         string // the server's ip:port
	root         string // holds checkpoints/ and incoming/
	server       *transfer.Server
	client       *http.Client
	clientTLS    *tls.Config
	pushes       atomic.Int32 // OnPush calls
}

func (n *node) checkpoints() string { return filepath.Join(n.root, "checkpoints") }
func (n *node) incoming() string    { return filepath.Join(n.root, "incoming") }

// node starts the driver side of node name at ip, and records its endpoint.
func (w *world) node(name, ip string) *node {
	w.t.Helper()
	return w.nodeWith(name, ip, transfer.Limits{})
}

// nodeWith is node with the server's limits.
func (w *world) nodeWith(name, ip string, limits transfer.Limits) *node {
	t := w.t
	t.Helper()
	nc := w.ca.Node(t, name, ip)
	serverTLS, clientTLS, err := transfer.TLS{CAFile: w.ca.File, CertFile: nc.CertFile, KeyFile: nc.KeyFile}.Configs()
	must.NoError(t, err)
	n := &node{id: name + "-id", name: name, ip: ip, root: t.TempDir(), clientTLS: clientTLS}
	n.client = clientFrom(clientTLS, ip)
	n.server = &transfer.Server{
		Checkpoints: []string{n.checkpoints()}, Incoming: n.incoming(), Catalog: w.cat,
		NodeID: func() string { return n.id },
		OnPush: func(*catalog.Record) { n.pushes.Add(1) },
		Logger: testutil.Logger(t, hclog.Debug).Named(name),
		Limits: limits,
	}
	ln, err := net.Listen("tcp", ip+":0")
	must.NoError(t, err)
	n.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = n.server.Serve(ctx, ln, serverTLS)
	}()
	held := make(chan struct{})
	go func() {
		defer close(held)
		_ = w.cat.HoldEndpoint(ctx, catalog.Endpoint{NodeID: n.id, NodeName: name, Address: n.addr})
	}()
	t.Cleanup(func() {
		cancel()
		<-served
		<-held
	})
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		_, err := w.cat.GetEndpoint(context.Background(), n.id)
		return err == nil
	}), wait.Timeout(20*time.Second), wait.Gap(20*time.Millisecond)))
	return n
}

// clientFrom is a transfer client whose connections come from ip.
func clientFrom(conf *tls.Config, ip string) *http.Client {
	c := transfer.NewClient(conf)
	c.Transport.(*http.Transport).DialContext = (&net.Dialer{
		Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)},
	}).DialContext
	return c
}

// fixture is a checkpoint's files and manifest.
type fixture struct {
	files map[string][]byte
	raw   []byte
}

func (f *fixture) digest() string { return checkpoint.Digest(f.raw) }

func (f *fixture) paths() []string {
	var ps []string
	for p := range f.files {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	big := make([]byte, 5<<20+123)
	_, err := rand.Read(big)
	must.NoError(t, err)
	f := &fixture{files: map[string][]byte{
		"images/inventory.img": []byte("inventory"),
		"images/pages-1.img":   big,
		"images/core-1.img":    []byte("core"),
		"images/empty.img":     {},
		"rootfs.tar":           []byte("tar"),
		"config.json":          []byte(`{"ociVersion":"1.2.1"}`),
	}}
	f.raw = manifestOf(t, f.files)
	return f
}

// manifestOf is a manifest listing files.
func manifestOf(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	m := checkpoint.Manifest{Version: checkpoint.Version, ContainerID: "c1", CreatedAt: time.Now().UTC()}
	var paths []string
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		m.Files = append(m.Files, checkpoint.File{Path: p, Size: int64(len(files[p])), Sum: checkpoint.FileSum(files[p]), Mode: 0o600})
		m.Bytes += int64(len(files[p]))
	}
	raw, err := json.Marshal(&m)
	must.NoError(t, err)
	return raw
}

// write lays the fixture out as a complete checkpoint in dir.
func (f *fixture) write(t testing.TB, dir string) {
	t.Helper()
	for p, data := range f.files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		must.NoError(t, os.MkdirAll(filepath.Dir(full), 0o700))
		must.NoError(t, os.WriteFile(full, data, 0o600))
	}
	must.NoError(t, checkpoint.WriteManifest(dir, f.raw))
}

// assertHas checks that dir holds the fixture, manifest included.
func (f *fixture) assertHas(t testing.TB, dir string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, checkpoint.ManifestName))
	must.NoError(t, err)
	must.Eq(t, f.raw, raw)
	for p, data := range f.files {
		got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
		must.NoError(t, err)
		must.True(t, string(data) == string(got), must.Sprintf("file %s differs", p))
	}
	_, err = checkpoint.Open(dir, f.digest(), true)
	must.NoError(t, err)
}

func assertNoManifest(t testing.TB, dir string) {
	t.Helper()
	must.FileNotExists(t, filepath.Join(dir, checkpoint.ManifestName))
}

func dirOf(t testing.TB, root, alloc string) string {
	t.Helper()
	dir, err := checkpoint.Dir(root, alloc, testTask)
	must.NoError(t, err)
	return dir
}

// move records a move of a new allocation's task from src, in state, with
// the fixture's digest (when ready or later) and the given grants.
func (w *world) move(t testing.TB, src *node, state catalog.State, f *fixture, push, fetch *catalog.Grant) string {
	t.Helper()
	alloc := newAllocID(t)
	rec := &catalog.Record{AllocID: alloc, Task: testTask, SourceNodeID: src.id, SourceNodeName: src.name,
		State: state, Push: push, Fetch: fetch}
	if state != catalog.StateCheckpointing {
		rec.ManifestSHA256 = f.digest()
	}
	must.NoError(t, w.cat.Put(testContext(t), rec))
	return alloc
}

func grant(n *node, ttl time.Duration) (*catalog.Grant, string) {
	secret, sha := transfer.NewSecret()
	return &catalog.Grant{NodeID: n.id, SHA256: sha, Expires: time.Now().Add(ttl).UTC()}, secret
}

// push streams the fixture as Create would: the files, then the record
// made ready with the manifest's digest, then the manifest.
func (w *world) push(t testing.TB, src, dst *node, alloc, secret string, f *fixture, ready bool) (*transfer.Received, error) {
	t.Helper()
	ctx := testContext(t)
	p := transfer.StartPush(ctx, src.client, dst.addr, secret, alloc, testTask)
	for _, path := range f.paths() {
		data := f.files[path]
		for off := 0; ; off += 1 << 20 {
			end := min(off+1<<20, len(data))
			if err := p.Write(path, int64(off), data[off:end]); err != nil {
				return nil, err
			}
			if end == len(data) {
				break
			}
		}
	}
	if ready {
		_, err := w.cat.Transition(ctx, alloc, testTask, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
			r.State, r.ManifestSHA256 = catalog.StateReady, f.digest()
			return nil
		})
		must.NoError(t, err)
	}
	return p.Finish(ctx, f.raw)
}

func TestPushRoundTrip(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	f := newFixture(t)
	g, secret := grant(dst, time.Minute)
	alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)

	got, err := w.push(t, src, dst, alloc, secret, f, true)
	must.NoError(t, err)
	must.Eq(t, len(f.files), got.Files)
	var total int64
	for _, d := range f.files {
		total += int64(len(d))
	}
	must.Eq(t, total, got.Bytes)
	f.assertHas(t, dirOf(t, dst.incoming(), alloc))
	must.Eq(t, int32(1), dst.pushes.Load())
}

// Every push the grant does not cover is refused before a byte is kept.
func TestPushRefused(t *testing.T) {
	w := newWorld(t)
	src, dst, other := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3"), w.node("other", "127.0.0.4")
	f := newFixture(t)

	cases := []struct {
		name string
		// setup returns the move's allocation, the pushing node and the
		// secret it presents.
		setup func() (string, *node, string)
		want  string
	}{{
		name: "no credential",
		setup: func() (string, *node, string) {
			g, _ := grant(dst, time.Minute)
			return w.move(t, src, catalog.StateCheckpointing, f, g, nil), src, ""
		},
		want: "401 Unauthorized",
	}, {
		name: "another move's credential",
		setup: func() (string, *node, string) {
			g1, _ := grant(dst, time.Minute)
			g2, secret2 := grant(dst, time.Minute)
			w.move(t, src, catalog.StateCheckpointing, f, g2, nil)
			return w.move(t, src, catalog.StateCheckpointing, f, g1, nil), src, secret2
		},
		want: "the credential is not the one granted for the push",
	}, {
		name: "granted to another node",
		setup: func() (string, *node, string) {
			g, secret := grant(other, time.Minute)
			return w.move(t, src, catalog.StateCheckpointing, f, g, nil), src, secret
		},
		want: "is granted to node other-id, this is dst-id",
	}, {
		name: "not from the source",
		setup: func() (string, *node, string) {
			g, secret := grant(dst, time.Minute)
			return w.move(t, src, catalog.StateCheckpointing, f, g, nil), other, secret
		},
		want: "the request comes from 127.0.0.4",
	}, {
		name: "expired",
		setup: func() (string, *node, string) {
			g, secret := grant(dst, -time.Second)
			return w.move(t, src, catalog.StateCheckpointing, f, g, nil), src, secret
		},
		want: "expired",
	}, {
		name: "no push granted",
		setup: func() (string, *node, string) {
			_, secret := grant(dst, time.Minute)
			return w.move(t, src, catalog.StateCheckpointing, f, nil, nil), src, secret
		},
		want: "no push of",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			alloc, from, secret := tc.setup()
			_, err := w.push(t, from, dst, alloc, secret, f, false)
			must.ErrorContains(t, err, tc.want)
			must.DirNotExists(t, dirOf(t, dst.incoming(), alloc))
		})
	}
	must.Eq(t, int32(0), dst.pushes.Load())
}

// The receiver checks the manifest against the digest the source recorded
// before reading it, then every file against the manifest; it keeps what
// it received, without a manifest, for a fetch to resume.
func TestPushVerified(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")

	t.Run("digest not recorded", func(t *testing.T) {
		f := newFixture(t)
		g, secret := grant(dst, time.Minute)
		alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
		_, err := w.push(t, src, dst, alloc, secret, f, false)
		must.ErrorContains(t, err, "is not the one the source recorded")
		assertNoManifest(t, dirOf(t, dst.incoming(), alloc))
	})
	t.Run("manifest differs from the record", func(t *testing.T) {
		f := newFixture(t)
		g, secret := grant(dst, time.Minute)
		alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
		tampered := *f
		tampered.raw = []byte(strings.Replace(string(f.raw), `"c1"`, `"c2"`, 1))
		ctx := testContext(t)
		p := transfer.StartPush(ctx, src.client, dst.addr, secret, alloc, testTask)
		must.NoError(t, p.Write("rootfs.tar", 0, f.files["rootfs.tar"]))
		_, err := w.cat.Transition(ctx, alloc, testTask, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
			r.State, r.ManifestSHA256 = catalog.StateReady, f.digest()
			return nil
		})
		must.NoError(t, err)
		_, err = p.Finish(ctx, tampered.raw)
		must.ErrorContains(t, err, "is not the one the source recorded")
		dir := dirOf(t, dst.incoming(), alloc)
		assertNoManifest(t, dir)
		must.FileExists(t, filepath.Join(dir, "rootfs.tar"))
	})
	t.Run("file differs from the manifest", func(t *testing.T) {
		f := newFixture(t)
		g, secret := grant(dst, time.Minute)
		alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
		bad := *f
		bad.files = map[string][]byte{}
		for p, d := range f.files {
			bad.files[p] = d
		}
		flipped := []byte(string(f.files["images/pages-1.img"]))
		flipped[len(flipped)/2] ^= 0xff
		bad.files["images/pages-1.img"] = flipped
		_, err := w.push(t, src, dst, alloc, secret, &bad, true)
		must.ErrorContains(t, err, "checkpoint file images/pages-1.img: blake3 mismatch")
		assertNoManifest(t, dirOf(t, dst.incoming(), alloc))
	})
	t.Run("file missing", func(t *testing.T) {
		f := newFixture(t)
		g, secret := grant(dst, time.Minute)
		alloc := w.move(t, src, catalog.StateCheckpointing, f, g, nil)
		short := *f
		short.files = map[string][]byte{"config.json": f.files["config.json"]}
		_, err := w.push(t, src, dst, alloc, secret, &short, true)
		must.ErrorContains(t, err, "listed in the manifest but not received")
	})
}

// A push cut short leaves its files; the fetch that follows resumes them
// with Range requests and downloads only the rest.
func TestFetchResumesCutPush(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	f := newFixture(t)
	pg, psecret := grant(dst, time.Minute)
	alloc := w.move(t, src, catalog.StateCheckpointing, f, pg, nil)
	f.write(t, dirOf(t, src.checkpoints(), alloc))

	ctx := testContext(t)
	p := transfer.StartPush(ctx, src.client, dst.addr, psecret, alloc, testTask)
	pages := f.files["images/pages-1.img"]
	for off := 0; off < 3<<20; off += 1 << 20 {
		must.NoError(t, p.Write("images/pages-1.img", int64(off), pages[off:off+1<<20]))
	}
	must.NoError(t, p.Write("config.json", 0, f.files["config.json"]))
	dir := dirOf(t, dst.incoming(), alloc)
	// Cut once part of it arrived.
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		fi, err := os.Stat(filepath.Join(dir, "images", "pages-1.img"))
		return err == nil && fi.Size() >= 1<<20
	}), wait.Timeout(10*time.Second), wait.Gap(5*time.Millisecond)))
	p.Abort(errors.New("source gave up"))
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool { return !dst.server.Receiving(dir) }),
		wait.Timeout(10*time.Second), wait.Gap(10*time.Millisecond)))
	assertNoManifest(t, dir)

	fg, fsecret := grant(dst, time.Minute)
	_, err := w.cat.Transition(ctx, alloc, testTask, []catalog.State{catalog.StateCheckpointing}, func(r *catalog.Record) error {
		r.State, r.ManifestSHA256, r.Fetch = catalog.StateRestoring, f.digest(), fg
		return nil
	})
	must.NoError(t, err)
	// What the push delivered stays, and only the rest is fetched.
	var total, kept int64
	for p, d := range f.files {
		total += int64(len(d))
		if fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(p))); err == nil {
			kept += fi.Size()
		}
	}
	must.Positive(t, kept)
	// A stray file a push left is no part of the checkpoint.
	must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "stray.img"), []byte("x"), 0o600))
	n, err := transfer.Fetch(ctx, dst.client, src.addr, fsecret, alloc, testTask, f.digest(), dir, testutil.Logger(t, hclog.Debug))
	must.NoError(t, err)
	must.Eq(t, total-kept, n)
	f.assertHas(t, dir)
	must.FileNotExists(t, filepath.Join(dir, "images", "stray.img"))
}

// A file a push left that does not match is fetched again whole.
func TestFetchReplacesWrongPartial(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	f := newFixture(t)
	fg, secret := grant(dst, time.Minute)
	alloc := w.move(t, src, catalog.StateRestoring, f, nil, fg)
	f.write(t, dirOf(t, src.checkpoints(), alloc))
	dir := dirOf(t, dst.incoming(), alloc)
	must.NoError(t, os.MkdirAll(filepath.Join(dir, "images"), 0o700))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "pages-1.img"), []byte("not the pages"), 0o600))

	_, err := transfer.Fetch(testContext(t), dst.client, src.addr, secret, alloc, testTask, f.digest(), dir, nil)
	must.NoError(t, err)
	f.assertHas(t, dir)
}

// Every fetch the grant does not cover is refused: without the move's
// credential, with another allocation's, from another node than the one
// granted, after the grant expired, before the destination claimed it,
// over plain HTTP, or without a client certificate.
func TestFetchRefused(t *testing.T) {
	w := newWorld(t)
	src, dst, other := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3"), w.node("other", "127.0.0.4")
	f := newFixture(t)
	ready := func(state catalog.State, g *catalog.Grant) string {
		alloc := w.move(t, src, state, f, nil, g)
		f.write(t, dirOf(t, src.checkpoints(), alloc))
		return alloc
	}
	cases := []struct {
		name  string
		setup func() (string, *node, string)
		want  string
	}{{
		name: "no credential",
		setup: func() (string, *node, string) {
			g, _ := grant(dst, time.Minute)
			return ready(catalog.StateRestoring, g), dst, ""
		},
		want: "401",
	}, {
		name: "another allocation's credential",
		setup: func() (string, *node, string) {
			g1, _ := grant(dst, time.Minute)
			g2, secret2 := grant(dst, time.Minute)
			ready(catalog.StateRestoring, g2)
			return ready(catalog.StateRestoring, g1), dst, secret2
		},
		want: "the credential is not the one granted for the fetch",
	}, {
		name: "another node",
		setup: func() (string, *node, string) {
			g, secret := grant(dst, time.Minute)
			return ready(catalog.StateRestoring, g), other, secret
		},
		want: "is granted to node dst-id (127.0.0.3), the request comes from 127.0.0.4",
	}, {
		name: "expired",
		setup: func() (string, *node, string) {
			g, secret := grant(dst, -time.Second)
			return ready(catalog.StateRestoring, g), dst, secret
		},
		want: "expired",
	}, {
		name: "not claimed",
		setup: func() (string, *node, string) {
			g, secret := grant(dst, time.Minute)
			return ready(catalog.StateReady, g), dst, secret
		},
		want: "is ready, a fetch needs it [restoring]",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			alloc, from, secret := tc.setup()
			if secret == "" {
				// Fetch never sends a request without one.
				resp := rawGet(t, from.client, "https://"+src.addr+"/v1/checkpoints/"+alloc+"/"+testTask+"/manifest.json", "")
				must.Eq(t, http.StatusUnauthorized, resp.StatusCode)
				return
			}
			dest := dirOf(t, from.incoming(), alloc)
			_, err := transfer.Fetch(testContext(t), from.client, src.addr, secret, alloc, testTask, f.digest(), dest, nil)
			must.ErrorContains(t, err, tc.want)
			must.DirNotExists(t, dest)
		})
	}

	g, secret := grant(dst, time.Minute)
	alloc := ready(catalog.StateRestoring, g)
	t.Run("plain HTTP", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "http://"+src.addr+"/v1/checkpoints/"+alloc+"/"+testTask+"/manifest.json", nil)
		must.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := http.DefaultClient.Do(req)
		must.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		must.Eq(t, http.StatusBadRequest, resp.StatusCode)
		must.StrContains(t, string(body), "HTTP request to an HTTPS server")
	})
	t.Run("no client certificate", func(t *testing.T) {
		conf := dst.clientTLS.Clone()
		conf.GetClientCertificate = nil
		_, err := transfer.Fetch(testContext(t), clientFrom(conf, dst.ip), src.addr, secret, alloc, testTask, f.digest(), t.TempDir()+"/x", nil)
		must.Error(t, err)
		must.StrContains(t, err.Error(), "certificate")
	})
	t.Run("certificate of another CA", func(t *testing.T) {
		foreign := testutil.NewCA(t)
		nc := foreign.Node(t, "dst", dst.ip)
		_, conf, err := transfer.TLS{CAFile: w.ca.File, CertFile: nc.CertFile, KeyFile: nc.KeyFile}.Configs()
		must.NoError(t, err)
		_, err = transfer.Fetch(testContext(t), clientFrom(conf, dst.ip), src.addr, secret, alloc, testTask, f.digest(), t.TempDir()+"/x", nil)
		must.Error(t, err)
	})
	t.Run("granted node", func(t *testing.T) {
		dest := dirOf(t, dst.incoming(), alloc)
		_, err := transfer.Fetch(testContext(t), dst.client, src.addr, secret, alloc, testTask, f.digest(), dest, nil)
		must.NoError(t, err)
		f.assertHas(t, dest)
	})
}

func rawGet(t testing.TB, c *http.Client, url, secret string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	must.NoError(t, err)
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := c.Do(req)
	must.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// The manifest is checked against the digest in the record before it is
// parsed; a file is checked against the manifest as it streams.
func TestFetchVerified(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	f := newFixture(t)

	g, secret := grant(dst, time.Minute)
	alloc := w.move(t, src, catalog.StateRestoring, f, nil, g)
	dir := dirOf(t, src.checkpoints(), alloc)
	f.write(t, dir)
	// A manifest that does not parse, and is not the recorded one.
	must.NoError(t, os.WriteFile(filepath.Join(dir, checkpoint.ManifestName), []byte("{not json"), 0o600))
	_, err := transfer.Fetch(testContext(t), dst.client, src.addr, secret, alloc, testTask, f.digest(), dirOf(t, dst.incoming(), alloc), nil)
	must.ErrorIs(t, err, transfer.ErrDigest)
	must.ErrorContains(t, err, "refusing the checkpoint")

	g, secret = grant(dst, time.Minute)
	alloc = w.move(t, src, catalog.StateRestoring, f, nil, g)
	dir = dirOf(t, src.checkpoints(), alloc)
	f.write(t, dir)
	pages := filepath.Join(dir, "images", "pages-1.img")
	data, err := os.ReadFile(pages)
	must.NoError(t, err)
	data[100] ^= 0xff
	must.NoError(t, os.WriteFile(pages, data, 0o600))
	dest := dirOf(t, dst.incoming(), alloc)
	_, err = transfer.Fetch(testContext(t), dst.client, src.addr, secret, alloc, testTask, f.digest(), dest, nil)
	must.ErrorContains(t, err, "checkpoint file images/pages-1.img: blake3 mismatch")
	assertNoManifest(t, dest)
}

// Only files the manifest lists are served, and no path leaves the
// checkpoint.
func TestServedPaths(t *testing.T) {
	w := newWorld(t)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	f := newFixture(t)
	g, secret := grant(dst, time.Minute)
	alloc := w.move(t, src, catalog.StateRestoring, f, nil, g)
	dir := dirOf(t, src.checkpoints(), alloc)
	f.write(t, dir)
	must.NoError(t, os.WriteFile(filepath.Join(dir, "images", "unlisted.img"), []byte("secret"), 0o600))
	must.NoError(t, os.WriteFile(filepath.Join(src.root, "outside"), []byte("secret"), 0o600))

	base := "https://" + src.addr + "/v1/checkpoints/" + alloc + "/" + testTask
	must.Eq(t, http.StatusOK, rawGet(t, dst.client, base+"/files/images/core-1.img", secret).StatusCode)
	for _, p := range []string{
		"/files/images/unlisted.img",
		"/files/..%2F..%2F..%2Foutside",
		"/files/images/..%2F..%2F..%2F..%2Foutside",
		"/files/%2Fetc%2Fpasswd",
	} {
		resp := rawGet(t, dst.client, base+p, secret)
		must.True(t, resp.StatusCode >= 400, must.Sprintf("%s: %s", p, resp.Status))
	}
	// Another task's or a malformed allocation's path.
	must.Eq(t, http.StatusBadRequest, rawGet(t, dst.client, "https://"+src.addr+"/v1/checkpoints/..%2F..%2Fx/"+testTask+"/manifest.json", secret).StatusCode)

	// Ranges are served.
	req, err := http.NewRequest(http.MethodGet, base+"/files/images/pages-1.img", nil)
	must.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := dst.client.Do(req)
	must.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	must.Eq(t, http.StatusPartialContent, resp.StatusCode)
	must.Eq(t, f.files["images/pages-1.img"][10:20], body)
}

// A renewed certificate is read again without a restart.
func TestTLSReloadsCertificate(t *testing.T) {
	ca := testutil.NewCA(t)
	nc := ca.Node(t, "n", "127.0.0.2")
	server, _, err := transfer.TLS{CAFile: ca.File, CertFile: nc.CertFile, KeyFile: nc.KeyFile}.Configs()
	must.NoError(t, err)
	first, err := server.GetCertificate(nil)
	must.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	ca.Node(t, "n", "127.0.0.2") // the same files, a new certificate
	now := time.Now().Add(time.Second)
	must.NoError(t, os.Chtimes(nc.CertFile, now, now))
	second, err := server.GetCertificate(nil)
	must.NoError(t, err)
	must.NotEq(t, fmt.Sprint(first.Certificate[0][:64]), fmt.Sprint(second.Certificate[0][:64]))

	_, _, err = transfer.TLS{CAFile: filepath.Join(t.TempDir(), "missing.pem"), CertFile: nc.CertFile, KeyFile: nc.KeyFile}.Configs()
	must.ErrorContains(t, err, "ca_file")
	_, _, err = transfer.TLS{CAFile: ca.File, CertFile: nc.KeyFile, KeyFile: nc.KeyFile}.Configs()
	must.ErrorContains(t, err, "cert_file")
}

// BenchmarkPush streams checkpoint files of 256 MiB from one node's driver
// to another's over loopback: how fast the push path (read, hash, encrypt;
// decrypt, write, hash) runs here.
func BenchmarkPush(b *testing.B) {
	w := newWorld(b)
	src, dst := w.node("src", "127.0.0.2"), w.node("dst", "127.0.0.3")
	f := newFixture(b)
	pages := make([]byte, 256<<20)
	_, _ = rand.Read(pages)
	f.files["images/pages-1.img"] = pages
	f.raw = manifestOf(b, f.files)
	b.SetBytes(int64(len(pages)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g, secret := grant(dst, time.Minute)
		alloc := w.move(b, src, catalog.StateCheckpointing, f, g, nil)
		if _, err := w.push(b, src, dst, alloc, secret, f, true); err != nil {
			b.Fatal(err)
		}
	}
}
