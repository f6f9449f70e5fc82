package transfer_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/ferry-nomad/ferry/driver/transfer"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

const (
	testToken = "s3cret-token"
	testAlloc = "8a1d2f3e-0000-4000-8000-000000000001"
	testTask  = "app"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	must.NoError(t, err)
	return b
}

// checkpoint is a checkpoint directory written by writeCheckpoint.
type checkpoint struct {
	dir      string
	files    map[string][]byte
	manifest []byte
}

// writeCheckpoint writes files and a manifest listing them (with fields
// besides "files", as the driver's manifest has) under
// CheckpointDir(root, alloc, task).
func writeCheckpoint(t *testing.T, root, alloc, task string, files map[string][]byte) *checkpoint {
	t.Helper()
	dir := transfer.CheckpointDir(root, alloc, task)
	type entry struct {
		Path   string `json:"path"`
		Size   int64  `json:"size"`
		SHA256 string `json:"sha256"`
		Mode   uint32 `json:"mode"`
	}
	var entries []entry
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		must.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must.NoError(t, os.WriteFile(p, data, 0o644))
		sum := sha256.Sum256(data)
		entries = append(entries, entry{Path: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Mode: 0o644})
	}
	manifest, err := json.MarshalIndent(map[string]any{
		"version":    1,
		"alloc_id":   alloc,
		"task":       task,
		"created_at": "2025-03-01T12:00:00Z",
		"criu":       map[string]any{"version": "4.0", "tcp_established": true},
		"files":      entries,
	}, "", "  ")
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(filepath.Join(dir, transfer.ManifestName), manifest, 0o644))
	return &checkpoint{dir: dir, files: files, manifest: manifest}
}

func sampleFiles(t *testing.T) map[string][]byte {
	return map[string][]byte{
		"images/pages-1.img":           randomBytes(t, 5<<20),
		"images/core-1.img":            randomBytes(t, 4096),
		"images/empty.img":             {},
		"images/sub/deep/fdinfo-2.img": randomBytes(t, 777),
		"rootfs.tar":                   randomBytes(t, 100<<10),
		"config.json":                  []byte(`{"ociVersion":"1.2.0"}`),
	}
}

// startServer serves root with testToken on a loopback httptest server,
// with the handler wrapped by wrap when given.
func startServer(t *testing.T, root string, wrap func(http.Handler) http.Handler) *httptest.Server {
	t.Helper()
	s := &transfer.Server{Root: root, Token: testToken, Logger: testutil.Logger(t, hclog.Off)}
	h := s.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func fetch(t *testing.T, ctx context.Context, srv *httptest.Server, token, dest string) (int64, error) {
	return transfer.Fetch(ctx, srv.Client(), srv.URL, token, testAlloc, testTask, dest, testutil.Logger(t, hclog.Off))
}

// assertNoManifest checks that dest holds no manifest and no partial file.
func assertNoManifest(t *testing.T, dest string) {
	t.Helper()
	_, err := os.Stat(filepath.Join(dest, transfer.ManifestName))
	must.ErrorIs(t, err, fs.ErrNotExist)
	assertNoPartials(t, dest)
}

func assertNoPartials(t *testing.T, dest string) {
	t.Helper()
	if _, err := os.Stat(dest); errors.Is(err, fs.ErrNotExist) {
		return
	}
	must.NoError(t, filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".ferry-partial-") {
			t.Errorf("partial file left behind: %s", p)
		}
		return nil
	}))
}

