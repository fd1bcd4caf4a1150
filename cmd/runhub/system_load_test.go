package main

// The load harness of TestSystemThreeNodes: runhub nodes that can be killed,
// drained and restarted on their address, and clients that behave like real
// ones and talk only to the balancer — subscribers on the three transports
// that reconnect and resume from their last seq, REST publishers that retry
// with the same Idempotency-Key, reference agents (proxy/agentclient) and a
// command sender — each keeping cheap counters that the phases' checkers
// read.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/proxy/agentclient"
)

// sysNode is one runhub node of the system test: it keeps its address,
// data directory and flags, so that it can be restarted as an operator
// would (same command line) after a kill or a drain.
type sysNode struct {
	id, addr, dir string
	args          []string
	srv           *server
	exited        chan struct{} // closed when the current process has exited
	exitErr       error         // its exit status (read after exited)
}

// start runs the node's process and waits until /healthz answers.
func (n *sysNode) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(runhubBinary(t), append([]string{"serve", "--addr", n.addr, "--data-dir", n.dir}, n.args...)...)
	s := &server{cmd: cmd, base: "http://" + n.addr, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Stderr = &lockedWriter{w: s.logs, mu: s.mu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { n.exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	n.srv, n.exited = s, exited
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if res, err := http.Get(s.base + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
	}
	t.Fatalf("node %s did not start; logs:\n%s", n.id, s.output())
}

// kill ends the node as a crash would (SIGKILL) and waits for the exit.
func (n *sysNode) kill(t *testing.T) {
	t.Helper()
	if err := n.srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n.exited
}

// terminate asks the node to drain (SIGTERM) and waits for its exit, which
// must be 0 within limit.
func (n *sysNode) terminate(t *testing.T, limit time.Duration) {
	t.Helper()
	if err := n.srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.exited:
		if n.exitErr != nil {
			t.Fatalf("node %s exited with %v after SIGTERM; logs:\n%s", n.id, n.exitErr, n.srv.output())
		}
	case <-time.After(limit):
		t.Fatalf("node %s did not exit within %v of SIGTERM; logs:\n%s", n.id, limit, n.srv.output())
	}
}

// agentsHeld lists the runs whose agent is connected to this node's
// current process, from its log (connects minus disconnects).
func (n *sysNode) agentsHeld(runIDs []string) []string {
	logs := n.srv.output()
	var held []string
	for _, id := range runIDs {
		on := strings.Count(logs, `msg="agent connected" node=`+n.id+` run_id=`+id)
		off := strings.Count(logs, `msg="agent disconnected" node=`+n.id+` run_id=`+id)
		if on > off {
			held = append(held, id)
		}
	}
	return held
}

// sysRun is one run of the test.
type sysRun struct {
	id   string
	path string // /api/projects/1/tasks/T/runs/R
}

// sysClient is what every client of the test shares: the balancer, the
// key, and an HTTP transport of its own (one connection per stream).
type sysClient struct {
	lb, key string
	http    *http.Client
}

func newSysClient(lb, key string) *sysClient {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	return &sysClient{lb: lb, key: key, http: &http.Client{Transport: tr}}
}

func (c *sysClient) wsURL(path string) string { return "ws" + strings.TrimPrefix(c.lb, "http") + path }

func (c *sysClient) dial(ctx context.Context, path string) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(dctx, c.wsURL(path), &websocket.DialOptions{
		HTTPClient: c.http, HTTPHeader: http.Header{"Authorization": {"Bearer " + c.key}}})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return ws, nil
}

// transportStats counts how the subscribers' connections ended and how
// their reconnects went, for all subscribers of a transport.
type transportStats struct {
	restarts   atomic.Int64 // WebSocket closes with 1012
	cleanEnds  atomic.Int64 // SSE streams ended after the server's retry hint
	otherEnds  atomic.Int64 // any other end (a kill -9, an error)
	dialErrors atomic.Int64 // a reconnect that failed
	mu         sync.Mutex
	samples    []string // the first few other ends and dial errors
}

func (s *transportStats) other(kind string, err error, dial bool) {
	if dial {
		s.dialErrors.Add(1)
	} else {
		s.otherEnds.Add(1)
	}
	s.mu.Lock()
	if len(s.samples) < 5 {
		s.samples = append(s.samples, kind+": "+err.Error())
	}
	s.mu.Unlock()
}

type statsSnapshot struct{ restarts, cleanEnds, otherEnds, dialErrors int64 }

