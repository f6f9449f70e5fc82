package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// shutdownTimeout bounds how long the agent's HTTP server waits for the
// requests in flight when it stops.
const shutdownTimeout = 5 * time.Second

// serveHTTP serves the agent's own routes (/metrics, /v1/status) on listen
// until ctx ends, then shuts the server down.
func serveHTTP(ctx context.Context, listen string, routes map[string]http.Handler, logger hclog.Logger) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	return serveOn(ctx, ln, routes, logger)
}

// serveOn is serveHTTP on a listener it takes over.
func serveOn(ctx context.Context, ln net.Listener, routes map[string]http.Handler, logger hclog.Logger) error {
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.Handle(pattern, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("serving HTTP", "listen", ln.Addr().String())

	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		return fmt.Errorf("serve HTTP: %w", err)
	}
}
