package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
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

// TestServeGracefulDrain: at SIGTERM /readyz turns 503 "draining" at once
// while the node still serves (--drain-delay), a request in flight (its
// body still arriving) completes, a stream WebSocket and a /ws connection
// are told to move (1012), and the process exits 0. A bad --shutdown-timeout is a usage
// error.
func TestServeGracefulDrain(t *testing.T) {
	for _, args := range [][]string{{"--shutdown-timeout", "0s"}, {"--shutdown-timeout", "soon"}, {"--drain-delay", "-1s"}} {
		var ue usageError
		if _, err := loadConfig(args); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	t.Setenv("RUNHUB_SHUTDOWN_TIMEOUT", "3s")
	if c, err := loadConfig(nil); err != nil || c.shutdownTO != 3*time.Second || c.drainDelay != 0 {
		t.Errorf("from the environment: %+v %v", c, err)
	}
	if c, err := loadConfig([]string{"--shutdown-timeout", "7s"}); err != nil || c.shutdownTO != 7*time.Second {
		t.Errorf("flag over the environment: %+v %v", c, err)
	}
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dataDir := t.TempDir()
	srv := startServerArgs(t, dataDir, "--drain-delay", "1s", "--shutdown-timeout", "20s")
	key := readKey(t, dataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := srv.base + "/api/projects/1"
	var task, run struct{ ID string }
	if code, err := do(ctx, key, "POST", api+"/tasks/", map[string]any{"title": "drain"}, &task); err != nil || code != 201 {
		t.Fatalf("create task: %d %v", code, err)
	}
	runURL := api + "/tasks/" + task.ID + "/runs/"
	if code, err := do(ctx, key, "POST", runURL, map[string]any{}, &run); err != nil || code != 201 {
		t.Fatalf("create run: %d %v", code, err)
	}
	runURL += run.ID + "/"

	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(runURL, "http")+"stream",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if _, _, err := ws.Read(ctx); err != nil { // the run's first event
		t.Fatal(err)
	}
	mux, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.base, "http")+"/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer mux.CloseNow()
	if err := mux.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":"`+run.ID+`"}}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := mux.Read(ctx); err != nil { // the reply
		t.Fatal(err)
	}

	// A slow request: its body arrives in two parts, the second one
	// during the drain.
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctx, "POST", runURL+"append_log/", pr)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	type result struct {
		code int
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			slow <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		slow <- result{code: res.StatusCode, body: string(b)}
	}()
	if _, err := io.WriteString(pw, `{"entries":[{"type":"console",`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the request is in the handler

	exited := make(chan error, 1)
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	readyz := func() (int, string) {
		res, err := http.Get(srv.base + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	var code int
	var body string
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if code, body = readyz(); code == http.StatusServiceUnavailable {
			break
		}
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"reason":"draining"`) {
		t.Fatalf("/readyz during the drain: %d %s, want 503 draining", code, body)
	}
	// The rest of the body, after the listener has closed.
	time.Sleep(1200 * time.Millisecond)
	if _, err := io.WriteString(pw, `"message":"in flight"}]}`); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if r := <-slow; r.err != nil || r.code != http.StatusCreated && r.code != http.StatusOK {
		t.Fatalf("the request in flight: %d %s %v, want it completed", r.code, r.body, r.err)
	}
	for name, c := range map[string]*websocket.Conn{"stream WebSocket": ws, "/ws": mux} {
		for {
			_, _, err := c.Read(ctx)
			if err == nil {
				continue // the run's events
			}
			if st := websocket.CloseStatus(err); st != websocket.StatusServiceRestart {
				t.Fatalf("%s ended with %v (status %d), want 1012", name, err, st)
			}
			break
		}
	}
	go func() { exited <- srv.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v; logs:\n%s", err, srv.output())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the server did not exit; logs:\n%s", srv.output())
	}
}

// TestServeTokenFlags: --token-audience and --token-issuer (and their
// RUNHUB_* variables) set the client tokens' aud and iss; by default they
// are runhub's audience and no issuer; an empty audience, the agent
// tokens' audience or text that is not UTF-8 is a usage error.
func TestServeTokenFlags(t *testing.T) {
	c, err := loadConfig(nil)
	if err != nil || c.tokenAudience != "runhub:sandbox_connection" || c.tokenIssuer != "" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = loadConfig([]string{"--token-audience", "posthog:sandbox_connection", "--token-issuer", "https://runhub.example.com"})
	if err != nil || c.tokenAudience != "posthog:sandbox_connection" || c.tokenIssuer != "https://runhub.example.com" {
		t.Errorf("flags: %+v %v", c, err)
	}
	t.Setenv("RUNHUB_TOKEN_AUDIENCE", "posthog:sandbox_connection")
	t.Setenv("RUNHUB_TOKEN_ISSUER", "runhub")
	if c, err := loadConfig(nil); err != nil || c.tokenAudience != "posthog:sandbox_connection" || c.tokenIssuer != "runhub" {
		t.Errorf("from the environment: %+v %v", c, err)
	}
	for _, args := range [][]string{{"--token-audience", ""}, {"--token-audience", "runhub:agent"},
		{"--token-audience", "a\xff"}, {"--token-issuer", "\xfe"}} {
		var ue usageError
		if _, err := loadConfig(args); !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
