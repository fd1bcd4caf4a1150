package proxy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/proxy"
	"runhub/proxy/proxytest"
)

// TestAgentTextIsUTF8: a request of an agent that is not UTF-8
// (append_log, update, set_output) is refused with -32602 under its id and
// stores nothing, and the connection goes on; what an agent answers to a
// command reaches the client as valid UTF-8; a /ws command whose params are
// not UTF-8 is refused (-32602) before it reaches the agent.
func TestAgentTextIsUTF8(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialRaw(run)
	// The stream refuses these requests itself, without waiting for the
	// session's agent_connected entry to be committed (the agent is
	// connected a moment before): wait for it, so that the log below is
	// the refusals' doing alone.
	proxytest.WaitFor(t, "agent_connected on the log", func() bool { return len(e.logTypes(run)) == 1 })
	for i, req := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"append_log","params":{"seq":1,"entries":[{"type":"console","text":"caf` + "\xc3" + `"}]}}`,
		`{"jsonrpc":"2.0","id":2,"method":"append_log","params":{"entries":[{"type":"console","t` + "\xff" + `":1}]}}`,
		`{"jsonrpc":"2.0","id":3,"method":"update","params":{"state":{"k":"` + "\xed\xa0\x80" + `"}}}`,
		`{"jsonrpc":"2.0","id":4,"method":"update","params":{"stage":"` + "\xff" + `"}}`,
		`{"jsonrpc":"2.0","id":5,"method":"set_output","params":{"output":{"a":["` + "\xfe" + `"]}}}`,
	} {
		a.send(t, req)
		m := a.read(t)
		if e, _ := m["error"].(map[string]any); m["id"] != float64(i+1) || e == nil || e["code"] != float64(jsonrpc2.CodeInvalidParams) {
			t.Fatalf("request %d: answer %v, want -32602", i+1, m)
		}
	}
	if got := e.logTypes(run); len(got) != 1 || got[0] != "agent_connected" {
		t.Fatalf("log after refused requests: %v, want agent_connected alone", got)
	}
	// The connection goes on: a valid batch is stored.
	if m := a.append(t, 6, `{"seq":1,"entries":[{"type":"console","text":"café"}]}`); m["error"] != nil {
		t.Fatalf("valid batch after refusals: %v", m)
	}
	for _, path := range []string{e.runPath(run), e.runPath(run) + "/logs"} {
		if b := e.call("GET", path, "", http.StatusOK, nil); !utf8.Valid(b) {
			t.Fatalf("GET %s: %q is not UTF-8", path, b)
		}
	}

	// The agent answers a command with bytes that are not UTF-8.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := a.ws.Read(a.ctx)
			if err != nil {
				return
			}
			var req struct {
				ID     json.RawMessage `json:"id"`
				Method string          `json:"method"`
			}
			if json.Unmarshal(b, &req) != nil || req.Method != "cancel" {
				continue
			}
			a.ws.Write(a.ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":{"text":"ok `+"\xff\xfe"+`"}}`))
			return
		}
	}()
	b := e.call("POST", e.runPath(run)+"/command", `{"method":"cancel"}`, http.StatusOK, nil)
	<-done
	if !utf8.Valid(b) || !json.Valid(b) || !strings.Contains(string(b), "ok \uFFFD\"") {
		t.Fatalf("command response %q is not valid UTF-8 JSON with the replaced text", b)
	}

	// A /ws command whose params are not UTF-8 is refused before the agent.
	r, err := e.st.RunByID(context.Background(), run)
	if err != nil {
		t.Fatal(err)
	}
	if _, rerr := e.px.WSCommand(context.Background(), r, "user_message", json.RawMessage(`{"content":"`+"\xff"+`"}`)); rerr == nil || rerr.Code != jsonrpc2.CodeInvalidParams {
		t.Fatalf("/ws command with bytes that are not UTF-8: %v, want -32602", rerr)
	}
}
