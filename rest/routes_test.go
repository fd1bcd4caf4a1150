package rest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Every path works with and without its trailing slash, and nothing is ever
// answered with a redirect (do() fails the test on any 3xx).
func TestTrailingSlashOptional(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	for _, p := range []string{
		e.tasksPath(e.p1),
		e.taskPath(e.p1, f.task),
		e.runsPath(e.p1, f.task),
		f.path(e, ""),
		f.path(e, "/logs"),
		f.path(e, "/session_logs"),
		"/api/schema",
	} {
		for _, path := range []string{p, p + "/"} {
			res := e.do(req{Method: "GET", Path: path, Key: e.readKey})
			wantStatus(t, res, http.StatusOK)
		}
	}
	// /runs and /runs/ are the same list.
	a := decodeList(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, f.task), Key: e.readKey}))
	b := decodeList(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, f.task) + "/", Key: e.readKey}))
	if a.Count != 1 || b.Count != 1 || a.Results[0]["id"] != f.run || b.Results[0]["id"] != f.run {
		t.Errorf("/runs %+v vs /runs/ %+v", a, b)
	}
	// Writes too.
	for _, p := range []string{f.path(e, ""), f.path(e, "/")} {
		wantStatus(t, e.do(req{Method: "PATCH", Path: p, Key: e.writeKey, Body: map[string]any{"stage": "s"}}), http.StatusOK)
	}
	for _, p := range []string{f.path(e, "/append_log"), f.path(e, "/append_log/")} {
		wantStatus(t, e.do(req{Method: "POST", Path: p, Key: e.writeKey, Body: map[string]any{"entries": []any{map[string]any{}}}}), http.StatusOK)
	}
	for _, p := range []string{f.path(e, "/set_output"), f.path(e, "/set_output/")} {
		wantStatus(t, e.do(req{Method: "PATCH", Path: p, Key: e.writeKey, Body: map[string]any{"output": map[string]any{}}}), http.StatusOK)
	}
	for _, p := range []string{e.runsPath(e.p1, f.task), e.runsPath(e.p1, f.task) + "/"} {
		wantStatus(t, e.do(req{Method: "POST", Path: p, Key: e.writeKey, Body: map[string]any{}}), http.StatusCreated)
	}
	// Odd paths are 404, not redirects to a cleaned path.
	for _, p := range []string{
		e.tasksPath(e.p1) + "//",
		"/api/projects/1/./tasks",
		"/api/projects/1/tasks/../tasks",
		"/api//projects/1/tasks",
		e.runsPath(e.p1, f.task) + "//",
	} {
		res := e.do(req{Method: "GET", Path: p, Key: e.readKey})
		if res.status != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, res)
		}
	}
}

