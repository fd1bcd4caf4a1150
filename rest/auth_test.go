package rest

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"runhub/proxy/tokens"
	"runhub/store"
)

// endpoint is one route of the API with a request that would succeed (or
// reach the handler) given the right key.
type endpoint struct {
	name   string
	method string
	path   string
	body   any
	scope  string // store.ScopeRead or store.ScopeWrite
}

// endpoints lists every project-scoped endpoint against fixture f.
func (e *env) endpoints(f fixture) []endpoint {
	tp := e.taskPath(e.p1, f.task)
	rp := f.path(e, "")
	return []endpoint{
		{"task list", "GET", e.tasksPath(e.p1), nil, store.ScopeRead},
		{"task create", "POST", e.tasksPath(e.p1), map[string]any{"title": "x"}, store.ScopeWrite},
		{"task get", "GET", tp, nil, store.ScopeRead},
		{"task patch", "PATCH", tp, map[string]any{"title": "y"}, store.ScopeWrite},
		{"task delete", "DELETE", tp, nil, store.ScopeWrite},
		{"task run", "POST", tp + "/run", nil, store.ScopeWrite},
		{"run list", "GET", e.runsPath(e.p1, f.task), nil, store.ScopeRead},
		{"run create", "POST", e.runsPath(e.p1, f.task), map[string]any{}, store.ScopeWrite},
		{"run get", "GET", rp, nil, store.ScopeRead},
		{"run patch", "PATCH", rp, map[string]any{"stage": "s"}, store.ScopeWrite},
		{"append_log", "POST", rp + "/append_log", map[string]any{"entries": []any{map[string]any{"a": 1}}}, store.ScopeWrite},
		{"logs", "GET", rp + "/logs", nil, store.ScopeRead},
		{"session_logs", "GET", rp + "/session_logs", nil, store.ScopeRead},
		{"set_output", "PATCH", rp + "/set_output", map[string]any{"output": map[string]any{"a": 1}}, store.ScopeWrite},
		{"artifacts", "POST", rp + "/artifacts", map[string]any{"artifacts": []any{}}, store.ScopeWrite},
		{"artifacts/presign", "POST", rp + "/artifacts/presign", map[string]any{"storage_path": "x"}, store.ScopeRead},
		{"command", "POST", rp + "/command", map[string]any{"jsonrpc": "2.0", "method": "cancel"}, store.ScopeWrite},
		{"connection_token", "GET", rp + "/connection_token", nil, store.ScopeRead},
		{"relay_message", "POST", rp + "/relay_message", map[string]any{"text": "hi"}, store.ScopeWrite},
		{"stream", "GET", rp + "/stream", nil, store.ScopeRead},
	}
}

func TestAuthNoKey(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	for _, ep := range e.endpoints(f) {
		t.Run(ep.name, func(t *testing.T) {
			res := e.do(req{Method: ep.method, Path: ep.path, Body: ep.body})
			er := wantAPIError(t, res, http.StatusUnauthorized, "authentication_error", "")
			if er.Code != "not_authenticated" {
				t.Errorf("code %q, want not_authenticated", er.Code)
			}
		})
	}
}

func TestAuthBadHeaders(t *testing.T) {
	e := newEnv(t, nil)
	for _, h := range []string{
		"Bearer rh_doesnotexist0000000000000000000000000000000",
		"Bearer ",
		"Bearer",
		"Basic dXNlcjpwYXNz",
		e.writeKey, // no scheme
		"Token " + e.writeKey,
	} {
		res := e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Headers: map[string]string{"Authorization": h}})
		wantAPIError(t, res, http.StatusUnauthorized, "authentication_error", "")
	}
	// The scheme is case-insensitive.
	res := e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Headers: map[string]string{"Authorization": "bearer " + e.writeKey}})
	wantStatus(t, res, http.StatusOK)
}

func TestAuthUnknownKey(t *testing.T) {
	e := newEnv(t, nil)
	secret, _, _ := store.GenerateAPIKey() // well-formed, never stored
	res := e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: secret})
	er := wantAPIError(t, res, http.StatusUnauthorized, "authentication_error", "")
	if er.Code != "authentication_failed" {
		t.Errorf("code %q", er.Code)
	}
}

func TestAuthRevokedKey(t *testing.T) {
	e := newEnv(t, nil)
	secret, id := e.newKey([]string{store.ScopeAll}, false, e.p1)
	wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: secret}), http.StatusOK)
	if err := e.st.RevokeAPIKey(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	// The node believes a key it verified for KeyCacheTTL: the contract
	// gives a revocation 5 s (TestKeyCacheRevocationWithinWindow).
	revoked := time.Now()
	res := e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: secret})
	for res.status == http.StatusOK && time.Since(revoked) < tokens.RevocationWindow {
		time.Sleep(20 * time.Millisecond)
		res = e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: secret})
	}
	wantAPIError(t, res, http.StatusUnauthorized, "authentication_error", "")
	res = e.do(req{Method: "POST", Path: e.tasksPath(e.p1), Key: secret, Body: map[string]any{"title": "x"}})
	wantAPIError(t, res, http.StatusUnauthorized, "authentication_error", "")
}