func TestFetchRoundTrip(t *testing.T) {
	root := t.TempDir()
	cp := writeCheckpoint(t, root, testAlloc, testTask, sampleFiles(t))
	// Another checkpoint under the same root is not fetched.
	writeCheckpoint(t, root, testAlloc, "sidecar", map[string][]byte{"other.img": []byte("x")})
	srv := startServer(t, root, nil)
	ctx := testContext(t)

	dest := filepath.Join(t.TempDir(), "node-2", "checkpoints", testAlloc, testTask)
	n, err := fetch(t, ctx, srv, testToken, dest)
	must.NoError(t, err)

	var want int64
	for _, data := range cp.files {
		want += int64(len(data))
	}
	want += int64(len(cp.manifest))
	must.Eq(t, want, n)

	fi, err := os.Stat(dest)
	must.NoError(t, err)
	must.Eq(t, fs.ModeDir|0o700, fi.Mode())
	got, err := os.ReadFile(filepath.Join(dest, transfer.ManifestName))
	must.NoError(t, err)
	must.Eq(t, cp.manifest, got, must.Sprint("the manifest is copied verbatim"))

	var seen []string
	must.NoError(t, filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		must.NoError(t, err)
		rel, err := filepath.Rel(dest, p)
		must.NoError(t, err)
		info, err := d.Info()
		must.NoError(t, err)
		switch {
		case d.IsDir():
			must.Eq(t, fs.ModeDir|0o700, info.Mode(), must.Sprintf("directory %s", rel))
		case rel == transfer.ManifestName:
			must.Eq(t, fs.FileMode(0o600), info.Mode())
		default:
			must.Eq(t, fs.FileMode(0o600), info.Mode(), must.Sprintf("file %s", rel))
			data, err := os.ReadFile(p)
			must.NoError(t, err)
			must.True(t, bytes.Equal(cp.files[filepath.ToSlash(rel)], data), must.Sprintf("content of %s", rel))
			seen = append(seen, filepath.ToSlash(rel))
		}
		return nil
	}))
	must.Eq(t, len(cp.files), len(seen))

	// Fetching again over a complete copy works and gives the same.
	n2, err := fetch(t, ctx, srv, testToken, dest)
	must.NoError(t, err)
	must.Eq(t, n, n2)
	assertNoPartials(t, dest)
}

func TestFetchNilClientAndBasePath(t *testing.T) {
	root := t.TempDir()
	cp := writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"a b/c%d.img": []byte("odd names")})
	// The server mounted under a path prefix, as behind a proxy.
	s := &transfer.Server{Root: root, Token: testToken, Logger: testutil.Logger(t, hclog.Off)}
	mux := http.NewServeMux()
	mux.Handle("/ferry/", http.StripPrefix("/ferry", s.Handler()))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	dest := t.TempDir()
	_, err := transfer.Fetch(testContext(t), nil, srv.URL+"/ferry/", testToken, testAlloc, testTask, dest, nil)
	must.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(dest, "a b", "c%d.img"))
	must.NoError(t, err)
	must.Eq(t, cp.files["a b/c%d.img"], data)
}

// rawGet sends path verbatim as the request target, so that no client
// cleans or re-encodes it, and returns the status and body.
func rawGet(t *testing.T, srv *httptest.Server, target string, header map[string]string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	must.NoError(t, err)
	defer conn.Close()
	must.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", target, srv.Listener.Addr())
	for k, v := range header {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("\r\n")
	_, err = io.WriteString(conn, req.String())
	must.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	must.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must.NoError(t, err)
	return resp.StatusCode, string(body)
}

func withToken(token string) map[string]string { return map[string]string{transfer.TokenHeader: token} }

func checkpointURL(rel string) string {
	return "/v1/checkpoints/" + testAlloc + "/" + testTask + "/" + rel
}

func TestToken(t *testing.T) {
	root := t.TempDir()
	writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"config.json": []byte("{}")})
	srv := startServer(t, root, nil)
	ctx := testContext(t)

	for _, target := range []string{checkpointURL("manifest.json"), checkpointURL("files/config.json"), "/v1/checkpoints/nope"} {
		code, _ := rawGet(t, srv, target, nil)
		must.Eq(t, http.StatusUnauthorized, code, must.Sprintf("no token: %s", target))
		code, _ = rawGet(t, srv, target, withToken("wrong"))
		must.Eq(t, http.StatusUnauthorized, code, must.Sprintf("wrong token: %s", target))
		code, _ = rawGet(t, srv, target, withToken(testToken+"x"))
		must.Eq(t, http.StatusUnauthorized, code, must.Sprintf("longer token: %s", target))
	}
	code, body := rawGet(t, srv, checkpointURL("files/config.json"), withToken(testToken))
	must.Eq(t, http.StatusOK, code)
	must.Eq(t, "{}", body)

	dest := filepath.Join(t.TempDir(), "dest")
	_, err := fetch(t, ctx, srv, "wrong", dest)
	must.ErrorContains(t, err, "token")
	must.ErrorIs(t, err, transfer.ErrUnauthorized)
	_, err = os.Stat(dest)
	must.ErrorIs(t, err, fs.ErrNotExist, must.Sprint("nothing is created when the token is refused"))

	_, err = fetch(t, ctx, srv, "", dest)
	must.ErrorContains(t, err, "token")

	// A server without a token refuses everything, also an empty token.
	open := httptest.NewServer((&transfer.Server{Root: root, Logger: testutil.Logger(t, hclog.Off)}).Handler())
	t.Cleanup(open.Close)
	code, _ = rawGet(t, open, checkpointURL("manifest.json"), nil)
	must.Eq(t, http.StatusUnauthorized, code)
	code, _ = rawGet(t, open, checkpointURL("manifest.json"), withToken(""))
	must.Eq(t, http.StatusUnauthorized, code)
}

