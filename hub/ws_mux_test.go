package hub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
	"runhub/rest"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/sqlite"
)

// muxEnv is a server stack with the /ws endpoint mounted.
type muxEnv struct {
	st      *sqlite.Store
	srv     *httptest.Server
	key     string
	project int64
	task    string
}

func newMuxEnv(t *testing.T) *muxEnv {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := hub.New(hub.Config{Store: st})
	srv := httptest.NewServer(rest.New(rest.Config{Store: st, Runs: &runs.Service{Store: st, Pub: h}, Stream: h.ServeStream, WS: h.ServeWS}))
	t.Cleanup(srv.Close)
	p, _ := st.CreateProject(ctx, "mux")
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Prefix: prefix, Hash: hash, Scopes: []string{"*"}, Projects: []int64{p.ID}}); err != nil {
		t.Fatal(err)
	}
	task, err := st.CreateTask(ctx, p.ID, store.NewTask{Title: "mux", OriginProduct: "user_created"})
	if err != nil {
		t.Fatal(err)
	}
	return &muxEnv{st: st, srv: srv, key: secret, project: p.ID, task: task.ID}
}

func (e *muxEnv) request(t *testing.T, method, path, body string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
	}
}

func (e *muxEnv) newRun(t *testing.T) string {
	t.Helper()
	res, err := (&runs.Service{Store: e.st}).CreateRun(context.Background(), e.project, e.task, store.NewRun{})
	if err != nil {
		t.Fatal(err)
	}
	return res.ID
}

func (e *muxEnv) runPath(run string) string {
	return fmt.Sprintf("/api/projects/%d/tasks/%s/runs/%s", e.project, e.task, run)
}

type rpcMsg struct {
	ID     *int            `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code int `json:"code"`
	} `json:"error"`
}

func dialMux(t *testing.T, e *muxEnv) *websocket.Conn {
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
	_, b, err := c.Read(ctx)
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
	e := newMuxEnv(t)
	c := dialMux(t, e)
	run := e.newRun(t)

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
	e := newMuxEnv(t)
	c := dialMux(t, e)
	a, b := e.newRun(t), e.newRun(t)
	for i, run := range []string{a, b} {
		send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"subscribe","params":{"run_id":%q,"after":"latest"}}`, i+1, run))
	}
	const n = 20
	for i := 0; i < n; i++ {
		for _, run := range []string{a, b} {
			e.request(t, "POST", e.runPath(run)+"/append_log/", fmt.Sprintf(`{"entries":[{"type":"x","i":%d}]}`, i))
		}
	}
	e.request(t, "PATCH", e.runPath(a)+"/", `{"status":"completed"}`)
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
	e.request(t, "POST", e.runPath(b)+"/append_log/", `{"entries":[{"type":"after-unsubscribe"}]}`)
	// The connection is still open and answers; nothing of run b arrives.
	send(t, c, `{"jsonrpc":"2.0","id":10,"method":"nope"}`)
	if m := readMsg(t, c); m.Method != "" || m.ID == nil || *m.ID != 10 {
		t.Fatalf("after unsubscribe got %+v %s", m, m.Params)
	}
}
