package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

func TestServeOn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	routes := map[string]http.Handler{
		"/v1/status": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
	}
	done := make(chan error, 1)
	go func() { done <- serveOn(ctx, ln, routes, hclog.NewNullLogger()) }()

	base := "http://" + ln.Addr().String()
	resp, err := http.Get(base + "/v1/status")
	must.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	must.NoError(t, err)
	must.Eq(t, http.StatusOK, resp.StatusCode)
	must.Eq(t, "ok", string(body))

	// Only the routes given are served: no checkpoints.
	resp, err = http.Get(base + "/v1/checkpoints/alloc/task/manifest.json")
	must.NoError(t, err)
	_ = resp.Body.Close()
	must.Eq(t, http.StatusNotFound, resp.StatusCode)

	// The server stops, cleanly, when ctx ends.
	cancel()
	select {
	case err := <-done:
		must.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("serveOn did not return after ctx ended")
	}
}

func TestServeHTTPListenError(t *testing.T) {
	err := serveHTTP(context.Background(), "127.0.0.1:http-alt-nope", nil, hclog.NewNullLogger())
	must.ErrorContains(t, err, "listen 127.0.0.1:http-alt-nope")
}
