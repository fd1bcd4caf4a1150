package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"runhub/cmd/node/nodetest"
	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/teststore"
)

// env is one real server on a fresh store (teststore: the backend under
// test), with two projects and a set of keys:
//
//	writeKey  task:write on project p1
//	readKey   task:read on project p1
//	allKey    * on every project
//	otherKey  * on project p2 only
type env struct {
	t        *testing.T
	st       store.Store
	srv      *httptest.Server
	client   *http.Client
	p1, p2   int64
	writeKey string
	readKey  string
	allKey   string
	otherKey string
}

// newEnv builds an env; cfg, when not nil, adjusts the server config.
// quietRuns is the run service of a server whose tests follow no stream:
// it publishes nothing.
func quietRuns(t testing.TB, st store.Store) *runs.Service {
	t.Helper()
	svc, err := runs.New(runs.Config{Store: st, Publisher: runs.NoPublisher{}})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// withDeps sets the dependencies New requires that c lacks, real ones on
// c.Store (nodetest.New).
func withDeps(t testing.TB, c *Config) {
	t.Helper()
	if c.Runs == nil {
		c.Runs = quietRuns(t, c.Store)
	}
	tk, _ := c.Tokens.(*tokens.Tokens)
	d := nodetest.New(t, c.Store, c.Runs, tk)
	if c.Stream == nil {
		c.Stream = d.Stream
	}
	if c.Tokens == nil {
		c.Tokens = d.Tokens
	}
	if c.Commands == nil {
		c.Commands = d.Commands
	}
	if c.Signer == nil {
		c.Signer = d.Signer
	}
	if c.Blobs == nil {
		c.Blobs, c.Files = d.Files, d.Files
	}
}

func newEnv(t *testing.T, cfg func(*Config)) *env {
	t.Helper()
	ctx := context.Background()
	st := teststore.Open(t)
	// Tests that follow no stream publish nothing; those that do set Runs
	// with the hub's broker.
	c := Config{Store: st, Runs: quietRuns(t, st)}
	if cfg != nil {
		cfg(&c)
	}
	withDeps(t, &c)
	srv := httptest.NewServer(New(c))
	t.Cleanup(srv.Close)
	tr := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	e := &env{
		t: t, st: st, srv: srv,
		// Redirects are never followed: the contract forbids them, and a test
		// must see a 301 if one ever happens.
		client: &http.Client{Transport: tr, Timeout: 60 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	p1, err := st.CreateProject(ctx, "Alpha")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := st.CreateProject(ctx, "Beta")
	if err != nil {
		t.Fatal(err)
	}
	e.p1, e.p2 = p1.ID, p2.ID
	e.writeKey, _ = e.newKey([]string{store.ScopeWrite}, false, e.p1)
	e.readKey, _ = e.newKey([]string{store.ScopeRead}, false, e.p1)
	e.allKey, _ = e.newKey([]string{store.ScopeAll}, true)
	e.otherKey, _ = e.newKey([]string{store.ScopeAll}, false, e.p2)
	return e
}

// newKey creates an API key through the store and returns its secret and id.
func (e *env) newKey(scopes []string, all bool, projects ...int64) (string, int64) {
	e.t.Helper()
	secret, prefix, hash := store.GenerateAPIKey()
	k, err := e.st.CreateAPIKey(context.Background(), store.NewAPIKey{
		Label: "test", Prefix: prefix, Hash: hash, Scopes: scopes, AllProjects: all, Projects: projects})
	if err != nil {
		e.t.Fatalf("create key: %v", err)
	}
	return secret, k.ID
}

// resp is a fully read response.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r *resp) String() string {
	return fmt.Sprintf("HTTP %d %s", r.status, truncate(string(r.body), 600))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// req describes a request; Body may be a string or []byte (sent as is) or
// any other value (sent as JSON). Content-Type defaults to application/json
// when there is a body.
type req struct {
	Method  string
	Path    string
	Key     string
	Body    any
	Headers map[string]string
}

// do sends r and checks the invariants every response must keep: no
// redirect, no 5xx, no leak of internals, and the contract's error body
// shape.
func (e *env) do(r req) *resp {
	e.t.Helper()
	return doWith(e.t, e.client, e.srv.URL, r)
}

func doWith(t testing.TB, client *http.Client, base string, r req) *resp {
	t.Helper()
	var body io.Reader
	switch b := r.Body.(type) {
	case nil:
	case string:
		body = strings.NewReader(b)
	case []byte:
		body = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("marshal body: %v", err)
		}
		body = bytes.NewReader(j)
	}
	hr, err := http.NewRequest(r.Method, base+r.Path, body)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	if r.Body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if r.Key != "" {
		hr.Header.Set("Authorization", "Bearer "+r.Key)
	}
	for k, v := range r.Headers {
		if v == "" {
			hr.Header.Del(k)
		} else {
			hr.Header.Set(k, v)
		}
	}
	res, err := client.Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.Path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", r.Method, r.Path, err)
	}
	out := &resp{status: res.StatusCode, header: res.Header, body: b}
	checkInvariants(t, r, out)
	return out
}

// leakMarkers are strings no response body may contain: stack traces, Go
// source positions, SQL and driver messages.
var leakMarkers = []string{"goroutine ", "panic", ".go:", "runtime.", "SELECT ", "INSERT ", "UPDATE ", "sqlite", "SQLITE", "rh_"}

func checkInvariants(t testing.TB, r req, res *resp) {
	t.Helper()
	where := r.Method + " " + r.Path
	if res.status >= 300 && res.status < 400 {
		t.Errorf("%s: redirect %s (Location %q)", where, res, res.header.Get("Location"))
	}
	if res.status >= 500 {
		t.Errorf("%s: server error %s", where, res)
	}
	if res.status >= 400 {
		for _, m := range leakMarkers {
			if strings.Contains(string(res.body), m) {
				t.Errorf("%s: error body leaks %q: %s", where, m, res)
			}
		}
		checkErrorShape(t, where, res)
	}
}

// checkErrorShape checks an error body: either the standard
// {"type","code","detail","attr"} (attr present, string or null) with the
// type the contract gives the status, or {"error": "sentence"}.
func checkErrorShape(t testing.TB, where string, res *resp) {
	t.Helper()
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: error Content-Type %q, want application/json", where, ct)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &m); err != nil {
		t.Errorf("%s: error body is not a JSON object: %s", where, res)
		return
	}
	if raw, ok := m["error"]; ok {
		var s string
		if json.Unmarshal(raw, &s) != nil || s == "" {
			t.Errorf("%s: bad {\"error\"} body: %s", where, res)
		}
		// The event ingest's errors are PostHog's: they may also carry
		// last_accepted_seq (an integer) and, for a refused token, code.
		for k, v := range m {
			var n int64
			var c string
			switch {
			case k == "error":
			case k == "last_accepted_seq" && strings.Contains(where, "/event_stream") && json.Unmarshal(v, &n) == nil:
			case k == "code" && strings.Contains(where, "/event_stream") && json.Unmarshal(v, &c) == nil && c != "":
			default:
				t.Errorf("%s: bad {\"error\"} body (key %q): %s", where, k, res)
			}
		}
		return
	}
	for _, k := range []string{"type", "code", "detail", "attr"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: error body lacks %q: %s", where, k, res)
		}
	}
	if len(m) != 4 {
		t.Errorf("%s: error body has extra keys: %s", where, res)
	}
	var typ, code, detail string
	if json.Unmarshal(m["type"], &typ) != nil || json.Unmarshal(m["code"], &code) != nil || json.Unmarshal(m["detail"], &detail) != nil ||
		code == "" || detail == "" {
		t.Errorf("%s: type, code and detail must be non-empty strings: %s", where, res)
	}
	if a := string(m["attr"]); a != "null" && (len(a) < 2 || a[0] != '"') {
		t.Errorf("%s: attr must be a string or null: %s", where, res)
	}
	want := map[int]string{400: "validation_error", 401: "authentication_error", 403: "authentication_error",
		404: "invalid_request", 405: "invalid_request", 413: "invalid_request", 415: "invalid_request", 429: "throttled_error"}[res.status]
	if res.status >= 500 {
		want = "server_error"
	}
	if want != "" && typ != want {
		t.Errorf("%s: error type %q, want %q: %s", where, typ, want, res)
	}
}

