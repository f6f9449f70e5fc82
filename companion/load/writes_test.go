package load

import (
	"net/http"
	"strings"
	"sync"
)

// WriteCounter counts the writes (PUT requests) a Consul client sends, by
// kind: "kv", "session/create", "session/renew", "session/destroy". The
// publisher's tests and the load simulation (package load_test) count with
// it.
type WriteCounter struct {
	base http.RoundTripper
	mu   sync.Mutex
	n    map[string]int
}

// NewWriteCounter counts the writes sent through base.
func NewWriteCounter(base http.RoundTripper) *WriteCounter {
	return &WriteCounter{base: base, n: map[string]int{}}
}

func (c *WriteCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPut {
		kind, _ := strings.CutPrefix(req.URL.Path, "/v1/")
		if k, _, ok := strings.Cut(kind, "/"); ok && k == "kv" {
			kind = k
		} else if parts := strings.SplitN(kind, "/", 3); len(parts) >= 2 {
			kind = parts[0] + "/" + parts[1]
		}
		c.mu.Lock()
		c.n[kind]++
		c.mu.Unlock()
	}
	return c.base.RoundTrip(req)
}

// Take returns the counts so far and starts again from zero.
func (c *WriteCounter) Take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}
