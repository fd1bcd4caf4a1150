package hub_test

// Shared helpers of the hub tests: a real server stack (SQLite store, REST
// API, hub on /stream), and small SSE and WebSocket clients that check the
// stream's seq numbering as they read.
//
// Names carry an "ht" prefix because another set of tests (ws_mux_test.go)
// shares this package.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/cmd/node/nodetest"
	"runhub/hub"
	"runhub/proxy/tokens"
	"runhub/rest"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/teststore"
)

// htEnv is one server: a fresh SQLite store, the REST API with the hub
// serving /stream, a project, an all-projects "*" key and a task.
type htEnv struct {
	t       testing.TB
	st      store.Store
	h       *hub.Hub
	svc     *runs.Service
	srv     *httptest.Server
	client  *http.Client
	key     string
	project int64
	task    string
}

// htOptions adjusts an env beyond the hub config.
type htOptions struct {
	// listener wraps the server's listener (e.g. to shrink socket buffers).
	listener func(net.Listener) net.Listener
	// source wraps the store as the hub reads it.
	source func(hub.EventSource) hub.EventSource
	// broker replaces the in-process broker; the env hands it the hub.
	broker hub.Broker
	// positionCheck runs the hub's position check (h.Run) as serve does.
	positionCheck bool
	// tokens enables connection tokens (endpoint 9, tokens on /ws).
	tokens rest.Tokens
}

func newHTEnv(t testing.TB, cfg hub.Config, opts ...htOptions) *htEnv {
	t.Helper()
	ctx := context.Background()
	st := teststore.Open(t)
	cfg.Store = st
	for _, o := range opts {
		if o.source != nil {
			cfg.Store = o.source(cfg.Store)
		}
	}
	cfg.Broker = hub.NewMemoryBroker()
	for _, o := range opts {
		if o.broker != nil {
			cfg.Broker = o.broker
		}
	}
	h, err := hub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close) // runs after the server's cleanups, registered below
	runCtx, stopRun := context.WithCancel(context.Background())
	t.Cleanup(stopRun)
	// What Hub.Start does, with the position check only where asked for:
	// the hub is the broker's one handler.
	if err := cfg.Broker.Start(runCtx, h); err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		if o.positionCheck {
			go h.Run(runCtx)
		}
	}
	svc, err := runs.New(runs.Config{Store: st, Publisher: cfg.Broker})
	if err != nil {
		t.Fatal(err)
	}
	var tk rest.Tokens
	for _, o := range opts {
		if o.tokens != nil {
			tk = o.tokens
		}
	}
	own, _ := tk.(*tokens.Tokens)
	d := nodetest.New(t, st, svc, own)
	if tk == nil {
		tk = d.Tokens
	}
	rcfg := rest.Config{Store: st, Runs: svc, Stream: h.ServeStream, WS: h.ServeWS,
		Tokens: tk, Commands: d.Commands, Blobs: d.Files, Files: d.Files, Signer: d.Signer}
	srv := httptest.NewUnstartedServer(rest.New(rcfg))
	for _, o := range opts {
		if o.listener != nil {
			srv.Listener = o.listener(srv.Listener)
		}
	}
	// As in serve: streams never end by themselves, so their contexts are
	// cancelled before the server waits for its handlers.
	base, cancelStreams := context.WithCancel(context.Background())
	srv.Config.BaseContext = func(net.Listener) context.Context { return base }
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { cancelStreams(); srv.CloseClientConnections() })
	tr := &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	e := &htEnv{t: t, st: st, h: h, svc: svc, srv: srv, client: &http.Client{Transport: tr}}

	p, err := st.CreateProject(ctx, "hub")
	if err != nil {
		t.Fatal(err)
	}
	e.project = p.ID
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Label: "hub test", Prefix: prefix, Hash: hash,
		Scopes: []string{store.ScopeAll}, AllProjects: true}); err != nil {
		t.Fatal(err)
	}
	e.key = secret
	var task struct {
		ID string `json:"id"`
	}
	e.mustJSON("POST", fmt.Sprintf("/api/projects/%d/tasks/", e.project), `{"title":"hub test"}`, http.StatusCreated, &task)
	e.task = task.ID
	return e
}