// apiErr is a decoded standard error body.
type apiErr struct {
	Type   string  `json:"type"`
	Code   string  `json:"code"`
	Detail string  `json:"detail"`
	Attr   *string `json:"attr"`
}

// wantStatus fails the test when res does not have status.
func wantStatus(t testing.TB, res *resp, status int) {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d: %s", res.status, status, res)
	}
}

// wantAPIError checks status, type and attr ("" means null) of a standard
// error body and returns it.
func wantAPIError(t testing.TB, res *resp, status int, typ, attr string) apiErr {
	t.Helper()
	wantStatus(t, res, status)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &m); err != nil {
		t.Fatalf("error body is not JSON: %s", res)
	}
	if _, ok := m["attr"]; !ok {
		t.Fatalf("error body has no attr key: %s", res)
	}
	var e apiErr
	if err := json.Unmarshal(res.body, &e); err != nil {
		t.Fatalf("decode error body: %v: %s", err, res)
	}
	if e.Type != typ {
		t.Errorf("type %q, want %q: %s", e.Type, typ, res)
	}
	switch {
	case attr == "" && e.Attr != nil:
		t.Errorf("attr %q, want null: %s", *e.Attr, res)
	case attr != "" && (e.Attr == nil || *e.Attr != attr):
		t.Errorf("attr %v, want %q: %s", e.Attr, attr, res)
	}
	return e
}