func TestReadKeyOnWriteEndpoints(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	before := len(e.events(f.run))
	for _, ep := range e.endpoints(f) {
		if ep.scope != store.ScopeWrite {
			continue
		}
		t.Run(ep.name, func(t *testing.T) {
			res := e.do(req{Method: ep.method, Path: ep.path, Key: e.readKey, Body: ep.body})
			er := wantAPIError(t, res, http.StatusForbidden, "authentication_error", "")
			if er.Detail != "API key missing required scope 'task:write'" {
				t.Errorf("detail %q", er.Detail)
			}
			if er.Code != "permission_denied" {
				t.Errorf("code %q", er.Code)
			}
		})
	}
	// Nothing changed: the task is still there, no event was stored.
	wantStatus(t, e.do(req{Method: "GET", Path: e.taskPath(e.p1, f.task), Key: e.readKey}), http.StatusOK)
	if after := len(e.events(f.run)); after != before {
		t.Errorf("events %d -> %d after refused writes", before, after)
	}
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.readKey})); p.Count != 1 {
		t.Errorf("task count %d after refused create", p.Count)
	}
}

func TestReadKeyOnReadEndpoints(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	for _, ep := range e.endpoints(f) {
		if ep.scope != store.ScopeRead || ep.name == "stream" { // an endless response, followed in tokens_test.go
			continue
		}
		t.Run(ep.name, func(t *testing.T) {
			res := e.do(req{Method: ep.method, Path: ep.path, Key: e.readKey, Body: ep.body})
			if ep.name == "artifacts/presign" {
				wantHandlerError(t, res, http.StatusNotFound, "Artifact not found on this run") // the run has none
			} else {
				wantStatus(t, res, http.StatusOK)
			}
		})
	}
}

// task:write implies task:read; "*" allows everything.
func TestWriteAndStarKeysCanRead(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	star, _ := e.newKey([]string{store.ScopeAll}, false, e.p1)
	for _, key := range []string{e.writeKey, star, e.allKey} {
		for _, p := range []string{e.tasksPath(e.p1), f.path(e, ""), f.path(e, "/session_logs")} {
			wantStatus(t, e.do(req{Method: "GET", Path: p, Key: key}), http.StatusOK)
		}
	}
	wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: star, Body: map[string]any{"stage": "x"}}), http.StatusOK)
}

func TestKeyOfAnotherProject(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	before := len(e.events(f.run))
	for _, ep := range e.endpoints(f) {
		t.Run(ep.name, func(t *testing.T) {
			res := e.do(req{Method: ep.method, Path: ep.path, Key: e.otherKey, Body: ep.body})
			er := wantAPIError(t, res, http.StatusForbidden, "authentication_error", "")
			if er.Code != "permission_denied" {
				t.Errorf("code %q", er.Code)
			}
		})
	}
	if after := len(e.events(f.run)); after != before {
		t.Errorf("events %d -> %d after refused requests", before, after)
	}
	// A project the key does not list, that does not even exist: 403 too.
	res := e.do(req{Method: "GET", Path: e.tasksPath(999), Key: e.writeKey})
	wantAPIError(t, res, http.StatusForbidden, "authentication_error", "")
}

