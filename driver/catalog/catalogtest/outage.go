package catalogtest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Outage stands between a client and a real Consul agent and makes Consul
// unreachable on demand: while down, every request's connection is closed
// without an answer, as when the agent restarts or the network drops. It
// can also lose only the answer of one write, which Consul applied.
type Outage struct {
	// Addr is the address clients use instead of the agent's.
	Addr string

	mu         sync.Mutex
	down       bool
	loseAnswer string // a path prefix: the next write to it is applied, its answer lost
	refused    int
}

// NewOutage proxies to the Consul agent at addr ("127.0.0.1:PORT") until the
// test ends.
func NewOutage(t testing.TB, addr string) *Outage {
	t.Helper()
	o := &Outage{}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: addr})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		down := o.down
		lose := o.loseAnswer != "" && r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, o.loseAnswer)
		if lose {
			o.loseAnswer = ""
		}
		if down {
			o.refused++
		}
		o.mu.Unlock()
		if lose {
			// Consul applies the write; the client never hears of it.
			proxy.ServeHTTP(httptest.NewRecorder(), r)
		}
		if down || lose {
			hangUp(w)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	o.Addr = srv.Listener.Addr().String()
	return o
}

// Down makes Consul unreachable until Up.
func (o *Outage) Down() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.down = true
}

// Up ends the outage.
func (o *Outage) Up() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.down = false
}

// LoseAnswer makes the next PUT to a path under prefix (e.g. "/v1/txn")
// reach Consul, and its answer never reach the client.
func (o *Outage) LoseAnswer(prefix string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.loseAnswer = prefix
}

// Refused is how many requests met the outage.
func (o *Outage) Refused() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused
}

// hangUp closes the request's connection without an answer.
func hangUp(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("catalogtest: response writer cannot hijack")
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, as from a dead peer
	}
	_ = conn.Close()
}