func (s *transportStats) snapshot() statsSnapshot {
	return statsSnapshot{s.restarts.Load(), s.cleanEnds.Load(), s.otherEnds.Load(), s.dialErrors.Load()}
}

func (s *transportStats) takeSamples() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.samples
	s.samples = nil
	return out
}

// subscriber is one subscription of one run on one transport: its last
// seq, counters, and a running hash of the log entries it got, in order,
// to compare with the store's log. A connection's reader updates it; the
// checkers read it.
type subscriber struct {
	run       *sysRun
	transport string
	mu        sync.Mutex
	last      int64
	delivered int64
	dups      int64 // events at or below the last seq: repeated or reordered
	gaps      int64 // events beyond last+1: some were lost
	logs      hash.Hash64
	connects  int
	dropAt    time.Time // when the connection last ended
	resumeAt  time.Time // when it was last (re)established
}

func newSubscriber(run *sysRun, transport string) *subscriber {
	return &subscriber{run: run, transport: transport, logs: fnv.New64a()}
}

func (s *subscriber) lastSeq() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *subscriber) connected() {
	s.mu.Lock()
	s.connects++
	s.resumeAt = time.Now()
	s.mu.Unlock()
}

func (s *subscriber) dropped() {
	s.mu.Lock()
	s.dropAt = time.Now()
	s.mu.Unlock()
}

// event takes one delivered event. Ephemeral events (no seq) do not occur
// in this test.
func (s *subscriber) event(seq int64, data []byte) {
	log := isLogEvent(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case seq <= s.last:
		s.dups++
		return
	case seq > s.last+1:
		s.gaps++
	}
	s.last = seq
	s.delivered++
	if log {
		s.logs.Write(data)
		s.logs.Write([]byte{'\n'})
	}
}

// isLogEvent reports whether a stream event is a log entry (what GET
// .../logs returns), not a run state change or an artifact.
func isLogEvent(data []byte) bool {
	var ev struct{ Type string }
	json.Unmarshal(data, &ev)
	return ev.Type != "task_run_state" && ev.Type != "artifact"
}