// A task or run that exists in another project is 404, not 403, for a key
// that reaches both projects and for one that reaches only its own.
func TestResourceOfAnotherProject(t *testing.T) {
	e := newEnv(t, nil)
	own := e.fixture()
	foreignTask := e.createTask(e.p2, e.otherKey, map[string]any{"title": "theirs"})
	ftID := foreignTask["id"].(string)
	foreignRun := e.createRun(e.p2, e.otherKey, ftID, nil)
	frID := foreignRun["id"].(string)
	before := len(e.events(frID))

	for _, key := range []string{e.writeKey, e.allKey} {
		// The foreign task under p1's path.
		for _, r := range []req{
			{Method: "GET", Path: e.taskPath(e.p1, ftID)},
			{Method: "PATCH", Path: e.taskPath(e.p1, ftID), Body: map[string]any{"title": "hijack"}},
			{Method: "DELETE", Path: e.taskPath(e.p1, ftID)},
			{Method: "POST", Path: e.taskPath(e.p1, ftID) + "/run"},
			{Method: "GET", Path: e.runsPath(e.p1, ftID)},
			{Method: "POST", Path: e.runsPath(e.p1, ftID), Body: map[string]any{}},
			{Method: "GET", Path: e.runPath(e.p1, ftID, frID)},
			{Method: "PATCH", Path: e.runPath(e.p1, ftID, frID), Body: map[string]any{"stage": "x"}},
			{Method: "POST", Path: e.runPath(e.p1, ftID, frID) + "/append_log", Body: map[string]any{"entries": []any{map[string]any{}}}},
			{Method: "GET", Path: e.runPath(e.p1, ftID, frID) + "/logs"},
			{Method: "GET", Path: e.runPath(e.p1, ftID, frID) + "/session_logs"},
			{Method: "PATCH", Path: e.runPath(e.p1, ftID, frID) + "/set_output", Body: map[string]any{"output": map[string]any{}}},
			{Method: "GET", Path: e.runPath(e.p1, ftID, frID) + "/stream"},
			// The foreign run under p1's own task.
			{Method: "GET", Path: e.runPath(e.p1, own.task, frID)},
			{Method: "PATCH", Path: e.runPath(e.p1, own.task, frID), Body: map[string]any{"stage": "x"}},
			{Method: "POST", Path: e.runPath(e.p1, own.task, frID) + "/append_log", Body: map[string]any{"entries": []any{map[string]any{}}}},
			{Method: "PATCH", Path: e.runPath(e.p1, own.task, frID) + "/set_output", Body: map[string]any{"output": map[string]any{}}},
			{Method: "GET", Path: e.runPath(e.p1, own.task, frID) + "/logs"},
			{Method: "GET", Path: e.runPath(e.p1, own.task, frID) + "/connection_token"},
		} {
			r.Key = key
			wantAPIError(t, e.do(r), http.StatusNotFound, "invalid_request", "")
		}
	}
	// The owner still sees everything unchanged.
	res := e.do(req{Method: "GET", Path: e.taskPath(e.p2, ftID), Key: e.otherKey})
	wantStatus(t, res, http.StatusOK)
	if obj(t, res)["title"] != "theirs" {
		t.Errorf("foreign task changed: %s", res)
	}
	if after := len(e.events(frID)); after != before {
		t.Errorf("foreign run got events: %d -> %d", before, after)
	}
}

// A key for every project on a project that does not exist: 404.
func TestAllProjectsKeyUnknownProject(t *testing.T) {
	e := newEnv(t, nil)
	res := e.do(req{Method: "GET", Path: e.tasksPath(424242), Key: e.allKey})
	wantAPIError(t, res, http.StatusNotFound, "invalid_request", "")
	res = e.do(req{Method: "POST", Path: e.tasksPath(424242), Key: e.allKey, Body: map[string]any{"title": "x"}})
	wantAPIError(t, res, http.StatusNotFound, "invalid_request", "")
}

func TestMalformedProjectID(t *testing.T) {
	e := newEnv(t, nil)
	for _, p := range []string{"abc", "0", "-1", "1.5", "99999999999999999999999"} {
		res := e.do(req{Method: "GET", Path: "/api/projects/" + p + "/tasks", Key: e.allKey})
		wantAPIError(t, res, http.StatusNotFound, "invalid_request", "")
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RateLimit = &RateLimit{PerMinute: 2} })
	path := e.tasksPath(e.p1)
	for i := 0; i < 2; i++ {
		wantStatus(t, e.do(req{Method: "GET", Path: path, Key: e.writeKey}), http.StatusOK)
	}
	res := e.do(req{Method: "GET", Path: path, Key: e.writeKey})
	er := wantAPIError(t, res, http.StatusTooManyRequests, "throttled_error", "")
	if er.Code != "throttled" {
		t.Errorf("code %q", er.Code)
	}
	ra, err := strconv.Atoi(res.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q, want 1..60 seconds", res.header.Get("Retry-After"))
	}
	// Writes are throttled too, and store nothing.
	res = e.do(req{Method: "POST", Path: path, Key: e.writeKey, Body: map[string]any{"title": "x"}})
	wantAPIError(t, res, http.StatusTooManyRequests, "throttled_error", "")
	if res.header.Get("Retry-After") == "" {
		t.Error("no Retry-After on 429")
	}
	// The limit is per key: another key still gets through.
	wantStatus(t, e.do(req{Method: "GET", Path: path, Key: e.readKey}), http.StatusOK)
	if p := decodeList(t, e.do(req{Method: "GET", Path: path, Key: e.readKey})); p.Count != 0 {
		t.Errorf("a throttled create stored a task: count %d", p.Count)
	}
	// Requests without a valid key are 401, never 429.
	wantAPIError(t, e.do(req{Method: "GET", Path: path}), http.StatusUnauthorized, "authentication_error", "")
}

// Rate limiting is off by default.
func TestNoRateLimitByDefault(t *testing.T) {
	e := newEnv(t, nil)
	for i := 0; i < 50; i++ {
		wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.writeKey}), http.StatusOK)
	}
}