func TestHealth(t *testing.T) {
	srv := startServer(t, t.TempDir(), nil)
	code, body := rawGet(t, srv, "/v1/health", nil)
	must.Eq(t, http.StatusOK, code)
	must.Eq(t, "ok", body)

	resp, err := srv.Client().Post(srv.URL+"/v1/health", "text/plain", nil)
	must.NoError(t, err)
	resp.Body.Close()
	must.Eq(t, http.StatusMethodNotAllowed, resp.StatusCode)

	code, _ = rawGet(t, srv, "/v1/other", nil)
	must.Eq(t, http.StatusNotFound, code)
}

func TestTraversalRefused(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "checkpoints")
	secret := []byte("secret outside the checkpoint root\n")
	must.NoError(t, os.WriteFile(filepath.Join(base, "secret"), secret, 0o644))
	must.NoError(t, os.MkdirAll(filepath.Join(base, "outside"), 0o755))
	must.NoError(t, os.WriteFile(filepath.Join(base, "outside", "file"), secret, 0o644))

	files := map[string][]byte{
		"config.json":        []byte("{}"),
		"images/pages-1.img": []byte("pages"),
		// Listed, but symlinks leading out of the checkpoint.
		"images/link.img": secret,
		"escdir/file":     secret,
	}
	cp := writeCheckpoint(t, root, testAlloc, testTask, files)
	must.NoError(t, os.Remove(filepath.Join(cp.dir, "images", "link.img")))
	must.NoError(t, os.Symlink(filepath.Join(base, "secret"), filepath.Join(cp.dir, "images", "link.img")))
	must.NoError(t, os.RemoveAll(filepath.Join(cp.dir, "escdir")))
	must.NoError(t, os.Symlink("../../../outside", filepath.Join(cp.dir, "escdir")))
	// A symlink staying inside the checkpoint is fine.
	writeCheckpoint(t, root, testAlloc, "inner", map[string][]byte{"real.img": []byte("real"), "alias.img": []byte("real")})
	innerDir := transfer.CheckpointDir(root, testAlloc, "inner")
	must.NoError(t, os.Remove(filepath.Join(innerDir, "alias.img")))
	must.NoError(t, os.Symlink("real.img", filepath.Join(innerDir, "alias.img")))

	srv := startServer(t, root, nil)
	prefix := "/v1/checkpoints/" + testAlloc + "/" + testTask
	for _, target := range []string{
		prefix + "/files/../../etc/passwd",
		prefix + "/files/../../../../../../etc/passwd",
		prefix + "/files/%2e%2e/%2e%2e/etc/passwd",
		prefix + "/files/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
		prefix + "/files/..%2f..%2f..%2f..%2fetc%2fpasswd",
		prefix + "/files/..%252f..%252fetc%252fpasswd",
		prefix + "/files/%2fetc%2fpasswd",
		prefix + "/files//etc/passwd",
		prefix + "/files/./config.json",
		prefix + "/files/images/../config.json",
		prefix + "/files/images/%2e%2e/config.json",
		prefix + "/files/..%5c..%5cetc%5cpasswd",
		prefix + "/files/config.json%00",
		prefix + "/files/",
		prefix + "/files",
		prefix + "/../../../secret",
		"/v1/checkpoints/../../etc/passwd",
		"/v1/checkpoints/%2e%2e/%2e%2e/etc/passwd",
		"/v1/checkpoints/" + testAlloc + "/../manifest.json",
		"/v1/checkpoints/" + testAlloc + "/%2e%2e/" + testAlloc + "/" + testTask + "/manifest.json",
		"/v1/checkpoints/%2e%2e/" + testAlloc + "/manifest.json",
		"/v1/checkpoints/" + testAlloc + "/" + testTask,
		"/v1/checkpoints/" + testAlloc + "/" + testTask + "/",
		"/v1/checkpoints/" + testAlloc + "/" + testTask + "/secret",
		prefix + "/files/images/link.img",
		prefix + "/files/escdir/file",
	} {
		code, body := rawGet(t, srv, target, withToken(testToken))
		must.True(t, code == http.StatusNotFound || code == http.StatusBadRequest,
			must.Sprintf("%s: status %d, body %q", target, code, body))
		must.StrNotContains(t, body, "secret outside")
		must.StrNotContains(t, body, "root:")
	}

	code, body := rawGet(t, srv, "/v1/checkpoints/"+testAlloc+"/inner/files/alias.img", withToken(testToken))
	must.Eq(t, http.StatusOK, code)
	must.Eq(t, "real", body)

	// Fetch fails on the escaping symlink rather than copying the secret.
	dest := t.TempDir()
	_, err := fetch(t, testContext(t), srv, testToken, dest)
	must.ErrorIs(t, err, transfer.ErrNotFound)
	assertNoManifest(t, dest)
}

