package hub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

type rpcMsg struct {
	ID     *int            `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code int `json:"code"`
	} `json:"error"`
}

func dialMux(t *testing.T, e *htEnv) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + e.key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func readMsg(t *testing.T, c *websocket.Conn) rpcMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := readJSONRPC(ctx, c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m rpcMsg
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

func send(t *testing.T, c *websocket.Conn, s string) {
	t.Helper()
	if err := c.Write(context.Background(), websocket.MessageText, []byte(s)); err != nil {
		t.Fatal(err)
	}
}

// TestWSMuxProtocol: replies and errors carry proper JSON-RPC codes, a
// malformed message does not end the connection, and the reply to
// subscribe precedes the subscription's events.
func TestWSMuxProtocol(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	c := dialMux(t, e)
	run := e.newRun()

	send(t, c, `{"jsonrpc":"2.0","id":1,"method":"nope","params":{}}`)
	if m := readMsg(t, c); m.Error == nil || m.Error.Code != -32601 {
		t.Fatalf("unknown method: %+v", m)
	}
	send(t, c, `{not json`)
	if m := readMsg(t, c); m.Error == nil || m.Error.Code != -32700 {
		t.Fatalf("malformed JSON: %+v", m)
	}
	send(t, c, `[{"jsonrpc":"2.0","id":2,"method":"subscribe"}]`)
	if m := readMsg(t, c); m.Error == nil || m.Error.Code != -32600 {
		t.Fatalf("batch: %+v", m)
	}
	send(t, c, `{"jsonrpc":"2.0","id":3,"method":"subscribe","params":{"run_id":"nope"}}`)
	if m := readMsg(t, c); m.Error == nil || m.Error.Code != -32602 {
		t.Fatalf("bad run_id: %+v", m)
	}
	send(t, c, `{"jsonrpc":"2.0","id":4,"method":"subscribe","params":{"run_id":"00000000-0000-4000-8000-000000000000"}}`)
	if m := readMsg(t, c); m.Error == nil || m.Error.Code != hub.CodeNotFound {
		t.Fatalf("unknown run: %+v", m)
	}
	send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":5,"method":"subscribe","params":{"run_id":%q}}`, run))
	m := readMsg(t, c)
	if m.ID == nil || *m.ID != 5 || m.Error != nil || !bytes.Contains(m.Result, []byte(`"last_seq":1`)) {
		t.Fatalf("subscribe reply: %+v %s", m, m.Result)
	}
	m = readMsg(t, c)
	if m.Method != "event" || !bytes.Contains(m.Params, []byte(`"seq":1`)) {
		t.Fatalf("first event: %+v %s", m, m.Params)
	}
}

// TestWSMuxManyRuns follows two runs on one connection: each run's events
// arrive exactly once and in order; the end of one run does not close the
// connection; unsubscribe stops a run's events.
func TestWSMuxManyRuns(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	c := dialMux(t, e)
	a, b := e.newRun(), e.newRun()
	for i, run := range []string{a, b} {
		send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"subscribe","params":{"run_id":%q,"after":"latest"}}`, i+1, run))
		// "latest" is resolved when the server handles the request: wait for
		// the reply before appending, so that the first append comes after it.
		if m := readMsg(t, c); m.ID == nil || *m.ID != i+1 || m.Error != nil {
			t.Fatalf("subscribe reply: %+v", m)
		}
	}
	const n = 20
	for i := 0; i < n; i++ {
		for _, run := range []string{a, b} {
			e.mustJSON("POST", e.runPath(run)+"/append_log/", fmt.Sprintf(`{"entries":[{"type":"x","i":%d}]}`, i), http.StatusOK, nil)
		}
	}
	e.mustJSON("PATCH", e.runPath(a)+"/", `{"status":"completed"}`, http.StatusOK, nil)
	next := map[string]int64{a: 2, b: 2}
	ended := false
	for got := 0; got < 2*n+1 || !ended; {
		m := readMsg(t, c)
		switch m.Method {
		case "":
			continue // subscribe replies
		case "event":
			var p struct {
				RunID string `json:"run_id"`
				Seq   int64  `json:"seq"`
			}
			json.Unmarshal(m.Params, &p)
			if p.Seq != next[p.RunID] {
				t.Fatalf("run %s: seq %d, want %d", p.RunID, p.Seq, next[p.RunID])
			}
			next[p.RunID]++
			got++
		case "stream_end":
			if !bytes.Contains(m.Params, []byte(a)) || !bytes.Contains(m.Params, []byte(`"completed"`)) {
				t.Fatalf("stream_end: %s", m.Params)
			}
			ended = true
		}
	}
	send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":9,"method":"unsubscribe","params":{"run_id":%q}}`, b))
	if m := readMsg(t, c); m.Error != nil {
		t.Fatalf("unsubscribe: %+v", m)
	}
	e.mustJSON("POST", e.runPath(b)+"/append_log/", `{"entries":[{"type":"after-unsubscribe"}]}`, http.StatusOK, nil)
	// The connection is still open and answers; nothing of run b arrives.
	send(t, c, `{"jsonrpc":"2.0","id":10,"method":"nope"}`)
	if m := readMsg(t, c); m.Method != "" || m.ID == nil || *m.ID != 10 {
		t.Fatalf("after unsubscribe got %+v %s", m, m.Params)
	}
}

// TestWSMuxHistory: history returns the stored events before a seq, the
// newest limit of them, in order; it checks its params and the caller's
// access like subscribe.
func TestWSMuxHistory(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	c := dialMux(t, e)
	run := e.newRun()
	e.appendN(run, 0, 30) // seqs 2..31
	send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"history","params":{"run_id":%q,"before":20,"limit":5}}`, run))
	m := readMsg(t, c)
	var res struct {
		RunID  string `json:"run_id"`
		Events []struct {
			Seq   int64           `json:"seq"`
			Event json.RawMessage `json:"event"`
		} `json:"events"`
	}
	if m.Error != nil || json.Unmarshal(m.Result, &res) != nil || res.RunID != run || len(res.Events) != 5 {
		t.Fatalf("history: %+v %s", m, m.Result)
	}
	for i, ev := range res.Events {
		if ev.Seq != int64(15+i) || len(ev.Event) == 0 || ev.Event[0] != '{' {
			t.Fatalf("event %d: seq %d %s", i, ev.Seq, ev.Event)
		}
	}
	send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"history","params":{"run_id":%q,"before":3}}`, run))
	if m := readMsg(t, c); m.Error != nil || !bytes.Contains(m.Result, []byte(`"seq":1`)) || bytes.Contains(m.Result, []byte(`"seq":3`)) {
		t.Fatalf("history before 3: %+v %s", m, m.Result)
	}
	for i, params := range []string{`{"run_id":"x","before":3}`, fmt.Sprintf(`{"run_id":%q,"before":0}`, run), fmt.Sprintf(`{"run_id":%q,"before":5,"limit":5000}`, run)} {
		send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"history","params":%s}`, 10+i, params))
		if m := readMsg(t, c); m.Error == nil || m.Error.Code != -32602 {
			t.Fatalf("bad params %s: %+v", params, m)
		}
	}
	send(t, c, `{"jsonrpc":"2.0","id":20,"method":"history","params":{"run_id":"00000000-0000-4000-8000-000000000000","before":3}}`)
	if m := readMsg(t, c); m.Error == nil || m.Error.Code != hub.CodeNotFound {
		t.Fatalf("unknown run: %+v", m)
	}
}
