package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServeLinkFlags: --public-url and --trusted-proxies (and their
// RUNHUB_* variables) are parsed and checked; a bad value is a usage error.
func TestServeLinkFlags(t *testing.T) {
	c, err := loadConfig([]string{"--public-url", "https://runhub.example.com/", "--trusted-proxies", "10.0.0.0/8,192.168.0.1",
		"--metrics-addr", "127.0.0.1:9090"})
	if err != nil {
		t.Fatal(err)
	}
	if c.publicURL != "https://runhub.example.com" || len(c.proxies) != 2 || c.proxies[1].String() != "192.168.0.1/32" || c.metricsAddr != "127.0.0.1:9090" {
		t.Errorf("config %+v", c)
	}
	t.Setenv("RUNHUB_PUBLIC_URL", "http://10.1.2.3:8080/runhub")
	t.Setenv("RUNHUB_TRUSTED_PROXIES", "::1")
	t.Setenv("RUNHUB_METRICS_ADDR", ":9100")
	if c, err := loadConfig(nil); err != nil || c.publicURL != "http://10.1.2.3:8080/runhub" || len(c.proxies) != 1 || c.metricsAddr != ":9100" {
		t.Errorf("from the environment: %+v %v", c, err)
	}
	for _, args := range [][]string{{"--public-url", "runhub.example.com"}, {"--public-url", "https://x.example/?a=1"},
		{"--trusted-proxies", "10.0.0.0/8,proxy.example"}} {
		var ue usageError
		if _, err := loadConfig(args); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

// TestServeMetricsAddrAndHostWarning: with --metrics-addr, /metrics is
// served there and the API port answers it 404; without --public-url the
// server warns once at start that links follow the request's Host.
func TestServeMetricsAddrAndHostWarning(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	metrics := freeAddr(t)
	srv := startServerArgs(t, t.TempDir(), "--metrics-addr", metrics)
	get := func(url string) (int, string) {
		t.Helper()
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, _ := get(srv.base + "/metrics"); code != 404 {
		t.Errorf("API port /metrics: %d, want 404", code)
	}
	if code, body := get("http://" + metrics + "/metrics"); code != 200 || !strings.Contains(body, "runhub_http_requests_total") {
		t.Errorf("metrics port: %d %.200s", code, body)
	}
	if n := strings.Count(srv.output(), "--public-url"); n != 1 {
		t.Errorf("%d warnings about --public-url, want 1:\n%s", n, srv.output())
	}
}

// startServerArgs is startServer with extra serve flags.
func startServerArgs(t *testing.T, dataDir string, args ...string) *server {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(runhubBinary(t), append([]string{"serve", "--addr", addr, "--data-dir", dataDir}, args...)...)
	s := &server{cmd: cmd, base: "http://" + addr, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Stderr = &lockedWriter{w: s.logs, mu: s.mu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if res, err := http.Get(s.base + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return s
			}
		}
	}
	t.Fatalf("server did not start; logs:\n%s", s.output())
	return nil
}
