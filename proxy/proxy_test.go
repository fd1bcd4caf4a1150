package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/cmd/node"
	"runhub/proxy"
	"runhub/proxy/agentclient"
	"runhub/proxy/proxytest"
	"runhub/store"
	"runhub/store/teststore"
)

// pxEnv is a whole runhub node: store, hub, proxy and the REST API.
type pxEnv struct {
	t       *testing.T
	srv     *httptest.Server
	st      store.Store
	px      *proxy.Proxy
	key     string
	project int64
	task    string
	open    func(testing.TB) store.Store // another handle on the database: another node
	dir     string                       // the node's data directory (its JWT key)
}

func newPxEnv(t *testing.T, cfg proxy.Config) *pxEnv {
	t.Helper()
	return newPxEnvWith(t, cfg, nil)
}

// newPxEnvWith is newPxEnv whose run service writes through wrap(store)
// (nil: the store itself).
func newPxEnvWith(t *testing.T, cfg proxy.Config, wrap func(store.Store) store.Store) *pxEnv {
	t.Helper()
	ctx := context.Background()
	open := teststore.OpenShared(t)
	st := open(t)
	dir := t.TempDir()
	n, err := node.New(ctx, node.Config{Store: st, DataDir: dir, Proxy: cfg, WrapWrites: wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() }) // after the server: disconnections are recorded before the store closes
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	px := n.Proxy()
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	e := &pxEnv{t: t, srv: srv, st: st, px: px, open: open, dir: dir}
	p, err := st.CreateProject(ctx, "proxy")
	if err != nil {
		t.Fatal(err)
	}
	e.project = p.ID
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Label: "t", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true}); err != nil {
		t.Fatal(err)
	}
	e.key = secret
	var task struct{ ID string }
	e.call("POST", fmt.Sprintf("/api/projects/%d/tasks/", e.project), `{"title":"t"}`, http.StatusCreated, &task)
	e.task = task.ID
	return e
}

// call sends an authenticated request, wants status and decodes into out.
func (e *pxEnv) call(method, path, body string, status int, out any) []byte {
	e.t.Helper()
	return proxytest.APICall(e.t, e.srv.URL, e.key, method, path, body, status, out)
}

func (e *pxEnv) runPath(run string) string {
	return fmt.Sprintf("/api/projects/%d/tasks/%s/runs/%s", e.project, e.task, run)
}

