package image

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-nomad/ferry/driver/testutil"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// newTestStore opens a store in a temporary directory (or cfg.Dir) whose
// registry requests are counted.
func newTestStore(t testing.TB, cfg StoreConfig) (*Store, *countingTransport) {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = testutil.Logger(t, hclog.Off)
	}
	s, err := NewStore(cfg)
	must.NoError(t, err)
	t.Cleanup(s.Close)
	ct := &countingTransport{next: remote.DefaultTransport}
	s.transport = ct
	s.pullGrace = cfg.GCDelay
	return s, ct
}

// countingTransport counts registry requests by kind and can cut blob
// downloads short.
type countingTransport struct {
	next     http.RoundTripper
	requests atomic.Int64
	truncate atomic.Bool // serve only half of every blob body
	mu       sync.Mutex
	blobGets map[string]int
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	isBlob := req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/")
	if isBlob {
		c.mu.Lock()
		if c.blobGets == nil {
			c.blobGets = map[string]int{}
		}
		c.blobGets[req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]]++
		c.mu.Unlock()
	}
	resp, err := c.next.RoundTrip(req)
	if err == nil && isBlob && c.truncate.Load() && resp.StatusCode == http.StatusOK && resp.ContentLength > 1 {
		half := resp.ContentLength / 2
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, half), resp.Body}
	}
	return resp, err
}

func (c *countingTransport) blobGetCount(digest string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blobGets[digest]
}

// progressRecorder collects progress lines.
type progressRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (p *progressRecorder) record(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, msg)
}

func (p *progressRecorder) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
