package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/proxy"
	"runhub/proxy/proxytest"
	"runhub/store"
)

// cmdResult is the outcome of one POST .../command sent in the background.
type cmdResult struct {
	status int
	body   string
}

// postCommand sends a command body in the background.
func (e *pxEnv) postCommand(run, body string) <-chan cmdResult {
	ch := make(chan cmdResult, 1)
	go func() {
		req, _ := http.NewRequest("POST", e.srv.URL+e.runPath(run)+"/command", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e.key)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- cmdResult{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		ch <- cmdResult{status: res.StatusCode, body: string(b)}
	}()
	return ch
}

func waitResult(t *testing.T, what string, ch <-chan cmdResult) cmdResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
	return cmdResult{}
}

// queueAgent is a hand-driven agent whose requests are read in the
// background (a timed-out read would close the WebSocket), so that a test
// can also see that nothing arrives.
type queueAgent struct {
	*rawAgent
	reqs chan map[string]any
}

func (e *pxEnv) dialQueueAgent(run string) *queueAgent {
	e.t.Helper()
	a := &queueAgent{rawAgent: e.dialRaw(run), reqs: make(chan map[string]any, 16)}
	go func() {
		defer close(a.reqs)
		for {
			_, b, err := a.ws.Read(a.ctx)
			if err != nil {
				return
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			a.reqs <- m
		}
	}()
	return a
}

// next returns the agent's next request.
func (a *queueAgent) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case m, ok := <-a.reqs:
		if !ok {
			t.Fatal("the agent's connection ended")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("the agent got no request")
	}
	return nil
}

// wantRequest reads the agent's next request and wants method and, for a
// user message, content; it returns the request's id.
func (a *queueAgent) wantRequest(t *testing.T, method, content string) any {
	t.Helper()
	m := a.next(t)
	p, _ := m["params"].(map[string]any)
	if m["method"] != method || content != "" && p["content"] != content {
		t.Fatalf("the agent got %v, want %s %q", m, method, content)
	}
	return m["id"]
}

// answer replies to the agent's request id with result.
func (a *queueAgent) answer(t *testing.T, id any, result string) {
	t.Helper()
	idb, _ := json.Marshal(id)
	a.send(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":%s}`, idb, result))
}

// wantNothing fails if the agent gets a request within d.
func (a *queueAgent) wantNothing(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-a.reqs:
		t.Fatalf("the agent got %v, want nothing while it is busy", m)
	case <-time.After(d):
	}
}