// wantHandlerError checks a {"error": msg} body; a msg ending in "..."
// is a prefix.
func wantHandlerError(t testing.TB, res *resp, status int, msg string) string {
	t.Helper()
	wantStatus(t, res, status)
	var m map[string]string
	if err := json.Unmarshal(res.body, &m); err != nil || len(m) != 1 {
		t.Fatalf("want {\"error\": ...}, got %s", res)
	}
	got := m["error"]
	if p, ok := strings.CutSuffix(msg, "..."); ok {
		if !strings.HasPrefix(got, p) {
			t.Errorf("error %q, want prefix %q", got, p)
		}
	} else if got != msg {
		t.Errorf("error %q, want %q", got, msg)
	}
	return got
}

// obj decodes a JSON object body.
func obj(t testing.TB, res *resp) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(res.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, res)
	}
	return m
}

// envOn is an env on a store the test opened itself (tests of one
// backend's failures), with c's settings: one project, one write key that
// also reads.
func envOn(t *testing.T, st store.Store, c Config) *env {
	t.Helper()
	c.Store = st
	withDeps(t, &c)
	srv := httptest.NewServer(New(c))
	t.Cleanup(srv.Close)
	e := &env{t: t, st: st, srv: srv, client: &http.Client{Timeout: 30 * time.Second}}
	p, err := st.CreateProject(context.Background(), "own store")
	if err != nil {
		t.Fatal(err)
	}
	e.p1 = p.ID
	e.writeKey, _ = e.newKey([]string{store.ScopeWrite}, false, e.p1)
	e.readKey = e.writeKey
	return e
}

// unsigned drops the query (exp and sig) of a run object's log_url: the
// link is signed when each response is made, valid an hour from then, so
// two reads of an unchanged run differ there once a second has passed.
func unsigned(m map[string]any) map[string]any {
	if u, ok := m["log_url"].(string); ok {
		if i := strings.Index(u, "?"); i >= 0 {
			m["log_url"] = u[:i]
		}
	}
	return m
}

// sameReplay checks that a replayed mutation answers the original run
// object (but for log_url's signature).
func sameReplay(t testing.TB, replay, first *resp) {
	t.Helper()
	want, _ := json.Marshal(unsigned(obj(t, first)))
	wantJSON(t, unsigned(obj(t, replay)), string(want), "replayed response")
}

// list decodes a paginated list body.
type listPage struct {
	Count    int              `json:"count"`
	Next     *string          `json:"next"`
	Previous *string          `json:"previous"`
	Results  []map[string]any `json:"results"`
}

func decodeList(t testing.TB, res *resp) listPage {
	t.Helper()
	wantStatus(t, res, http.StatusOK)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &m); err != nil {
		t.Fatalf("list body: %v: %s", err, res)
	}
	for _, k := range []string{"count", "next", "previous", "results"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("list body lacks %q: %s", k, res)
		}
	}
	var p listPage
	if err := json.Unmarshal(res.body, &p); err != nil {
		t.Fatalf("list body: %v: %s", err, res)
	}
	return p
}

// Paths.

func (e *env) tasksPath(project int64) string { return fmt.Sprintf("/api/projects/%d/tasks", project) }

