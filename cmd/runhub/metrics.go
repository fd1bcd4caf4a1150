package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
)

// serveMetrics serves /metrics on a listener of its own (--metrics-addr),
// so that the API port need not expose process internals and a scraper
// can be let in by the network alone. It returns the function that stops
// the server and waits for it.
func serveMetrics(srv *http.Server, addr string, log *slog.Logger) (func(), error) {
	return serveSide("metrics", srv, addr, log)
}

// serveSide runs an operator's side server (metrics, pprof) on addr. The
// returned stop shuts it down (closing it after shutdownTimeout) and waits
// for its goroutine, so nothing of it outlives serve.
func serveSide(name string, srv *http.Server, addr string, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listen: %w", name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(name+" server stopped", "err", err)
		}
	}()
	log.Info(name+" listening", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}, nil
}