// do sends one authenticated request and returns the status and body. It
// may be called from any goroutine.
func (e *htEnv) do(method, path, body string, hdr ...string) (int, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+e.key)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

// mustJSON sends a request, wants status and decodes the body into out
// (when not nil). Test goroutine only.
func (e *htEnv) mustJSON(method, path, body string, status int, out any) {
	e.t.Helper()
	code, b, err := e.do(method, path, body)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	if code != status {
		e.t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, code, status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

func (e *htEnv) runPath(run string) string {
	return fmt.Sprintf("/api/projects/%d/tasks/%s/runs/%s", e.project, e.task, run)
}

func (e *htEnv) streamURL(run string) string { return e.srv.URL + e.runPath(run) + "/stream" }

func (e *htEnv) wsURL(run string) string {
	return "ws" + strings.TrimPrefix(e.streamURL(run), "http")
}

// newRun creates a run through the API (publishing its seq 1 state event).
func (e *htEnv) newRun() string {
	e.t.Helper()
	var run struct {
		ID string `json:"id"`
	}
	e.mustJSON("POST", fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", e.project, e.task), `{}`, http.StatusCreated, &run)
	return run.ID
}

// lastSeq is the run's newest stored seq.
func (e *htEnv) lastSeq(run string) int64 {
	e.t.Helper()
	r, err := e.st.GetRun(context.Background(), e.ref(run))
	if err != nil {
		e.t.Fatal(err)
	}
	return r.LastSeq
}

func (e *htEnv) ref(run string) store.RunRef {
	return store.RunRef{ProjectID: e.project, TaskID: e.task, RunID: run}
}

// logEntry is a stored log entry carrying n, padded to about pad bytes.
func logEntry(n, pad int) string {
	if pad > 0 {
		return fmt.Sprintf(`{"type":"log","n":%d,"pad":%q}`, n, strings.Repeat("x", pad))
	}
	return fmt.Sprintf(`{"type":"log","n":%d}`, n)
}

// chunkEntry is an ephemeral agent_message_chunk entry.
func chunkEntry(text string) string {
	return fmt.Sprintf(`{"type":"notification","notification":{"jsonrpc":"2.0","method":"session/update",`+
		`"params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":%q}}}}}`, text)
}

// appendBody is an append_log body of raw entries.
func appendBody(entries []string) string {
	return `{"entries":[` + strings.Join(entries, ",") + `]}`
}

// tryAppend posts entries to append_log; safe from any goroutine.
func (e *htEnv) tryAppend(run string, entries []string) error {
	code, b, err := e.do("POST", e.runPath(run)+"/append_log/", appendBody(entries))
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("append_log: HTTP %d: %s", code, b)
	}
	return nil
}

func (e *htEnv) appendLog(run string, entries ...string) {
	e.t.Helper()
	if err := e.tryAppend(run, entries); err != nil {
		e.t.Fatal(err)
	}
}

// appendN appends entries numbered from..from+n-1.
func (e *htEnv) appendN(run string, from, n int) {
	e.t.Helper()
	entries := make([]string, n)
	for i := range entries {
		entries[i] = logEntry(from+i, 0)
	}
	e.appendLog(run, entries...)
}

// setStatus PATCHes the run's status.
func (e *htEnv) setStatus(run, status string) {
	e.t.Helper()
	e.mustJSON("PATCH", e.runPath(run)+"/", fmt.Sprintf(`{"status":%q}`, status), http.StatusOK, nil)
}

// storedEvents returns every stored event of a run.
func (e *htEnv) storedEvents(run string) []store.Event {
	e.t.Helper()
	var out []store.Event
	after := int64(0)
	for {
		evs, err := e.st.Events(context.Background(), run, after, 1000)
		if err != nil {
			e.t.Fatal(err)
		}
		if len(evs) == 0 {
			return out
		}
		out = append(out, evs...)
		after = evs[len(evs)-1].Seq
	}
}

// ---- SSE client ----

// sseEvent is one parsed text/event-stream event.
type sseEvent struct {
	id    int64 // 0 when the event had no id line
	hasID bool
	event string // "" for the default "message"
	data  string
	retry string // the retry field, "" when absent
}

// sseConn is one open SSE response.
type sseConn struct {
	res    *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// openSSE starts GET .../stream; query is a raw query string, hdr header
// pairs. The response is returned whatever its status.
func (e *htEnv) openSSE(ctx context.Context, run, query string, hdr ...string) (*sseConn, error) {
	return openSSEWith(ctx, e.client, e.streamURL(run), e.key, query, hdr...)
}

func openSSEWith(ctx context.Context, client *http.Client, url, key, query string, hdr ...string) (*sseConn, error) {
	ctx, cancel := context.WithCancel(ctx)
	if query != "" {
		url += "?" + query
	}
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	return &sseConn{res: res, r: bufio.NewReaderSize(res.Body, 64<<10), cancel: cancel}, nil
}

// mustSSE opens a stream and wants 200 with the contract's headers.
func (e *htEnv) mustSSE(ctx context.Context, run, query string, hdr ...string) *sseConn {
	e.t.Helper()
	c, err := e.openSSE(ctx, run, query, hdr...)
	if err != nil {
		e.t.Fatalf("open stream: %v", err)
	}
	e.t.Cleanup(c.close)
	if c.res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(c.res.Body)
		e.t.Fatalf("stream: HTTP %d: %s", c.res.StatusCode, b)
	}
	return c
}

func (c *sseConn) close() {
	c.cancel()
	c.res.Body.Close()
}

// next reads one event. Comment lines are skipped; io.EOF means the server
// ended the response cleanly between events.
func (c *sseConn) next() (sseEvent, error) {
	var ev sseEvent
	seen := false
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && !seen && len(line) == 0 {
				return ev, io.EOF
			}
			if errors.Is(err, io.EOF) {
				return ev, io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
		if len(line) == 0 {
			if !seen {
				continue
			}
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		seen = true
		field, value, _ := bytes.Cut(line, []byte{':'})
		value = bytes.TrimPrefix(value, []byte{' '})
		switch string(field) {
		case "id":
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil {
				return ev, fmt.Errorf("bad id line %q", line)
			}
			ev.id, ev.hasID = n, true
		case "event":
			ev.event = string(value)
		case "retry":
			ev.retry = string(value)
		case "data":
			if ev.data != "" {
				ev.data += "\n"
			}
			ev.data += string(value)
		}
	}
}

// nextData reads events, skipping keepalives.
func (c *sseConn) nextData() (sseEvent, error) {
	for {
		ev, err := c.next()
		if err != nil || ev.event != "keepalive" {
			return ev, err
		}
	}
}

// wantIDs reads events (skipping keepalives) and wants exactly the ids
// from..to, in order, each a JSON object.
func (c *sseConn) wantIDs(t testing.TB, from, to int64) []sseEvent {
	t.Helper()
	var out []sseEvent
	for want := from; want <= to; want++ {
		ev, err := c.nextData()
		if err != nil {
			t.Fatalf("reading id %d: %v", want, err)
		}
		if !ev.hasID || ev.id != want || ev.event != "" {
			t.Fatalf("got event %q id %d (has id %v) data %.200s, want id %d", ev.event, ev.id, ev.hasID, ev.data, want)
		}
		if !json.Valid([]byte(ev.data)) || ev.data[0] != '{' {
			t.Fatalf("id %d: data is not a JSON object: %.200s", ev.id, ev.data)
		}
		out = append(out, ev)
	}
	return out
}

// wantEnd reads the stream-end event with status, then wants EOF.
func (c *sseConn) wantEnd(t testing.TB, status string) {
	t.Helper()
	ev, err := c.nextData()
	if err != nil {
		t.Fatalf("reading stream-end: %v", err)
	}
	if ev.event != "stream-end" || ev.hasID {
		t.Fatalf("got event %q id %d data %.200s, want stream-end", ev.event, ev.id, ev.data)
	}
	if want := fmt.Sprintf(`{"type":"stream-end","status":%q}`, status); ev.data != want {
		t.Fatalf("stream-end data %s, want %s", ev.data, want)
	}
	if ev, err := c.next(); err != io.EOF {
		t.Fatalf("after stream-end: event %+v, err %v; want EOF", ev, err)
	}
}

// ---- WebSocket client ----

// wsNote is a decoded JSON-RPC notification of the stream.
type wsNote struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  struct {
		RunID  string          `json:"run_id"`
		Seq    *int64          `json:"seq"`
		Status string          `json:"status"`
		Event  json.RawMessage `json:"event"`
	} `json:"params"`
}

func (e *htEnv) dialWS(ctx context.Context, run, query string, client *http.Client) (*websocket.Conn, error) {
	url := e.wsURL(run)
	if query != "" {
		url += "?" + query
	}
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + e.key}},
		HTTPClient: client,
	})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(8 << 20)
	return c, nil
}

