package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/proxy"
)

// TestOneSetOfRules: an agent's update, set_output and append_log and a
// /ws command are refused by the same decoders as the REST bodies, with
// -32602 and the REST detail (a wrongly typed PATCH field is the agent's
// mistake, not an internal error its client would retry), and nothing is
// stored.
func TestOneSetOfRules(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialRaw(run)
	for i, c := range []struct{ method, params, msg string }{
		{"update", `{"status":1}`, "status: Not a valid string."},
		{"update", `{"output":[1]}`, `output: Expected a dictionary of items but got type "list".`},
		{"update", `[]`, "Invalid data. Expected a dictionary, but got list."},
		{"set_output", `{"output":[1]}`, "output must be a dictionary"},
		{"set_output", `{}`, "output must be a dictionary"},
		{"append_log", `{"entries":{"a":1}}`, `entries: Expected a list of items but got type "dict".`},
		{"append_log", `{"seq":1}`, "entries: This field is required."},
		{"append_log", `{"entries":[{"type":"x"}],"seq":"1"}`, "seq: Expected int64."},
	} {
		a.send(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`, i+1, c.method, c.params))
		m := a.read(t)
		rerr, _ := m["error"].(map[string]any)
		if m["id"] != float64(i+1) || rerr == nil || rerr["code"] != float64(-32602) || rerr["message"] != c.msg {
			t.Errorf("%s %s: %v, want -32602 %q", c.method, c.params, m, c.msg)
		}
	}
	if got := e.logTypes(run); len(got) != 1 || got[0] != "agent_connected" {
		t.Fatalf("log after refused requests: %v, want agent_connected alone", got)
	}

	// A command's params must be an object, on REST and on /ws alike.
	b := e.call("POST", e.runPath(run)+"/command", `{"method":"cancel","params":[1]}`, http.StatusBadRequest, nil)
	var body struct{ Attr, Detail string }
	if json.Unmarshal(b, &body) != nil || body.Attr != "params" || body.Detail != "params must be an object." {
		t.Fatalf("REST command with list params: %s", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws := e.dialWS(ctx)
	for i, c := range []struct{ method, params string }{
		{"cancel", `[1]`}, {"user_message", `{"content":""}`}, {"reboot", `{}`},
	} {
		msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"command","params":{"run_id":%q,"method":%q,"params":%s}}`, i+1, run, c.method, c.params)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rest := e.call("POST", e.runPath(run)+"/command", fmt.Sprintf(`{"method":%q,"params":%s}`, c.method, c.params), http.StatusBadRequest, nil)
		var m struct {
			Error *struct {
				Code    int
				Message string
			}
		}
		if json.Unmarshal(b, &m) != nil || m.Error == nil || m.Error.Code != -32602 || json.Unmarshal(rest, &body) != nil || m.Error.Message != body.Detail {
			t.Errorf("/ws %s %s: %s, want -32602 with REST's detail (%s)", c.method, c.params, b, rest)
		}
	}
}