// A malformed UUID anywhere in the path is 404.
func TestMalformedUUIDInPath(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	bad := []string{"nope", "1234", "0b5e4c1e8f374a539d3a6f1a2c0de001", "0b5e4c1e-8f37-4a53-9d3a-6f1a2c0de00g",
		"0b5e4c1e-8f37-4a53-9d3a-6f1a2c0de0011", "{0b5e4c1e-8f37-4a53-9d3a-6f1a2c0de00}", "%27%3B--"}
	for _, b := range bad {
		for _, r := range []req{
			{Method: "GET", Path: e.taskPath(e.p1, b)},
			{Method: "PATCH", Path: e.taskPath(e.p1, b), Body: map[string]any{"title": "x"}},
			{Method: "DELETE", Path: e.taskPath(e.p1, b)},
			{Method: "POST", Path: e.taskPath(e.p1, b) + "/run"},
			{Method: "GET", Path: e.runsPath(e.p1, b)},
			{Method: "POST", Path: e.runsPath(e.p1, b), Body: map[string]any{}},
			{Method: "GET", Path: e.runPath(e.p1, b, f.run)},
			{Method: "GET", Path: e.runPath(e.p1, f.task, b)},
			{Method: "PATCH", Path: e.runPath(e.p1, f.task, b), Body: map[string]any{"stage": "x"}},
			{Method: "POST", Path: e.runPath(e.p1, f.task, b) + "/append_log", Body: map[string]any{"entries": []any{map[string]any{}}}},
			{Method: "GET", Path: e.runPath(e.p1, f.task, b) + "/logs"},
			{Method: "GET", Path: e.runPath(e.p1, f.task, b) + "/session_logs"},
			{Method: "PATCH", Path: e.runPath(e.p1, f.task, b) + "/set_output", Body: map[string]any{"output": map[string]any{}}},
			{Method: "POST", Path: e.runPath(e.p1, f.task, b) + "/command", Body: map[string]any{"method": "cancel"}},
			{Method: "GET", Path: e.runPath(e.p1, f.task, b) + "/stream"},
		} {
			r.Key = e.writeKey
			res := e.do(r)
			if res.status != http.StatusNotFound {
				t.Errorf("%s %s: %s, want 404", r.Method, r.Path, res)
			}
		}
	}
	// An upper-case UUID is the same id.
	res := e.do(req{Method: "GET", Path: e.runPath(e.p1, strings.ToUpper(f.task), strings.ToUpper(f.run)), Key: e.readKey})
	wantStatus(t, res, http.StatusOK)
	if obj(t, res)["id"] != f.run {
		t.Errorf("upper-case ids: %s", res)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	for _, r := range []req{
		{Method: "PUT", Path: e.tasksPath(e.p1)},
		{Method: "DELETE", Path: e.tasksPath(e.p1) + "/"},
		{Method: "POST", Path: e.taskPath(e.p1, f.task)},
		{Method: "PUT", Path: e.taskPath(e.p1, f.task)},
		{Method: "GET", Path: e.taskPath(e.p1, f.task) + "/run"},
		{Method: "DELETE", Path: e.runsPath(e.p1, f.task)},
		{Method: "DELETE", Path: f.path(e, "")},
		{Method: "POST", Path: f.path(e, "")},
		{Method: "PUT", Path: f.path(e, "/")},
		{Method: "GET", Path: f.path(e, "/append_log")},
		{Method: "PATCH", Path: f.path(e, "/append_log")},
		{Method: "POST", Path: f.path(e, "/logs")},
		{Method: "POST", Path: f.path(e, "/session_logs")},
		{Method: "POST", Path: f.path(e, "/set_output")},
		{Method: "GET", Path: f.path(e, "/set_output")},
		{Method: "GET", Path: f.path(e, "/artifacts")},
		{Method: "GET", Path: f.path(e, "/command")},
		{Method: "POST", Path: f.path(e, "/connection_token")},
		{Method: "POST", Path: "/healthz"},
		{Method: "DELETE", Path: "/metrics"},
	} {
		r.Key = e.writeKey
		res := e.do(r)
		er := wantAPIError(t, res, http.StatusMethodNotAllowed, "invalid_request", "")
		if er.Code != "method_not_allowed" {
			t.Errorf("%s %s: code %q", r.Method, r.Path, er.Code)
		}
	}
	// Unknown paths are 404 with the same body shape.
	for _, p := range []string{"/nope", "/api/projects/1/nothing", f.path(e, "/unknown"), "/api/projects/1/tasks/" + f.task + "/runs/" + f.run + "/logs/extra"} {
		res := e.do(req{Method: "GET", Path: p, Key: e.writeKey})
		wantAPIError(t, res, http.StatusNotFound, "invalid_request", "")
	}
}

func TestUnsupportedMediaType(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	before := len(e.events(f.run))
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", "garbage;;="} {
		for _, r := range []req{
			{Method: "POST", Path: e.tasksPath(e.p1), Body: `{"title":"x"}`},
			{Method: "PATCH", Path: e.taskPath(e.p1, f.task), Body: `{"title":"x"}`},
			{Method: "POST", Path: e.runsPath(e.p1, f.task), Body: `{}`},
			{Method: "PATCH", Path: f.path(e, ""), Body: `{"stage":"x"}`},
			{Method: "POST", Path: f.path(e, "/append_log"), Body: `{"entries":[{}]}`},
			{Method: "PATCH", Path: f.path(e, "/set_output"), Body: `{"output":{}}`},
		} {
			r.Key = e.writeKey
			r.Headers = map[string]string{"Content-Type": ct}
			res := e.do(r)
			er := wantAPIError(t, res, http.StatusUnsupportedMediaType, "invalid_request", "")
			if er.Code != "unsupported_media_type" {
				t.Errorf("code %q", er.Code)
			}
		}
	}
	if after := len(e.events(f.run)); after != before {
		t.Errorf("415 requests stored events: %d -> %d", before, after)
	}
	// No Content-Type at all is read as JSON.
	res := e.do(req{Method: "POST", Path: e.tasksPath(e.p1), Key: e.writeKey, Body: `{"title":"no ct"}`, Headers: map[string]string{"Content-Type": ""}})
	wantStatus(t, res, http.StatusCreated)
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxBodyBytes = 1024 })
	f := e.fixture()
	before := len(e.events(f.run))
	big := strings.Repeat("x", 4096)
	for _, r := range []req{
		{Method: "POST", Path: e.tasksPath(e.p1), Body: map[string]any{"title": "t", "description": big}},
		{Method: "PATCH", Path: e.taskPath(e.p1, f.task), Body: map[string]any{"description": big}},
		{Method: "POST", Path: e.runsPath(e.p1, f.task), Body: map[string]any{"state": map[string]any{"big": big}}},
		{Method: "PATCH", Path: f.path(e, ""), Body: map[string]any{"state": map[string]any{"big": big}}},
		{Method: "POST", Path: f.path(e, "/append_log"), Body: map[string]any{"entries": []any{map[string]any{"big": big}}}},
		{Method: "PATCH", Path: f.path(e, "/set_output"), Body: map[string]any{"output": map[string]any{"big": big}}},
		{Method: "POST", Path: e.taskPath(e.p1, f.task) + "/run", Body: map[string]any{"big": big}},
	} {
		r.Key = e.writeKey
		res := e.do(r)
		er := wantAPIError(t, res, http.StatusRequestEntityTooLarge, "invalid_request", "")
		if er.Code != "request_too_large" {
			t.Errorf("code %q", er.Code)
		}
	}
	if after := len(e.events(f.run)); after != before {
		t.Errorf("413 requests stored events: %d -> %d", before, after)
	}
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.readKey})); p.Count != 1 {
		t.Errorf("413 create stored a task: count %d", p.Count)
	}
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, f.task), Key: e.readKey})); p.Count != 1 {
		t.Errorf("413 run create/run stored a run: count %d", p.Count)
	}
	// Just under the limit is fine.
	res := e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey,
		Body: map[string]any{"entries": []any{map[string]any{"s": strings.Repeat("y", 900)}}}})
	wantStatus(t, res, http.StatusOK)
}

func TestOpsEndpoints(t *testing.T) {
	e := newEnv(t, nil)
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/api/schema"} {
		res := e.do(req{Method: "GET", Path: p})
		wantStatus(t, res, http.StatusOK)
	}
	// The metrics count requests.
	e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.readKey})
	res := e.do(req{Method: "GET", Path: "/metrics"})
	if !strings.Contains(string(res.body), "runhub_http_requests_total") {
		t.Errorf("/metrics lacks runhub_http_requests_total")
	}
	// Readiness follows the Ready hook: 503 while it fails.
	broken := newEnv(t, func(c *Config) {
		c.Ready = func(context.Context) error { return errors.New("broker down") }
	})
	hr, err := broken.client.Get(broken.srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != http.StatusServiceUnavailable || strings.Contains(string(body), "broker down") {
		t.Errorf("/readyz with a failing hook: %d %s", hr.StatusCode, body)
	}
	wantStatus(t, broken.do(req{Method: "GET", Path: "/healthz"}), http.StatusOK)
}