func (e *htEnv) mustWS(ctx context.Context, run, query string) *websocket.Conn {
	e.t.Helper()
	c, err := e.dialWS(ctx, run, query, nil)
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	e.t.Cleanup(func() { c.CloseNow() })
	return c
}

// held keeps the notifications of a batch not read yet, per connection.
var held sync.Map // *websocket.Conn -> *[]json.RawMessage

// readJSONRPC returns the next JSON-RPC message from c, taking the members
// of a batch (an array of notifications in one message) one at a time.
func readJSONRPC(ctx context.Context, c *websocket.Conn) ([]byte, error) {
	v, _ := held.LoadOrStore(c, new([]json.RawMessage))
	q := v.(*[]json.RawMessage)
	if len(*q) > 0 {
		m := (*q)[0]
		*q = (*q)[1:]
		return m, nil
	}
	typ, b, err := c.Read(ctx)
	if err != nil {
		held.Delete(c)
		return nil, err
	}
	if typ != websocket.MessageText {
		return b, fmt.Errorf("binary frame")
	}
	if len(b) == 0 || b[0] != '[' {
		return b, nil
	}
	var batch []json.RawMessage
	if err := json.Unmarshal(b, &batch); err != nil || len(batch) < 2 {
		return b, fmt.Errorf("bad batch (%v, %d members): %.200s", err, len(batch), b)
	}
	*q = batch[1:]
	return batch[0], nil
}