func TestUnlistedFileNotServed(t *testing.T) {
	root := t.TempDir()
	cp := writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"config.json": []byte("{}")})
	must.NoError(t, os.WriteFile(filepath.Join(cp.dir, "unlisted.bin"), []byte("not in the manifest"), 0o644))
	must.NoError(t, os.MkdirAll(filepath.Join(cp.dir, "images"), 0o755))
	must.NoError(t, os.WriteFile(filepath.Join(cp.dir, "images", "stray.img"), []byte("stray"), 0o644))
	srv := startServer(t, root, nil)

	for _, rel := range []string{"files/unlisted.bin", "files/images/stray.img", "files/manifest.json", "files/images"} {
		code, body := rawGet(t, srv, checkpointURL(rel), withToken(testToken))
		must.Eq(t, http.StatusNotFound, code, must.Sprintf("%s: %q", rel, body))
	}
	code, _ := rawGet(t, srv, checkpointURL("files/config.json"), withToken(testToken))
	must.Eq(t, http.StatusOK, code)

	// A listed file that is not a regular file is not served either.
	must.NoError(t, os.Remove(filepath.Join(cp.dir, "config.json")))
	must.NoError(t, os.Mkdir(filepath.Join(cp.dir, "config.json"), 0o755))
	code, _ = rawGet(t, srv, checkpointURL("files/config.json"), withToken(testToken))
	must.Eq(t, http.StatusNotFound, code)
}

func TestMissingOrIncompleteCheckpoint(t *testing.T) {
	root := t.TempDir()
	srv := startServer(t, root, nil)
	ctx := testContext(t)

	code, _ := rawGet(t, srv, checkpointURL("manifest.json"), withToken(testToken))
	must.Eq(t, http.StatusNotFound, code)
	dest := filepath.Join(t.TempDir(), "dest")
	_, err := fetch(t, ctx, srv, testToken, dest)
	must.ErrorIs(t, err, transfer.ErrNotFound)
	must.ErrorContains(t, err, "manifest.json")

	// Files but no manifest yet: a checkpoint still being written.
	dir := transfer.CheckpointDir(root, testAlloc, testTask)
	must.NoError(t, os.MkdirAll(dir, 0o755))
	must.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644))
	code, _ = rawGet(t, srv, checkpointURL("manifest.json"), withToken(testToken))
	must.Eq(t, http.StatusNotFound, code)
	code, _ = rawGet(t, srv, checkpointURL("files/config.json"), withToken(testToken))
	must.Eq(t, http.StatusNotFound, code)
}

func TestHeadAndContentLength(t *testing.T) {
	root := t.TempDir()
	files := map[string][]byte{"rootfs.tar": randomBytes(t, 12345)}
	writeCheckpoint(t, root, testAlloc, testTask, files)
	srv := startServer(t, root, nil)

	req, err := http.NewRequest(http.MethodHead, srv.URL+checkpointURL("files/rootfs.tar"), nil)
	must.NoError(t, err)
	req.Header.Set(transfer.TokenHeader, testToken)
	resp, err := srv.Client().Do(req)
	must.NoError(t, err)
	resp.Body.Close()
	must.Eq(t, http.StatusOK, resp.StatusCode)
	must.Eq(t, int64(12345), resp.ContentLength)
	must.Eq(t, "application/octet-stream", resp.Header.Get("Content-Type"))
}

