package rest

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"runhub/proxy"
	"runhub/proxy/tokens"
	"runhub/store"
)

// logBuffer is a slog JSON sink that handlers may write concurrently.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// authLines are the decoded "authentication failed" lines.
func (l *logBuffer) authLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		var m map[string]any
		if line == "" || json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["msg"] == "authentication failed" {
			out = append(out, m)
		}
	}
	return out
}

// TestAuthFailuresLogged: a refused key or token is logged at warn with the
// kind of credential, a runhub key's prefix and the peer, never the key or
// token itself; a flood of failures is cut to authLogPerSecond lines and
// the next line counts those left out.
func TestAuthFailuresLogged(t *testing.T) {
	logs := &logBuffer{}
	e := linkEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
		c.Stream = func(http.ResponseWriter, *http.Request, *store.Run) error { return nil }
	})
	f := e.fixture()
	unknown, unknownPrefix, _ := store.GenerateAPIKey()
	readPrefix := e.readKey[:len(unknownPrefix)]
	token := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA"

	wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/", Key: unknown}), 401)
	wantStatus(t, e.do(req{Method: "POST", Path: e.tasksPath(e.p1) + "/", Key: e.readKey, Body: map[string]any{"title": "x"}}), 403)
	wantStatus(t, e.do(req{Method: "GET", Path: f.path(e, "/stream") + "?token=" + token}), 401)
	wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/", Key: "not-a-runhub-key-" + unknown}), 401)

	lines := logs.authLines(t)
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), logs)
	}
	want := []map[string]any{
		{"level": "WARN", "status": 401.0, "code": "authentication_failed", "credential": "api_key", "key_prefix": unknownPrefix},
		{"level": "WARN", "status": 403.0, "code": "permission_denied", "credential": "api_key", "key_prefix": readPrefix},
		{"level": "WARN", "status": 401.0, "code": "authentication_failed", "credential": "token"},
		{"level": "WARN", "status": 401.0, "code": "authentication_failed", "credential": "malformed"},
	}
	for i, l := range lines {
		for k, v := range want[i] {
			if l[k] != v {
				t.Errorf("line %d: %s = %v, want %v", i, k, l[k], v)
			}
		}
		if p, _ := l["peer"].(string); !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("line %d: peer %q", i, p)
		}
		if _, ok := l["key_prefix"]; ok && i >= 2 {
			t.Errorf("line %d logs a prefix of a non-key: %v", i, l)
		}
	}
	for _, secret := range []string{unknown, e.readKey, token, unknown[len(unknownPrefix):]} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds a secret: %s", logs)
		}
	}

	// A flood.
	const flood = 200
	start := time.Now()
	for range flood {
		wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/", Key: unknown}), 401)
	}
	elapsed := time.Since(start)
	n := len(logs.authLines(t)) - 4
	if limit := authLogPerSecond + int(elapsed.Seconds()*authLogPerSecond) + 1; n > limit || n == 0 {
		t.Fatalf("%d lines for %d failures in %v, want at most %d", n, flood, elapsed, limit)
	}
}

// TestAuthLogLimiter: the limiter lets a burst of authLogPerSecond lines
// through, then refills at that rate, and the first line after a gap
// reports how many were left out.
func TestAuthLogLimiter(t *testing.T) {
	a := newAuthLog()
	t0 := time.Now()
	for i := range authLogPerSecond {
		if ok, sup := a.allow(t0); !ok || sup != 0 {
			t.Fatalf("line %d of the burst: %v %d", i, ok, sup)
		}
	}
	for range 25 {
		if ok, _ := a.allow(t0); ok {
			t.Fatal("a line beyond the burst was allowed")
		}
	}
	if ok, sup := a.allow(t0.Add(time.Second / authLogPerSecond)); !ok || sup != 25 {
		t.Fatalf("after a refill: %v, suppressed %d, want 25", ok, sup)
	}
	if ok, _ := a.allow(t0.Add(time.Second / authLogPerSecond)); ok {
		t.Fatal("the refill gave more than one line")
	}
}

// TestAgentAuthFailuresLogged: a refused agent token on /agent/connect
// goes to the same log as every other refused credential, with REST's
// codes (not_authenticated without a token, authentication_failed for one
// that does not verify), and the token itself is never written.
func TestAgentAuthFailuresLogged(t *testing.T) {
	logs := &logBuffer{}
	e := linkEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
		px, err := proxy.New(proxy.Config{Tokens: c.Tokens.(*tokens.Tokens), Runs: c.Runs, Store: c.Store})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(px.Close)
		c.Agent = px.ServeAgent
	})
	token := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA"
	for _, tc := range []struct {
		path, code string
	}{
		{"/agent/connect", "not_authenticated"},
		{"/agent/connect?token=" + token, "authentication_failed"},
	} {
		res := e.do(req{Method: "GET", Path: tc.path})
		wantStatus(t, res, http.StatusUnauthorized)
		var body struct{ Code string }
		json.Unmarshal(res.body, &body)
		if got := body.Code; got != tc.code {
			t.Errorf("%s: code %v, want %s", tc.path, got, tc.code)
		}
	}
	lines := logs.authLines(t)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), logs)
	}
	for i, want := range []string{"not_authenticated", "authentication_failed"} {
		if lines[i]["code"] != want || lines[i]["path"] != "/agent/connect" || lines[i]["status"] != 401.0 {
			t.Errorf("line %d: %v", i, lines[i])
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the log holds the token: %s", logs)
	}
}