func readNote(ctx context.Context, c *websocket.Conn) (wsNote, []byte, error) {
	var n wsNote
	b, err := readJSONRPC(ctx, c)
	if err != nil {
		return n, b, err
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return n, b, fmt.Errorf("decode %.200s: %v", b, err)
	}
	return n, b, nil
}

// wantSeqs reads notifications and wants the event seqs from..to in order.
func wantSeqs(t testing.TB, ctx context.Context, c *websocket.Conn, run string, from, to int64) []wsNote {
	t.Helper()
	var out []wsNote
	for want := from; want <= to; want++ {
		n, b, err := readNote(ctx, c)
		if err != nil {
			t.Fatalf("reading seq %d: %v", want, err)
		}
		if n.JSONRPC != "2.0" || n.Method != "event" || n.ID != nil || n.Params.RunID != run ||
			n.Params.Seq == nil || *n.Params.Seq != want || len(n.Params.Event) == 0 || n.Params.Event[0] != '{' {
			t.Fatalf("got %.300s, want event notification seq %d of run %s", b, want, run)
		}
		out = append(out, n)
	}
	return out
}

// ---- sockets ----

// smallBufListener shrinks the send buffer of every accepted connection, so
// that a client that stops reading blocks the server's writes quickly
// instead of after megabytes of kernel buffering.
type smallBufListener struct {
	net.Listener
	sndbuf int
}

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetWriteBuffer(l.sndbuf)
		}
	}
	return c, err
}

// smallRecvClient is an HTTP client whose connections have a small receive
// buffer (set before connecting, so the window never grows).
func smallRecvClient(rcvbuf int) *http.Client {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		return serr
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// countingSource counts the hub's store reads.
type countingSource struct {
	hub.EventSource
	reads atomic.Int64
}

func (c *countingSource) Events(ctx context.Context, runID string, after int64, limit int) ([]store.Event, error) {
	c.reads.Add(1)
	return c.EventSource.Events(ctx, runID, after, limit)
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