func (e *env) taskPath(project int64, task string) string {
	return e.tasksPath(project) + "/" + task
}

func (e *env) runsPath(project int64, task string) string { return e.taskPath(project, task) + "/runs" }

func (e *env) runPath(project int64, task, run string) string {
	return e.runsPath(project, task) + "/" + run
}

// fixture is a task with one run in project p1.
type fixture struct {
	task, run string
}

func (f fixture) path(e *env, suffix string) string { return e.runPath(e.p1, f.task, f.run) + suffix }

// createTask creates a task through the API and returns its body.
func (e *env) createTask(project int64, key string, body any) map[string]any {
	e.t.Helper()
	res := e.do(req{Method: "POST", Path: e.tasksPath(project) + "/", Key: key, Body: body})
	wantStatus(e.t, res, http.StatusCreated)
	return obj(e.t, res)
}

// createRun creates a run through the API and returns its body.
func (e *env) createRun(project int64, key, task string, body any) map[string]any {
	e.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	res := e.do(req{Method: "POST", Path: e.runsPath(project, task) + "/", Key: key, Body: body})
	wantStatus(e.t, res, http.StatusCreated)
	return obj(e.t, res)
}

// fixture creates a task and a run in p1.
func (e *env) fixture() fixture {
	e.t.Helper()
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "fixture"})
	run := e.createRun(e.p1, e.writeKey, task["id"].(string), nil)
	return fixture{task: task["id"].(string), run: run["id"].(string)}
}

// appendLog posts entries to append_log and checks the 200.
func (e *env) appendLog(f fixture, entries ...any) map[string]any {
	e.t.Helper()
	res := e.do(req{Method: "POST", Path: f.path(e, "/append_log/"), Key: e.writeKey, Body: map[string]any{"entries": entries}})
	wantStatus(e.t, res, http.StatusOK)
	return obj(e.t, res)
}

// sessionLogs fetches session_logs with a raw query string.
func (e *env) sessionLogs(f fixture, query string) (*resp, []map[string]any) {
	e.t.Helper()
	p := f.path(e, "/session_logs")
	if query != "" {
		p += "?" + query
	}
	res := e.do(req{Method: "GET", Path: p, Key: e.readKey})
	if res.status != http.StatusOK {
		return res, nil
	}
	var out []map[string]any
	if err := json.Unmarshal(res.body, &out); err != nil {
		e.t.Fatalf("session_logs body is not a JSON array: %v: %s", err, res)
	}
	if out == nil {
		e.t.Fatalf("session_logs body must be an array, got %s", res)
	}
	return res, out
}

// events returns every stored event of a run, in order.
func (e *env) events(run string) []store.Event {
	e.t.Helper()
	var out []store.Event
	after := int64(0)
	for {
		evs, err := e.st.Events(context.Background(), run, after, 5000)
		if err != nil {
			e.t.Fatalf("Events: %v", err)
		}
		if len(evs) == 0 {
			return out
		}
		out = append(out, evs...)
		after = evs[len(evs)-1].Seq
	}
}

// timeRE is the contract's timestamp format.
var timeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

func wantTime(t testing.TB, v any, what string) time.Time {
	t.Helper()
	s, ok := v.(string)
	if !ok || !timeRE.MatchString(s) {
		t.Fatalf("%s = %#v, want an RFC 3339 time with microseconds and Z", what, v)
	}
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return tm
}

// jsonEq compares two values by their JSON meaning.
func jsonEq(t testing.TB, got any, want string) bool {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(g, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatalf("bad want JSON %q: %v", want, err)
	}
	ga, _ := json.Marshal(a)
	gb, _ := json.Marshal(b)
	return bytes.Equal(ga, gb)
}

func wantJSON(t testing.TB, got any, want, what string) {
	t.Helper()
	if !jsonEq(t, got, want) {
		g, _ := json.Marshal(got)
		t.Errorf("%s = %s, want %s", what, g, want)
	}
}

// randomUUID is a well-formed id that names nothing.
const randomUUID = "0b5e4c1e-8f37-4a53-9d3a-6f1a2c0de001"

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// rawJSON embeds literal JSON text in a request body.
func rawJSON(s string) json.RawMessage { return json.RawMessage(s) }

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// drain reads and closes a response body.
func drain(res *http.Response) []byte {
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return b
}