// reconnectDelay is what a real client waits before it reconnects: at
// once (with a little jitter) when the node asked it to move, else a
// jittered backoff that grows with the failures in a row.
func reconnectDelay(moved bool, failures int) time.Duration {
	if moved {
		return rand.N(100*time.Millisecond) + time.Millisecond
	}
	backoff := min(100*time.Millisecond<<min(failures, 5), 2*time.Second)
	return rand.N(backoff) + 10*time.Millisecond
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// rpcMessage is any JSON-RPC message a WebSocket stream sends: an event or
// stream_end notification, or (on /ws) a reply.
type rpcMessage struct {
	ID     *int64          `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Params struct {
		RunID string          `json:"run_id"`
		Seq   int64           `json:"seq"`
		Event json.RawMessage `json:"event"`
	} `json:"params"`
}

// decodeMessages reads one WebSocket message: a JSON-RPC message, or a
// batch of notifications (a JSON array).
func decodeMessages(data []byte) ([]rpcMessage, error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '[' {
		var ms []rpcMessage
		err := json.Unmarshal(data, &ms)
		return ms, err
	}
	var m rpcMessage
	err := json.Unmarshal(data, &m)
	return []rpcMessage{m}, err
}

// endOf classifies why a WebSocket read ended and reports whether the
// node asked the client to move (1012).
func endOf(ctx context.Context, st *transportStats, kind string, err error) (moved bool) {
	if ctx.Err() != nil {
		return false
	}
	if websocket.CloseStatus(err) == websocket.StatusServiceRestart {
		st.restarts.Add(1)
		return true
	}
	st.other(kind, err, false)
	return false
}

// runStreamWS follows one run over GET .../stream (WebSocket) until ctx
// ends, resuming with ?after=<last seq> after every reconnect.
func (c *sysClient) runStreamWS(ctx context.Context, s *subscriber, st *transportStats) {
	failures := 0
	for ctx.Err() == nil {
		ws, err := c.dial(ctx, s.run.path+"/stream?after="+strconv.FormatInt(s.lastSeq(), 10))
		if err != nil {
			if ctx.Err() == nil {
				st.other("stream dial", err, true)
			}
			failures++
			sleepCtx(ctx, reconnectDelay(false, failures))
			continue
		}
		s.connected()
		failures = 0
		var moved bool
		for {
			_, data, err := ws.Read(ctx)
			if err != nil {
				moved = endOf(ctx, st, "stream", err)
				break
			}
			ms, err := decodeMessages(data)
			if err != nil {
				st.other("stream decode", err, false)
				break
			}
			for _, m := range ms {
				if m.Method == "event" && m.Params.Seq > 0 {
					s.event(m.Params.Seq, m.Params.Event)
				}
			}
		}
		ws.CloseNow()
		s.dropped()
		sleepCtx(ctx, reconnectDelay(moved, 1))
	}
}

// runMux follows several runs over one multiplexed GET /ws connection,
// subscribing again with "after": <last seq> after every reconnect.
func (c *sysClient) runMux(ctx context.Context, subs []*subscriber, st *transportStats) {
	byRun := map[string]*subscriber{}
	for _, s := range subs {
		byRun[s.run.id] = s
	}
	failures := 0
	for ctx.Err() == nil {
		ws, err := c.dial(ctx, "/ws")
		if err != nil {
			if ctx.Err() == nil {
				st.other("ws dial", err, true)
			}
			failures++
			sleepCtx(ctx, reconnectDelay(false, failures))
			continue
		}
		pending := map[int64]*subscriber{}
		var werr error
		for i, s := range subs {
			id := int64(i + 1)
			pending[id] = s
			req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": "subscribe",
				"params": map[string]any{"run_id": s.run.id, "after": s.lastSeq()}})
			if werr = ws.Write(ctx, websocket.MessageText, req); werr != nil {
				break
			}
		}
		var moved bool
		if werr != nil {
			moved = endOf(ctx, st, "ws subscribe", werr)
		} else {
			failures = 0
		read:
			for {
				_, data, err := ws.Read(ctx)
				if err != nil {
					moved = endOf(ctx, st, "ws", err)
					break
				}
				ms, err := decodeMessages(data)
				if err != nil {
					st.other("ws decode", err, false)
					break
				}
				for _, m := range ms {
					switch {
					case m.ID != nil && pending[*m.ID] != nil:
						s := pending[*m.ID]
						delete(pending, *m.ID)
						if m.Error != nil {
							st.other("ws subscribe", fmt.Errorf("%d %s", m.Error.Code, m.Error.Message), false)
							break read
						}
						s.connected()
					case m.Method == "event" && m.Params.Seq > 0:
						if s := byRun[m.Params.RunID]; s != nil {
							s.event(m.Params.Seq, m.Params.Event)
						}
					}
				}
			}
		}
		ws.CloseNow()
		for _, s := range subs {
			s.dropped()
		}
		sleepCtx(ctx, reconnectDelay(moved, 1))
	}
}

// runSSE follows one run over GET .../stream as EventSource does:
// Last-Event-ID on every reconnect, and the retry: delay the server asks
// for when it ends the stream at a drain.
func (c *sysClient) runSSE(ctx context.Context, s *subscriber, st *transportStats) {
	failures := 0
	for ctx.Err() == nil {
		// ?events=all: every stored event, runhub's own ones (agent_connected)
		// too, so that the seqs are gap-free.
		req, _ := http.NewRequestWithContext(ctx, "GET", c.lb+s.run.path+"/stream?events=all", nil)
		req.Header.Set("Authorization", "Bearer "+c.key)
		req.Header.Set("Accept", "text/event-stream")
		if last := s.lastSeq(); last > 0 {
			req.Header.Set("Last-Event-ID", strconv.FormatInt(last, 10))
		}
		res, err := c.http.Do(req)
		if err == nil && res.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
			res.Body.Close()
			err = fmt.Errorf("status %d: %s", res.StatusCode, b)
		}
		if err != nil {
			if ctx.Err() == nil {
				st.other("sse dial", err, true)
			}
			failures++
			sleepCtx(ctx, reconnectDelay(false, failures))
			continue
		}
		s.connected()
		failures = 0
		retry, err := readSSE(res.Body, s)
		res.Body.Close()
		s.dropped()
		if ctx.Err() != nil {
			return
		}
		if retry > 0 && errors.Is(err, io.EOF) {
			st.cleanEnds.Add(1)
			sleepCtx(ctx, retry)
			continue
		}
		st.other("sse", err, false)
		sleepCtx(ctx, reconnectDelay(false, 1))
	}
}

// readSSE reads events until the stream ends; it returns the retry delay
// the server asked for, if any, and io.EOF for a stream the server ended.
func readSSE(body io.Reader, s *subscriber) (time.Duration, error) {
	br := bufio.NewReaderSize(body, 64<<10)
	var retry time.Duration
	var id int64
	var event string
	var data []byte
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				return retry, io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return retry, err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if event == "" && data != nil && id > 0 {
				s.event(id, data)
			}
			id, event, data = 0, "", nil
		case bytes.HasPrefix(line, []byte("id: ")):
			id, _ = strconv.ParseInt(string(line[4:]), 10, 64)
		case bytes.HasPrefix(line, []byte("data: ")):
			data = bytes.Clone(line[6:])
		case bytes.HasPrefix(line, []byte("event: ")):
			event = string(line[7:])
		case bytes.HasPrefix(line, []byte("retry: ")):
			ms, _ := strconv.Atoi(string(line[7:]))
			retry = time.Duration(ms) * time.Millisecond
		}
	}
}

// marker identifies one write of a publisher or an agent in the log.
type marker struct {
	Src string `json:"src"`
	N   int    `json:"n"`
}

// writeBook records what the writers sent and what was acknowledged.
type writeBook struct {
	mu       sync.Mutex
	sent     map[marker]bool
	acked    map[marker]bool
	retries  int64    // requests sent again with the same Idempotency-Key
	dropped  int64    // writes whose first answer was lost on its way back
	failures []string // writes that got an answer a client cannot retry, or gave up
}

func newWriteBook() *writeBook {
	return &writeBook{sent: map[marker]bool{}, acked: map[marker]bool{}}
}

func (b *writeBook) send(m marker) {
	b.mu.Lock()
	b.sent[m] = true
	b.mu.Unlock()
}

func (b *writeBook) ack(m marker) {
	b.mu.Lock()
	b.acked[m] = true
	b.mu.Unlock()
}

func (b *writeBook) fail(format string, args ...any) {
	b.mu.Lock()
	b.failures = append(b.failures, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

func (b *writeBook) ackedCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.acked)
}

// retryWindow bounds how long a publisher keeps sending one write again
// (with its Idempotency-Key): longer than any outage of the test.
const retryWindow = 30 * time.Second

// Some writes of the REST publishers go over a bad link, as some clients'
// do: every slowEvery-th sends its body in two parts slowLinkPause apart
// (so that writes are in flight when a node is killed or drained), and
// the answer to every dropEvery-th is lost on its way back (the write was
// applied, the client cannot know: the retry with the same
// Idempotency-Key must get the original answer and apply nothing).
const (
	slowEvery     = 3
	dropEvery     = 5
	slowLinkPause = 300 * time.Millisecond
)

// publishREST appends to a run through the balancer every interval until
// ctx ends, as a real client does: each write has its Idempotency-Key, and
// is sent again with the same key after a connection error, a 502 or a
// 503. A write under way when ctx ends is finished.
func (c *sysClient) publishREST(ctx context.Context, src string, run *sysRun, interval time.Duration, book *writeBook, next *int) {
	for ctx.Err() == nil {
		*next++
		m := marker{Src: src, N: *next}
		body, _ := json.Marshal(map[string]any{"entries": []any{map[string]any{"type": "console", "src": m.Src, "n": m.N}}})
		book.send(m)
		c.appendOnce(run, m, body, book)
		sleepCtx(ctx, interval/2+rand.N(interval))
	}
}

// slowBody is a request body read by the HTTP client (chunked, so that
// each part is flushed as it is read) in two parts slowLinkPause apart.
type slowBody struct {
	r      *bytes.Reader
	paused bool
}

func (b *slowBody) Read(p []byte) (int, error) {
	if !b.paused {
		half, done := b.r.Size()/2, b.r.Size()-int64(b.r.Len())
		if done < half {
			return b.r.Read(p[:min(int64(len(p)), half-done)])
		}
		b.paused = true
		time.Sleep(slowLinkPause)
	}
	return b.r.Read(p)
}

func (c *sysClient) appendOnce(run *sysRun, m marker, body []byte, book *writeBook) {
	key := fmt.Sprintf("sys-%s-%d", m.Src, m.N)
	deadline := time.Now().Add(retryWindow)
	var lost []byte // the answer that did not reach the client
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			book.mu.Lock()
			book.retries++
			book.mu.Unlock()
		}
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var rd io.Reader = bytes.NewReader(body)
		if attempt == 0 && m.N%slowEvery == 0 {
			rd = &slowBody{r: bytes.NewReader(body)}
		}
		req, _ := http.NewRequestWithContext(rctx, "POST", c.lb+run.path+"/append_log/", rd)
		req.Header.Set("Authorization", "Bearer "+c.key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		res, err := c.http.Do(req)
		var status int
		var answer []byte
		if err == nil {
			status = res.StatusCode
			answer, err = io.ReadAll(io.LimitReader(res.Body, 64<<10))
			res.Body.Close()
		}
		cancel()
		switch {
		case err == nil && status == 200 && attempt == 0 && m.N%dropEvery == 0:
			// The answer is lost on the way back: send it again.
			book.mu.Lock()
			book.dropped++
			book.mu.Unlock()
			lost = answer
			continue
		case err == nil && status == 200:
			if lost != nil && !sameRun(lost, answer) {
				book.fail("append %v: the retry of an applied write answered %s, the write %s", m, answer, lost)
			}
			book.ack(m)
			return
		case err == nil && status != 502 && status != 503:
			book.fail("append %v: %d %s", m, status, answer)
			return
		case time.Now().After(deadline):
			book.fail("append %v: still failing after %v: %d %v", m, retryWindow, status, err)
			return
		}
		time.Sleep(50*time.Millisecond + rand.N(200*time.Millisecond))
	}
}

// sameRun reports whether two append_log answers show the same run (its
// signed log_url aside, which is made afresh for every answer).
func sameRun(a, b []byte) bool {
	var ra, rb map[string]any
	if json.Unmarshal(a, &ra) != nil || json.Unmarshal(b, &rb) != nil {
		return false
	}
	delete(ra, "log_url")
	delete(rb, "log_url")
	return fmt.Sprint(ra) == fmt.Sprint(rb)
}

// sysAgent is a reference agent (proxy/agentclient, what `runhub agent`
// runs) connected through the balancer, with the writes it made.
type sysAgent struct {
	run   *sysRun
	agent *agentclient.Agent
	src   string
	next  int
}

// agentLog keeps the agents' warnings and errors for the report.
type agentLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *agentLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (c *sysClient) newAgent(ctx context.Context, run *sysRun, src string, logs *agentLog) (*sysAgent, error) {
	var tok struct {
		Token string `json:"token"`
		URL   string `json:"ws_url"`
	}
	if st, err := do(ctx, c.key, "GET", c.lb+run.path+"/connection_token/?role=agent", nil, &tok); err != nil || st != 200 {
		return nil, fmt.Errorf("agent token: %d %v", st, err)
	}
	a := agentclient.New(agentclient.Options{URL: tok.URL, Token: tok.Token, HTTPClient: c.http,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	return &sysAgent{run: run, agent: a, src: src}, nil
}

// publish appends through the agent every interval until ctx ends; a
// batch whose acknowledgement is still awaited then stays queued, and the
// agent sends it in its turn.
func (a *sysAgent) publish(ctx context.Context, interval time.Duration, book *writeBook) {
	for ctx.Err() == nil {
		a.next++
		m := marker{Src: a.src, N: a.next}
		entry, _ := json.Marshal(map[string]any{"type": "console", "src": m.Src, "n": m.N})
		book.send(m)
		if err := a.agent.Append(ctx, entry); err == nil {
			book.ack(m)
		}
		sleepCtx(ctx, interval/2+rand.N(interval))
	}
}

// commandBook counts the commands of a phase.
type commandBook struct {
	mu        sync.Mutex
	sent      int
	answered  int
	retries   int
	causes    map[string]int // why attempts failed before a command was answered
	failures  []string       // commands not answered within commandBound
	latencies []time.Duration
}

// commandBound is how long a command sender keeps trying one command: the
// issue's bound for commands to reach an agent that moved.
const commandBound = 10 * time.Second

// commandTry is the outcome of sendCommand.
type commandTry struct {
	took   time.Duration
	failed []string // the errors of the attempts that failed, in order
	err    error    // not answered within commandBound
}

// sendCommand sends one command through the balancer (REST, or /ws when
// mux is not nil) until the agent answers it, retrying on every error
// within commandBound.
func (c *sysClient) sendCommand(run *sysRun, method string, mux *muxCommander) commandTry {
	start := time.Now()
	var try commandTry
	for attempt := 0; time.Since(start) < commandBound; attempt++ {
		if attempt > 0 {
			time.Sleep(100*time.Millisecond + rand.N(100*time.Millisecond))
		}
		ctx, cancel := context.WithTimeout(context.Background(), commandBound-time.Since(start))
		var err error
		if mux != nil {
			err = mux.command(ctx, run, method)
		} else {
			err = c.restCommand(ctx, run, method)
		}
		cancel()
		if err == nil {
			try.took = time.Since(start)
			return try
		}
		try.failed = append(try.failed, err.Error())
	}
	try.took = time.Since(start)
	try.err = fmt.Errorf("%s to %s: not answered within %v: %v", method, run.id, commandBound, try.failed)
	return try
}

func commandParams(method string) map[string]any {
	if method == "user_message" {
		return map[string]any{"content": "ping"}
	}
	return map[string]any{}
}

// checkAnswer verifies the reference agent's answer to method.
func checkAnswer(method string, result json.RawMessage) error {
	var r struct {
		Assistant string `json:"assistant_message"`
		Cancelled bool   `json:"cancelled"`
	}
	if err := json.Unmarshal(result, &r); err != nil {
		return fmt.Errorf("result %s: %w", result, err)
	}
	if method == "user_message" && r.Assistant != "You said: ping" || method == "cancel" && !r.Cancelled {
		return fmt.Errorf("%s answered %s", method, result)
	}
	return nil
}

func (c *sysClient) restCommand(ctx context.Context, run *sysRun, method string) error {
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": commandParams(method)})
	req, _ := http.NewRequestWithContext(ctx, "POST", c.lb+run.path+"/command/", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.http.Do(req)
	if err != nil {
		return err
	}
	answer, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	if err != nil {
		return err
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if res.StatusCode != 200 || json.Unmarshal(answer, &resp) != nil || resp.Error != nil {
		return fmt.Errorf("REST command: %d %s", res.StatusCode, bytes.TrimSpace(answer))
	}
	return checkAnswer(method, resp.Result)
}

// muxCommander sends commands over a /ws connection, dialled again after
// it broke.
type muxCommander struct {
	c  *sysClient
	ws *websocket.Conn
	id int64
}

func (m *muxCommander) close() {
	if m.ws != nil {
		m.ws.CloseNow()
		m.ws = nil
	}
}

func (m *muxCommander) command(ctx context.Context, run *sysRun, method string) error {
	if m.ws == nil {
		ws, err := m.c.dial(ctx, "/ws")
		if err != nil {
			return err
		}
		m.ws = ws
	}
	m.id++
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.id, "method": "command",
		"params": map[string]any{"run_id": run.id, "method": method, "params": commandParams(method)}})
	if err := m.ws.Write(ctx, websocket.MessageText, req); err != nil {
		m.close()
		return err
	}
	for {
		_, data, err := m.ws.Read(ctx)
		if err != nil {
			m.close() // a timed-out read leaves the connection unusable
			return err
		}
		var r rpcMessage
		if err := json.Unmarshal(data, &r); err != nil {
			m.close()
			return err
		}
		if r.ID == nil || *r.ID != m.id {
			continue // the answer to an earlier command that timed out here
		}
		if r.Error != nil {
			return fmt.Errorf("/ws command: %d %s", r.Error.Code, r.Error.Message)
		}
		return checkAnswer(method, r.Result)
	}
}

// sendCommands sends user_message and cancel in turn to the agents' runs,
// alternately over REST and /ws, until ctx ends.
func (c *sysClient) sendCommands(ctx context.Context, agents []*sysAgent, book *commandBook) {
	mux := &muxCommander{c: c}
	defer mux.close()
	for i := 0; ctx.Err() == nil; i++ {
		a := agents[i%len(agents)]
		method := [2]string{"user_message", "cancel"}[(i/len(agents))%2]
		var via *muxCommander
		if i%2 == 1 {
			via = mux
		}
		try := c.sendCommand(a.run, method, via)
		book.mu.Lock()
		book.sent++
		if try.err != nil {
			book.failures = append(book.failures, try.err.Error())
		} else {
			book.answered++
			book.retries += len(try.failed)
			book.latencies = append(book.latencies, try.took)
			for _, f := range try.failed {
				book.causes[f]++
			}
		}
		book.mu.Unlock()
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// percentile of sorted durations (p in 0..100).
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func sortedDurations(ds []time.Duration) []time.Duration {
	out := slices.Clone(ds)
	slices.Sort(out)
	return out
}