func userMessage(id int, content string, steer bool) string {
	s := ""
	if steer {
		s = `,"steer":true`
	}
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"user_message","params":{"content":%q%s}}`, id, content, s)
}

// TestSteeringQueue: while the agent has not answered a user_message, the
// next ones (REST and /ws) are answered {"queued": true} at once with the
// request's id and are not written to the agent; steer: true is written
// at once; when the agent answers, the queued messages follow one at a
// time, in order; the queue is bounded (429).
func TestSteeringQueue(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialQueueAgent(run)

	first := e.postCommand(run, userMessage(1, "first", false))
	firstID := a.wantRequest(t, "user_message", "first")

	r := waitResult(t, "second", e.postCommand(run, userMessage(2, "second", false)))
	if r.status != http.StatusOK || r.body != `{"jsonrpc":"2.0","id":2,"result":{"queued":true}}` {
		t.Fatalf("a message to a busy agent: %d %s, want 200 queued", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := e.dialWS(ctx)
	msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":9,"method":"command","params":{"run_id":%q,"method":"user_message","params":{"content":"third"}}}`, run)
	if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(ctx); err != nil || !strings.Contains(string(b), `"id":9`) || !strings.Contains(string(b), `"result":{"queued":true}`) {
		t.Fatalf("/ws message to a busy agent: %s %v, want queued", b, err)
	}
	if n, _ := e.st.PendingUserMessages(ctx, run); n != 2 {
		t.Fatalf("%d messages in the store's queue, want 2", n)
	}
	a.wantNothing(t, 200*time.Millisecond)

	// steer goes at once, past the queue.
	steer := e.postCommand(run, userMessage(3, "now", true))
	steerID := a.wantRequest(t, "user_message", "now")
	a.answer(t, steerID, `{"steered":true}`)
	if r := waitResult(t, "steer", steer); r.status != http.StatusOK || !strings.Contains(r.body, `"result":{"steered":true}`) {
		t.Fatalf("steer: %d %s", r.status, r.body)
	}
	a.wantNothing(t, 100*time.Millisecond) // first is still unanswered

	a.answer(t, firstID, `{"stopReason":"end_turn"}`)
	if r := waitResult(t, "first", first); r.status != http.StatusOK || !strings.Contains(r.body, `"id":1,"result":{"stopReason":"end_turn"}`) {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	id := a.wantRequest(t, "user_message", "second")
	a.wantNothing(t, 100*time.Millisecond) // one at a time
	a.answer(t, id, `{}`)
	id = a.wantRequest(t, "user_message", "third")
	a.answer(t, id, `{}`)
	proxytest.WaitFor(t, "the queue to empty", func() bool { n, _ := e.st.PendingUserMessages(ctx, run); return n == 0 })
	// The agent's last answer is processed once the proxy counts it idle.
	proxytest.WaitFor(t, "the agent to be idle", func() bool { return e.px.Idle(run) })

	// Idle again: forwarded, its answer returned.
	idle := e.postCommand(run, userMessage(4, "idle", false))
	id = a.wantRequest(t, "user_message", "idle")
	a.answer(t, id, `{"ok":1}`)
	if r := waitResult(t, "idle", idle); !strings.Contains(r.body, `"result":{"ok":1}`) {
		t.Fatalf("a message to an idle agent: %d %s", r.status, r.body)
	}

	// The bound: store.MaxQueuedUserMessages wait, the next is 429.
	busy := e.postCommand(run, userMessage(5, "busy", false))
	busyID := a.wantRequest(t, "user_message", "busy")
	ref := store.RunRef{ProjectID: e.project, TaskID: e.task, RunID: run}
	for range store.MaxQueuedUserMessages {
		if _, err := e.st.EnqueueUserMessage(ctx, ref, json.RawMessage(`{"content":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	b := e.call("POST", e.runPath(run)+"/command", userMessage(6, "one too many", false), http.StatusTooManyRequests, nil)
	if strings.TrimSpace(string(b)) != `{"error":"Too many queued messages for this task run"}` {
		t.Fatalf("beyond the bound: %s", b)
	}
	a.answer(t, busyID, `{}`)
	waitResult(t, "busy", busy)
}

// TestSteerValidation: steer must be a boolean; the methods PostHog's
// clients send besides ours are accepted.
func TestSteerValidation(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	b := e.call("POST", e.runPath(run)+"/command", `{"method":"user_message","params":{"content":"x","steer":"yes"}}`, http.StatusBadRequest, nil)
	if !strings.Contains(string(b), `"attr":"params"`) {
		t.Fatalf("steer not a boolean: %s", b)
	}
	for _, m := range []string{"permission_response", "set_config_option", "mcp_response"} {
		// No agent: the method passed validation and met no sandbox.
		b := e.call("POST", e.runPath(run)+"/command", `{"method":"`+m+`","params":{}}`, http.StatusBadRequest, nil)
		if !strings.Contains(string(b), "No active sandbox for this task run") {
			t.Errorf("%s without agent: %s", m, b)
		}
	}
}

// TestNewMethodsRelayed: permission_response, set_config_option and
// mcp_response reach the agent with their params, and its answer comes
// back, through REST and /ws, also while the agent is busy with a turn.
func TestNewMethodsRelayed(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialQueueAgent(run)
	turn := e.postCommand(run, userMessage(1, "turn", false))
	turnID := a.wantRequest(t, "user_message", "turn")
	for i, m := range []string{"permission_response", "set_config_option", "mcp_response"} {
		params := fmt.Sprintf(`{"requestId":"r%d","outcome":"allow"}`, i)
		ch := e.postCommand(run, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`, 10+i, m, params))
		got := a.next(t)
		p, _ := json.Marshal(got["params"])
		if got["method"] != m || string(p) != `{"outcome":"allow","requestId":"r`+fmt.Sprint(i)+`"}` {
			t.Fatalf("the agent got %v, want %s %s", got, m, params)
		}
		a.answer(t, got["id"], `{"ack":"`+m+`"}`)
		if r := waitResult(t, m, ch); r.status != http.StatusOK || !strings.Contains(r.body, `"result":{"ack":"`+m+`"}`) {
			t.Fatalf("%s: %d %s", m, r.status, r.body)
		}
	}
	a.answer(t, turnID, `{}`)
	waitResult(t, "turn", turn)
}

// TestCommandToFinishedRun: a terminal run with no agent is 409 (REST)
// and -32015 (/ws), also when it has a sandbox URL; with its agent still
// connected, the command is relayed.
func TestCommandToFinishedRun(t *testing.T) {
	e := newPxEnv(t, proxy.Config{Sandboxes: mustSandboxClient(t, "sandbox.example")})
	run := e.newRun(`{"state":{"sandbox_url":"http://sandbox.example"}}`)
	e.call("PATCH", e.runPath(run), `{"status":"completed"}`, http.StatusOK, nil)
	b := e.call("POST", e.runPath(run)+"/command", userMessage(1, "late", false), http.StatusConflict, nil)
	if !strings.Contains(string(b), `{"error":"Task run is no longer active"}`) {
		t.Fatalf("terminal run: %s", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := e.dialWS(ctx)
	msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"command","params":{"run_id":%q,"method":"cancel"}}`, run)
	if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(ctx); err != nil || !strings.Contains(string(b), fmt.Sprint(proxy.CodeRunEnded)) {
		t.Fatalf("/ws terminal run: %s %v", b, err)
	}

	// An agent still connected to a finished run still gets commands.
	a := e.dialQueueAgent(run)
	ch := e.postCommand(run, `{"jsonrpc":"2.0","id":2,"method":"close"}`)
	a.answer(t, a.wantRequest(t, "close", ""), `{"closed":true}`)
	if r := waitResult(t, "close", ch); r.status != http.StatusOK {
		t.Fatalf("close to a finished run's agent: %d %s", r.status, r.body)
	}
}

// TestPermissionRequestReachesViewers: a permission_request the agent
// logs is delivered to a /ws viewer of the run.
func TestPermissionRequestReachesViewers(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := e.dialWS(ctx)
	sub := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run)
	if err := ws.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
		t.Fatal(err)
	}
	a := e.dialRaw(run)
	a.send(t, `{"jsonrpc":"2.0","id":1,"method":"append_log","params":{"entries":[{"type":"permission_request","requestId":"p1","toolCall":{"title":"rm -rf build"},"options":[{"optionId":"allow","kind":"allow_once"}]}]}}`)
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("no permission_request reached the viewer: %v", err)
		}
		if strings.Contains(string(b), `"type":"permission_request"`) && strings.Contains(string(b), `"requestId":"p1"`) {
			return
		}
	}
}
