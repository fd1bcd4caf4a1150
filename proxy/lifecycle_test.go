package proxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/proxy"
	"runhub/proxy/proxytest"
)

// runStatus reads the run's status through the API.
func (e *pxEnv) runStatus(run string) string {
	var r struct{ Status string }
	e.call("GET", e.runPath(run), "", http.StatusOK, &r)
	return r.Status
}

// TestCancelStopsTheAgent: cancel of a run whose (reference) agent is
// connected answers 202 with the run still live, asks the agent to stop
// (it ends its session), and the run becomes cancelled once the agent has
// left, after its agent_disconnected entry; cancel again is 200. A plain
// cancel command (a turn's interrupt) does not end the run.
func TestCancelStopsTheAgent(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun(`{"status":"in_progress"}`)
	_, done := e.startAgent(run)

	e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusOK, nil)
	if st := e.runStatus(run); st != "in_progress" {
		t.Fatalf("a turn's cancel command moved the run to %s", st)
	}
	// The internal stop request is no command a client can send.
	e.call("POST", e.runPath(run)+"/command", `{"method":"runhub/stop_run"}`, http.StatusBadRequest, nil)
	if !e.px.Connected(run) || e.runStatus(run) != "in_progress" {
		t.Fatal("a client's runhub/stop_run reached the agent")
	}

	var r struct{ Status string }
	e.call("POST", e.runPath(run)+"/cancel/", "", http.StatusAccepted, &r)
	if r.Status != "in_progress" {
		t.Errorf("202 body status %s, want the run as it was (in_progress)", r.Status)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not stop after cancel")
	}
	proxytest.WaitFor(t, "the run to be cancelled", func() bool { return e.runStatus(run) == "cancelled" })
	types := e.logTypes(run)
	if n := len(types); n < 2 || types[n-1] != "agent_disconnected" {
		t.Errorf("log %v, want agent_disconnected last", types)
	}
	e.call("POST", e.runPath(run)+"/cancel", "", http.StatusOK, &r)
	if r.Status != "cancelled" {
		t.Errorf("second cancel: status %s", r.Status)
	}
}

// TestCancelClosesAnAgentThatStays: an agent that answers cancel but
// never answers close and keeps its connection is closed by the node
// StopGrace later, and the run is recorded cancelled; an agent that
// finishes the run itself before it leaves keeps that status.
func TestCancelClosesAnAgentThatStays(t *testing.T) {
	const grace = 300 * time.Millisecond
	e := newPxEnv(t, proxy.Config{StopGrace: grace})

	// answer replies to every request the node sends until the
	// connection ends, and reports how it ended.
	answer := func(a *rawAgent, before func(), answerClose bool) <-chan websocket.StatusCode {
		end := make(chan websocket.StatusCode, 1)
		go func() {
			for {
				_, b, err := a.ws.Read(a.ctx)
				if err != nil {
					end <- websocket.CloseStatus(err)
					return
				}
				var m struct {
					ID     any
					Method string
				}
				if json.Unmarshal(b, &m) != nil || m.ID == nil {
					continue
				}
				if m.Method == "close" && before != nil {
					before()
				}
				if m.Method == "close" && !answerClose {
					continue
				}
				reply, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": map[string]bool{"ok": true}})
				if a.ws.Write(a.ctx, websocket.MessageText, reply) != nil {
					end <- -1
					return
				}
			}
		}()
		return end
	}

	run := e.newRun(`{"status":"in_progress"}`)
	a := e.dialRaw(run)
	end := answer(a, nil, false)
	start := time.Now()
	e.call("POST", e.runPath(run)+"/cancel", "", http.StatusAccepted, nil)

	select {
	case code := <-end:
		if code != websocket.StatusNormalClosure {
			t.Errorf("the node closed the agent with %v, want 1000", code)
		}
		if took := time.Since(start); took < grace {
			t.Errorf("closed after %v, before the grace of %v", took, grace)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the node did not close an agent that stayed after cancel")
	}
	proxytest.WaitFor(t, "the run to be cancelled", func() bool { return e.runStatus(run) == "cancelled" })

	// The agent completes the run before it goes: completed stays.
	run2 := e.newRun(`{"status":"in_progress"}`)
	b := e.dialRaw(run2)
	answer(b, func() {
		b.ws.Write(b.ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":"u","method":"update","params":{"status":"completed"}}`))
	}, true)
	e.call("POST", e.runPath(run2)+"/cancel", "", http.StatusAccepted, nil)
	proxytest.WaitFor(t, "the agent to be gone", func() bool { return !e.px.Connected(run2) })
	time.Sleep(300 * time.Millisecond) // the node records the end after the connection is gone
	if st := e.runStatus(run2); st != "completed" {
		t.Errorf("run completed by its agent before it left: status %s, want completed", st)
	}
	if !strings.Contains(strings.Join(e.logTypes(run2), ","), "agent_disconnected") {
		t.Errorf("no agent_disconnected in %v", e.logTypes(run2))
	}
}

// TestCancelSilentAgent: an agent that does not answer the stop request
// within the command timeout gives 504 and the run stays as it was (the
// request may be repeated).
func TestCancelSilentAgent(t *testing.T) {
	e := newPxEnv(t, proxy.Config{CommandTimeout: 300 * time.Millisecond})
	run := e.newRun(`{"status":"in_progress"}`)
	silent := e.dialRaw(run)
	go func() {
		for {
			if _, _, err := silent.ws.Read(silent.ctx); err != nil {
				return
			}
		}
	}()
	b := e.call("POST", e.runPath(run)+"/cancel", "", http.StatusGatewayTimeout, nil)
	if !strings.Contains(string(b), "Agent server request timed out") {
		t.Errorf("silent agent: %s", b)
	}
	if st := e.runStatus(run); st != "in_progress" {
		t.Errorf("run %s after an unanswered cancel, want in_progress", st)
	}
}

// TestCancelDoesNotWaitForClose: the 202 follows the agent's answer to
// cancel; close, which an agent may never answer, is not waited for. The
// agent leaving by itself later ends the run cancelled.
func TestCancelDoesNotWaitForClose(t *testing.T) {
	e := newPxEnv(t, proxy.Config{StopGrace: time.Minute})
	run := e.newRun(`{"status":"in_progress"}`)
	a := e.dialRaw(run)
	gotClose := make(chan struct{})
	var once sync.Once
	go func() {
		for {
			_, b, err := a.ws.Read(a.ctx)
			if err != nil {
				return
			}
			var m struct {
				ID     any
				Method string
			}
			if json.Unmarshal(b, &m) != nil {
				continue
			}
			if m.Method == "close" {
				once.Do(func() { close(gotClose) })
				continue // never answered
			}
			reply, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": map[string]bool{"cancelled": true}})
			a.ws.Write(a.ctx, websocket.MessageText, reply)
		}
	}()
	start := time.Now()
	e.call("POST", e.runPath(run)+"/cancel", "", http.StatusAccepted, nil)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("202 after %v: the request waited for the answer to close", took)
	}
	select {
	case <-gotClose:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent was not asked to close")
	}
	if st := e.runStatus(run); st != "in_progress" {
		t.Errorf("run %s while its agent is still connected, want in_progress", st)
	}
	a.ws.Close(websocket.StatusNormalClosure, "done")
	proxytest.WaitFor(t, "the run to be cancelled", func() bool { return e.runStatus(run) == "cancelled" })
}
