package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestSideServerStops: the pprof listener serves the profiles, and its
// stop function returns only once the server is gone (the listener closed,
// its goroutine ended): nothing of it outlives serve.
func TestSideServerStops(t *testing.T) {
	addr := freeAddr(t)
	stop, err := servePprof(addr, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	res, err := c.Get("http://" + addr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/pprof/: %d", res.StatusCode)
	}
	stop()
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("the pprof listener still accepts after stop returned")
	}
}