// corruptWriter flips the byte at offset flipAt of the body.
type corruptWriter struct {
	http.ResponseWriter
	off, flipAt int64
}

func (w *corruptWriter) Write(p []byte) (int, error) {
	if w.flipAt >= w.off && w.flipAt < w.off+int64(len(p)) {
		p = bytes.Clone(p)
		p[w.flipAt-w.off] ^= 0x01
	}
	w.off += int64(len(p))
	return w.ResponseWriter.Write(p)
}

// countRequests counts requests whose path ends in suffix.
type requestCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (c *requestCounter) add(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]int{}
	}
	c.counts[path]++
	return c.counts[path]
}

func (c *requestCounter) get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[path]
}

func TestCorruptedInTransit(t *testing.T) {
	root := t.TempDir()
	writeCheckpoint(t, root, testAlloc, testTask, sampleFiles(t))
	const victim = "images/pages-1.img"
	var counter requestCounter
	srv := startServer(t, root, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/files/"+victim) {
				counter.add(victim)
				w = &corruptWriter{ResponseWriter: w, flipAt: 3<<20 + 17}
			}
			next.ServeHTTP(w, r)
		})
	})

	dest := t.TempDir()
	// A manifest from an earlier fetch must not survive a failed one.
	must.NoError(t, os.WriteFile(filepath.Join(dest, transfer.ManifestName), []byte(`{"files":[]}`), 0o600))
	_, err := fetch(t, testContext(t), srv, testToken, dest)
	must.ErrorContains(t, err, victim)
	must.ErrorContains(t, err, "sha256 mismatch")
	var mismatch *transfer.MismatchError
	must.True(t, errors.As(err, &mismatch))
	must.Eq(t, victim, mismatch.Path)
	must.Eq(t, "sha256", mismatch.Kind)
	must.Eq(t, 1, counter.get(victim), must.Sprint("a mismatch is not retried"))
	assertNoManifest(t, dest)
	_, err = os.Stat(filepath.Join(dest, filepath.FromSlash(victim)))
	must.ErrorIs(t, err, fs.ErrNotExist, must.Sprint("the corrupt file is not kept"))
}

// rewriteManifest serves the manifest changed by edit.
func rewriteManifest(edit func(files []map[string]any)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/"+transfer.ManifestName) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var m map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			var files []map[string]any
			for _, f := range m["files"].([]any) {
				files = append(files, f.(map[string]any))
			}
			edit(files)
			m["files"] = files
			data, _ := json.Marshal(m)
			_, _ = w.Write(data)
		})
	}
}

func TestSizeMismatch(t *testing.T) {
	root := t.TempDir()
	writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"config.json": []byte(`{"a":1}`), "rootfs.tar": randomBytes(t, 1000)})
	srv := startServer(t, root, rewriteManifest(func(files []map[string]any) {
		for _, f := range files {
			if f["path"] == "rootfs.tar" {
				f["size"] = 999
			}
		}
	}))
	dest := t.TempDir()
	_, err := fetch(t, testContext(t), srv, testToken, dest)
	must.ErrorContains(t, err, "rootfs.tar")
	must.ErrorContains(t, err, "size mismatch")
	assertNoManifest(t, dest)
}

func TestInvalidManifestFromSource(t *testing.T) {
	root := t.TempDir()
	writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"config.json": []byte(`{}`)})
	for name, edit := range map[string]func([]map[string]any){
		"traversal": func(files []map[string]any) { files[0]["path"] = "../../escaped.json" },
		"absolute":  func(files []map[string]any) { files[0]["path"] = "/tmp/escaped.json" },
		"bad sha":   func(files []map[string]any) { files[0]["sha256"] = "xyz" },
		"itself":    func(files []map[string]any) { files[0]["path"] = "manifest.json" },
	} {
		t.Run(name, func(t *testing.T) {
			srv := startServer(t, root, rewriteManifest(edit))
			parent := t.TempDir()
			dest := filepath.Join(parent, "a", "b")
			_, err := fetch(t, testContext(t), srv, testToken, dest)
			must.ErrorContains(t, err, "invalid manifest")
			entries, err := os.ReadDir(parent)
			must.NoError(t, err)
			must.SliceEmpty(t, entries)
		})
	}
}