func (e *pxEnv) newRun(body string) string {
	var run struct{ ID string }
	e.call("POST", fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", e.project, e.task), body, http.StatusCreated, &run)
	return run.ID
}

// agentToken mints an agent token through endpoint 9.
func (e *pxEnv) agentToken(run string) (token, url string) {
	var tb struct {
		Token string `json:"token"`
		URL   string `json:"ws_url"`
	}
	e.call("GET", e.runPath(run)+"/connection_token?role=agent", "", http.StatusOK, &tb)
	return tb.Token, tb.URL
}

// startAgent runs the reference agent for run until the test ends.
func (e *pxEnv) startAgent(run string) (*agentclient.Agent, <-chan error) {
	tok, url := e.agentToken(run)
	a := agentclient.New(agentclient.Options{URL: url, Token: tok, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- a.Run(ctx); close(finished) }()
	e.t.Cleanup(func() { cancel(); <-finished })
	proxytest.WaitFor(e.t, "the agent to connect", func() bool { return e.px.Connected(run) })
	return a, done
}

// logTypes returns the event types of the run's stored log, in order.
func (e *pxEnv) logTypes(run string) []string {
	b := e.call("GET", e.runPath(run)+"/logs", "", http.StatusOK, nil)
	var types []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v struct {
			Type         string `json:"type"`
			Notification struct {
				Params struct {
					Update struct {
						SessionUpdate string `json:"sessionUpdate"`
					} `json:"update"`
				} `json:"params"`
			} `json:"notification"`
		}
		json.Unmarshal(sc.Bytes(), &v)
		t := v.Type
		if u := v.Notification.Params.Update.SessionUpdate; u != "" {
			t = u
		}
		types = append(types, t)
	}
	return types
}

// TestCommandsReachTheAgent: user_message, cancel and close each return
// the reference agent's JSON-RPC response, through REST and through /ws;
// the agent's answer is in the log between agent_connected and
// agent_disconnected; close ends the agent.
func TestCommandsReachTheAgent(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	_, done := e.startAgent(run)

	var r map[string]any
	e.call("POST", e.runPath(run)+"/command/", `{"jsonrpc":"2.0","id":7,"method":"user_message","params":{"content":"fix the bug"}}`, http.StatusOK, &r)
	res, _ := r["result"].(map[string]any)
	if r["jsonrpc"] != "2.0" || r["id"] != float64(7) || res["stopReason"] != "end_turn" || res["assistant_message"] != "You said: fix the bug" {
		t.Fatalf("user_message: %v", r)
	}
	e.call("POST", e.runPath(run)+"/command", `{"jsonrpc":"2.0","id":"c","method":"cancel"}`, http.StatusOK, &r)
	if r["id"] != "c" || r["result"].(map[string]any)["cancelled"] != true {
		t.Fatalf("cancel: %v", r)
	}

	// The same through /ws, with the API key on the connection.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws := e.dialWS(ctx)
	wsCall := func(id int, method, params string) map[string]any {
		msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"command","params":{"run_id":%q,"method":%q,"params":%s}}`, id, run, method, params)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		return m
	}
	if m := wsCall(1, "user_message", `{"content":"again"}`); m["result"].(map[string]any)["stopReason"] != "end_turn" {
		t.Fatalf("/ws user_message: %v", m)
	}
	if m := wsCall(2, "cancel", `{}`); m["result"].(map[string]any)["cancelled"] != true {
		t.Fatalf("/ws cancel: %v", m)
	}
	if m := wsCall(3, "close", `{}`); m["result"].(map[string]any)["closed"] != true {
		t.Fatalf("/ws close: %v", m)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent after close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit after close")
	}
	proxytest.WaitFor(t, "the proxy to drop the agent", func() bool { return !e.px.Connected(run) })
	proxytest.WaitFor(t, "agent_disconnected in the log", func() bool {
		ty := e.logTypes(run)
		return len(ty) > 0 && ty[len(ty)-1] == "agent_disconnected"
	})
	types := e.logTypes(run)
	want := []string{"agent_connected", "agent_message", "agent_message", "agent_disconnected"}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Errorf("log types %v, want %v", types, want)
	}
	// No agent now: a command is 400 with the contract's message.
	b := e.call("POST", e.runPath(run)+"/command", `{"jsonrpc":"2.0","method":"cancel"}`, http.StatusBadRequest, nil)
	if !strings.Contains(string(b), `"No active sandbox for this task run"`) {
		t.Errorf("no agent: %s", b)
	}
}

// rawAgent is a hand-driven agent connection for the failure cases.
type rawAgent struct {
	ws  *websocket.Conn
	ctx context.Context
}

// dialWS opens /ws with the API key, closed when the test ends.
func (e *pxEnv) dialWS(ctx context.Context) *websocket.Conn {
	e.t.Helper()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + e.key}}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func (e *pxEnv) dialRaw(run string) *rawAgent {
	e.t.Helper()
	tok, url := e.agentToken(run)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	e.t.Cleanup(cancel)
	ws, _, err := websocket.Dial(ctx, url+"?token="+tok, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ws.CloseNow() })
	ws.SetReadLimit(-1)
	proxytest.WaitFor(e.t, "the agent to connect", func() bool { return e.px.Connected(run) })
	return &rawAgent{ws: ws, ctx: ctx}
}

func (a *rawAgent) send(t *testing.T, s string) {
	t.Helper()
	if err := a.ws.Write(a.ctx, websocket.MessageText, []byte(s)); err != nil {
		t.Fatal(err)
	}
}

func (a *rawAgent) read(t *testing.T) map[string]any {
	t.Helper()
	_, b, err := a.ws.Read(a.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return m
}

// TestCommandFailures: an agent that dies during a call gives 502, one
// that never answers gives 504 after the (shortened) timeout; bad bodies
// are 400 with the attr.
func TestCommandFailures(t *testing.T) {
	e := newPxEnv(t, proxy.Config{CommandTimeout: 300 * time.Millisecond})
	run := e.newRun("")

	for body, attr := range map[string]string{
		`{"method":"reboot"}`:                               "method",
		`{"method":"user_message"}`:                         "params",
		`{"method":"user_message","params":{"content":""}}`: "params",
		`{"method":"cancel","params":[1]}`:                  "params",
		`{"jsonrpc":"1.0","method":"cancel"}`:               "jsonrpc",
	} {
		b := e.call("POST", e.runPath(run)+"/command", body, http.StatusBadRequest, nil)
		if !strings.Contains(string(b), `"attr":"`+attr+`"`) {
			t.Errorf("%s: %s, want attr %s", body, b, attr)
		}
	}

	// Never answers: 504.
	silent := e.dialRaw(run)
	go func() { // read (and ignore) what the hub sends
		for {
			if _, _, err := silent.ws.Read(silent.ctx); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	b := e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusGatewayTimeout, nil)
	if !strings.Contains(string(b), "Agent server request timed out") || time.Since(start) > 5*time.Second {
		t.Errorf("silent agent: %s after %v", b, time.Since(start))
	}
	silent.ws.CloseNow()
	proxytest.WaitFor(t, "the silent agent to go", func() bool { return !e.px.Connected(run) })

	// Dies mid-call: 502.
	dying := e.dialRaw(run)
	var got atomic.Bool
	go func() {
		_, b, err := dying.ws.Read(dying.ctx)
		if err == nil && bytes.Contains(b, []byte(`"cancel"`)) {
			got.Store(true)
		}
		dying.ws.CloseNow()
	}()
	b = e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusBadGateway, nil)
	if !strings.Contains(string(b), "Agent server is not reachable") || !got.Load() {
		t.Errorf("dying agent: %s (request reached it: %v)", b, got.Load())
	}
}

// TestAgentBatchSeqIdempotent: the connection is cut after the agent sent
// a batch and before it read the acknowledgement; after reconnecting it
// sends the batch again, which is acknowledged and stores nothing twice.
func TestAgentBatchSeqIdempotent(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialRaw(run)
	batch := `{"jsonrpc":"2.0","id":1,"method":"append_log","params":{"seq":1,"entries":[{"type":"console","n":1},{"type":"console","n":2}]}}`
	a.send(t, batch)
	proxytest.WaitFor(t, "the batch to be stored", func() bool { return strings.Count(strings.Join(e.logTypes(run), ","), "console") == 2 })
	a.ws.CloseNow() // the ack is never read
	proxytest.WaitFor(t, "the proxy to drop the agent", func() bool { return !e.px.Connected(run) })

	b := e.dialRaw(run)
	b.send(t, batch)
	m := b.read(t)
	res, _ := m["result"].(map[string]any)
	if res["replayed"] != true || res["last_accepted_seq"] != float64(1) {
		t.Fatalf("re-sent batch: %v", m)
	}
	b.send(t, `{"jsonrpc":"2.0","id":2,"method":"append_log","params":{"seq":2,"entries":[{"type":"console","n":3}]}}`)
	if m := b.read(t); m["result"].(map[string]any)["replayed"] != false || m["result"].(map[string]any)["last_accepted_seq"] != float64(2) {
		t.Fatalf("next batch: %v", m)
	}
	// The same seq with other entries is refused.
	b.send(t, `{"jsonrpc":"2.0","id":3,"method":"append_log","params":{"seq":2,"entries":[{"type":"console","n":4}]}}`)
	if m := b.read(t); m["error"] == nil || m["error"].(map[string]any)["code"] != float64(-32602) {
		t.Fatalf("seq reused: %v", m)
	}
	if n := strings.Count(strings.Join(e.logTypes(run), ","), "console"); n != 3 {
		t.Fatalf("%d console entries stored, want 3 (each once)", n)
	}
	// update and set_output work like PATCH and set_output.
	b.send(t, `{"jsonrpc":"2.0","id":4,"method":"update","params":{"status":"in_progress","stage":"build"}}`)
	if m := b.read(t); m["result"].(map[string]any)["status"] != "in_progress" {
		t.Fatalf("update: %v", m)
	}
	b.send(t, `{"jsonrpc":"2.0","id":5,"method":"update","params":{"status":"nope"}}`)
	if m := b.read(t); m["error"] == nil || m["error"].(map[string]any)["code"] != float64(-32602) {
		t.Fatalf("bad update: %v", m)
	}
	b.send(t, `{"jsonrpc":"2.0","id":6,"method":"set_output","params":{"output":{"pr_url":"https://x/1"}}}`)
	if m := b.read(t); m["result"] == nil {
		t.Fatalf("set_output: %v", m)
	}
	b.send(t, `{"jsonrpc":"2.0","id":7,"method":"reboot"}`)
	if m := b.read(t); m["error"].(map[string]any)["code"] != float64(-32601) {
		t.Fatalf("unknown method: %v", m)
	}
}

// TestNewerAgentReplacesOlder: a second connection for the run closes the
// first with 4009 and takes the commands.
func TestNewerAgentReplacesOlder(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	old := e.dialRaw(run)
	_, done := e.startAgent(run) // the reference agent connects second
	_, _, err := old.ws.Read(old.ctx)
	if websocket.CloseStatus(err) != 4009 {
		t.Fatalf("older connection: %v, want close 4009", err)
	}
	var r map[string]any
	e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusOK, &r)
	if r["result"].(map[string]any)["cancelled"] != true {
		t.Fatalf("cancel: %v", r)
	}
	select {
	case err := <-done:
		t.Fatalf("the newer agent ended: %v", err)
	default:
	}
}

// TestAgentTokenRefusals: /agent/connect takes only agent tokens of a live
// run: a client token, a missing or forged one are 401 (close 4001).
func TestAgentTokenRefusals(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	var ct struct {
		Token string `json:"token"`
	}
	e.call("GET", e.runPath(run)+"/connection_token", "", http.StatusOK, &ct)
	_, url := e.agentToken(run)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, tok := range map[string]string{"client token": ct.Token, "none": "", "garbage": "a.b.c"} {
		res, err := http.Get(strings.Replace(url, "ws", "http", 1) + "?token=" + tok)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s over HTTP: %d", name, res.StatusCode)
		}
		ws, _, err := websocket.Dial(ctx, url+"?token="+tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = ws.Read(ctx)
		if websocket.CloseStatus(err) != 4001 {
			t.Errorf("%s over WebSocket: %v, want 4001", name, err)
		}
		ws.CloseNow()
	}
}

// TestSandboxURLGuard: a run whose state.sandbox_url is not allow-listed
// is refused with 400 and no request is made; an allow-listed one gets
// the command with a fresh write token, and its answer comes back.
func TestSandboxURLGuard(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	var bodies []string
	sandbox := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got, bodies = append(got, r), append(bodies, string(b))
		mu.Unlock()
		var req jsonrpc2.Request
		json.Unmarshal(b, &req)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"cancelled":true}}`, req.ID.String())
	}))
	defer sandbox.Close()
	requests := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }

	sandboxPort := sandbox.Listener.Addr().(*net.TCPAddr).Port
	for name, allow := range map[string][]string{
		"no allow-list":              nil,
		"other host":                 {"sandbox.example.com"},
		"name of a loopback address": {fmt.Sprintf("localhost:%d", sandboxPort)},
		"bare host, other port":      {"127.0.0.1"},
		"host, another port":         {fmt.Sprintf("127.0.0.1:%d", sandboxPort+1)},
	} {
		cfg := proxy.Config{}
		if allow != nil {
			cfg.Sandboxes = mustSandboxClient(t, allow...)
		}
		e := newPxEnv(t, cfg)
		target := sandbox.URL
		if name == "name of a loopback address" {
			target = strings.Replace(sandbox.URL, "127.0.0.1", "localhost", 1)
		}
		run := e.newRun(fmt.Sprintf(`{"state":{"sandbox_url":%q}}`, target))
		b := e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusBadRequest, nil)
		if !strings.Contains(string(b), `"Invalid sandbox URL"`) {
			t.Errorf("%s: %s", name, b)
		}
		if n := requests(); n != 0 {
			t.Fatalf("%s: the sandbox got %d requests", name, n)
		}
	}

	e := newPxEnv(t, proxy.Config{Sandboxes: mustSandboxClient(t, fmt.Sprintf("127.0.0.1:%d", sandboxPort))})
	run := e.newRun(fmt.Sprintf(`{"state":{"sandbox_url":%q}}`, sandbox.URL+"/"))
	var r map[string]any
	e.call("POST", e.runPath(run)+"/command", `{"id":9,"method":"cancel"}`, http.StatusOK, &r)
	if r["id"] != float64(9) || r["result"].(map[string]any)["cancelled"] != true {
		t.Fatalf("forwarded command: %v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].URL.Path != "/command" || !strings.HasPrefix(got[0].Header.Get("Authorization"), "Bearer ") ||
		!strings.Contains(bodies[0], `"method":"cancel"`) {
		t.Fatalf("sandbox saw %d requests: %v %q", len(got), got, bodies)
	}
}

func mustSandboxClient(t *testing.T, allow ...string) *proxy.SandboxClient {
	t.Helper()
	c, err := proxy.NewSandboxClient(allow)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestProxyCloseSays1012: Proxy.Close (a draining node) closes an agent's
// connection with 1012 "service restart", which tells it to reconnect at
// once, rather than 1001.
func TestProxyCloseSays1012(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialRaw(run)
	closed := make(chan struct{})
	go func() { e.px.Close(); close(closed) }()
	_, _, err := a.ws.Read(a.ctx)
	<-closed
	if st := websocket.CloseStatus(err); st != websocket.StatusServiceRestart {
		t.Fatalf("agent connection ended with %v (status %d), want 1012", err, st)
	}
}

// TestDrainAnswersCommandsInFlight: a command written to the agent before
// its node drains gets the agent's answer, which the node waits for
// before it closes the connection with 1012; a command that arrives
// during the drain, on a single node where the agent can go nowhere else,
// is 502 at once and never written to the agent.
func TestDrainAnswersCommandsInFlight(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialRaw(run)
	first := make(chan string, 1)
	go func() { // not e.call: a goroutine must not end the test
		req, _ := http.NewRequest("POST", e.srv.URL+e.runPath(run)+"/command", strings.NewReader(`{"id":"c1","method":"cancel"}`))
		req.Header.Set("Authorization", "Bearer "+e.key)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		first <- fmt.Sprintf("%d %s", res.StatusCode, b)
	}()
	cmd := a.read(t)
	if cmd["method"] != "cancel" {
		t.Fatalf("the agent got %v", cmd)
	}
	closed := make(chan struct{})
	go func() { e.px.Close(); close(closed) }()
	time.Sleep(100 * time.Millisecond) // the drain has begun
	start := time.Now()
	b := e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusBadGateway, nil)
	if !strings.Contains(string(b), "Agent server is not reachable") || time.Since(start) > time.Second {
		t.Fatalf("a command during the drain: %s after %v", b, time.Since(start))
	}
	a.send(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%v,"result":{"cancelled":true}}`, cmd["id"]))
	select {
	case b := <-first:
		if !strings.HasPrefix(b, "200 ") || !strings.Contains(b, `"cancelled":true`) || !strings.Contains(b, `"id":"c1"`) {
			t.Fatalf("the command in flight: %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command in flight got no answer")
	}
	_, msg, err := a.ws.Read(a.ctx)
	if st := websocket.CloseStatus(err); st != websocket.StatusServiceRestart {
		t.Fatalf("after the answer the agent read %s, %v (status %d), want the 1012 close and nothing else", msg, err, st)
	}
	<-closed
}