// abortWriter aborts the response (the connection is cut) after limit
// bytes of body.
type abortWriter struct {
	http.ResponseWriter
	limit, off int64
}

func (w *abortWriter) Write(p []byte) (int, error) {
	if w.off+int64(len(p)) > w.limit {
		n, _ := w.ResponseWriter.Write(p[:w.limit-w.off])
		w.off += int64(n)
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	w.off += int64(len(p))
	return w.ResponseWriter.Write(p)
}

func TestFetchRetriesNetworkErrors(t *testing.T) {
	root := t.TempDir()
	cp := writeCheckpoint(t, root, testAlloc, testTask, sampleFiles(t))
	const victim = "images/pages-1.img"
	var counter requestCounter
	srv := startServer(t, root, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/"+transfer.ManifestName):
				if counter.add(transfer.ManifestName) == 1 {
					http.Error(w, "busy", http.StatusServiceUnavailable)
					return
				}
			case strings.HasSuffix(r.URL.Path, "/files/"+victim):
				if counter.add(victim) == 1 {
					w = &abortWriter{ResponseWriter: w, limit: 1 << 20}
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	dest := t.TempDir()
	_, err := fetch(t, testContext(t), srv, testToken, dest)
	must.NoError(t, err)
	must.Eq(t, 2, counter.get(transfer.ManifestName))
	must.Eq(t, 2, counter.get(victim))
	data, err := os.ReadFile(filepath.Join(dest, filepath.FromSlash(victim)))
	must.NoError(t, err)
	must.True(t, bytes.Equal(cp.files[victim], data))
	assertNoPartials(t, dest)
}

func TestFetchGivesUpAfterRetries(t *testing.T) {
	root := t.TempDir()
	writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"rootfs.tar": randomBytes(t, 200<<10)})
	var counter requestCounter
	srv := startServer(t, root, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/files/rootfs.tar") {
				counter.add("rootfs.tar")
				w = &abortWriter{ResponseWriter: w, limit: 1000}
			}
			next.ServeHTTP(w, r)
		})
	})
	dest := t.TempDir()
	_, err := fetch(t, testContext(t), srv, testToken, dest)
	must.ErrorContains(t, err, "rootfs.tar")
	must.ErrorContains(t, err, "after 3 attempts")
	must.Eq(t, 3, counter.get("rootfs.tar"))
	assertNoManifest(t, dest)
}

func TestFetchBoundedByContext(t *testing.T) {
	root := t.TempDir()
	writeCheckpoint(t, root, testAlloc, testTask, map[string][]byte{"rootfs.tar": randomBytes(t, 64<<10)})
	var stalled atomic.Int32
	srv := startServer(t, root, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/files/rootfs.tar") {
				// Send the headers and some data, then stall.
				stalled.Add(1)
				w.Header().Set("Content-Length", fmt.Sprint(64<<10))
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write(make([]byte, 1000))
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	ctx, cancel := context.WithTimeout(testContext(t), 500*time.Millisecond)
	defer cancel()
	dest := t.TempDir()
	start := time.Now()
	_, err := fetch(t, ctx, srv, testToken, dest)
	must.ErrorIs(t, err, context.DeadlineExceeded)
	must.Less(t, 5*time.Second, time.Since(start))
	must.Eq(t, int32(1), stalled.Load(), must.Sprint("not retried once the context ended"))
	assertNoManifest(t, dest)
}

func TestFetchRejectsBadArguments(t *testing.T) {
	ctx := testContext(t)
	dest := t.TempDir()
	for name, args := range map[string][4]string{
		"alloc with slash": {"http://127.0.0.1:1", "a/b", testTask, dest},
		"dot-dot task":     {"http://127.0.0.1:1", testAlloc, "..", dest},
		"no scheme":        {"127.0.0.1:1", testAlloc, testTask, dest},
		"ftp":              {"ftp://127.0.0.1:1", testAlloc, testTask, dest},
		"no dest":          {"http://127.0.0.1:1", testAlloc, testTask, ""},
	} {
		_, err := transfer.Fetch(ctx, nil, args[0], testToken, args[1], args[2], args[3], nil)
		must.Error(t, err, must.Sprint(name))
	}
}

func TestCheckpointDir(t *testing.T) {
	must.Eq(t, "/var/lib/ferry/checkpoints/a1/web", transfer.CheckpointDir("/var/lib/ferry/checkpoints", "a1", "web"))
}
