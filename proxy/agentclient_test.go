package proxy_test

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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"runhub/cmd/node"
	"runhub/proxy"
	"runhub/proxy/agentclient"
	"runhub/proxy/proxytest"
	"runhub/store"
)

// flakyStore is the real store, except that the next failBatches appends
// carrying an idempotency key (agent batches) fail as a store that cannot
// write for now would (SQLITE_BUSY, a full disk): a plain error, which the
// proxy answers with -32603.
type flakyStore struct {
	store.Store
	failBatches atomic.Int32
	batchCalls  atomic.Int32 // appends with a key that reached the store
	// slowConnected delays the append of agent_connected (nanoseconds),
	// as a busy store would.
	slowConnected atomic.Int64
}

var errStoreBusy = errors.New("database is locked")

func (f *flakyStore) AppendLog(ctx context.Context, ref store.RunRef, entries []store.LogEntry, idem *store.Idempotency) (*store.MutationResult, error) {
	if len(entries) > 0 && entries[0].Type == "agent_connected" {
		time.Sleep(time.Duration(f.slowConnected.Load()))
	}
	if idem != nil {
		f.batchCalls.Add(1)
		if f.failBatches.Add(-1) >= 0 {
			return nil, errStoreBusy
		}
	}
	return f.Store.AppendLog(ctx, ref, entries, idem)
}

// newFlakyPxEnv is newPxEnv with the run service writing through a
// flakyStore.
func newFlakyPxEnv(t *testing.T) (*pxEnv, *flakyStore) {
	t.Helper()
	var flaky *flakyStore
	e := newPxEnvWith(t, proxy.Config{}, func(st store.Store) store.Store {
		flaky = &flakyStore{Store: st}
		return flaky
	})
	return e, flaky
}

// runAgent runs a reference agent for run until stop is called or the
// test ends; client dials its connections (nil: the default).
func (e *pxEnv) runAgent(run string, client *http.Client) (a *agentclient.Agent, stop func()) {
	e.t.Helper()
	tok, url := e.agentToken(run)
	a = agentclient.New(agentclient.Options{URL: url, Token: tok, HTTPClient: client,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() { a.Run(ctx); close(finished) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-finished }) }
	e.t.Cleanup(stop)
	proxytest.WaitFor(e.t, "the agent to connect", func() bool { return e.px.Connected(run) })
	return a, stop
}

// console is a log entry the tests count: {"type": "console", "n": n}.
func console(n int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"type":"console","n":%d}`, n))
}

// consoleNs returns the n of every stored console entry of the run, in
// log order.
func (e *pxEnv) consoleNs(run string) []int {
	e.t.Helper()
	b := e.call("GET", e.runPath(run)+"/logs", "", http.StatusOK, nil)
	var ns []int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var v struct {
			Type string `json:"type"`
			N    int    `json:"n"`
		}
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			e.t.Fatalf("%s: %v", sc.Bytes(), err)
		}
		if v.Type == "console" {
			ns = append(ns, v.N)
		}
	}
	return ns
}

// appendCtx bounds one Append of a test.
func appendCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestAgentRetriesTransientErrors: the store fails the agent's batch once
// (-32603); the agent sends it again and it is stored exactly once. A
// batch the server refuses for good (-32602: not an object) is dropped and
// does not hold up the next one.
func TestAgentRetriesTransientErrors(t *testing.T) {
	e, flaky := newFlakyPxEnv(t)
	run := e.newRun("")
	a, _ := e.runAgent(run, nil)

	flaky.failBatches.Store(1)
	if err := a.Append(appendCtx(t), console(1)); err != nil {
		t.Fatal(err)
	}
	if got := e.consoleNs(run); !slices.Equal(got, []int{1}) {
		t.Fatalf("stored console entries %v, want [1] (the batch once, after a retry)", got)
	}
	if n := flaky.batchCalls.Load(); n != 2 {
		t.Errorf("the store saw the batch %d times, want 2 (failed, then stored)", n)
	}

	if err := a.Append(appendCtx(t), json.RawMessage(`"not an object"`)); err != nil {
		t.Fatal(err)
	}
	if err := a.Append(appendCtx(t), console(2)); err != nil {
		t.Fatal(err)
	}
	if got := e.consoleNs(run); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("stored console entries %v, want [1 2]", got)
	}
	if n := a.Unacked(); n != 0 {
		t.Errorf("%d batches still unacknowledged", n)
	}
}

// TestAgentRestartKeepsBatches: two agent processes of one run (the
// second a restart of the first) both number their batches from 1; each
// one's batches are stored, none refused as a reused seq.
func TestAgentRestartKeepsBatches(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	first, stop := e.runAgent(run, nil)
	if err := first.Append(appendCtx(t), console(1)); err != nil {
		t.Fatal(err)
	}
	stop()
	proxytest.WaitFor(t, "the first agent to go", func() bool { return !e.px.Connected(run) })

	second, _ := e.runAgent(run, nil)
	if err := second.Append(appendCtx(t), console(2)); err != nil {
		t.Fatal(err)
	}
	if err := second.Append(appendCtx(t), console(3)); err != nil {
		t.Fatal(err)
	}
	if got := e.consoleNs(run); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("stored console entries %v, want [1 2 3]", got)
	}
}

// cutDialer dials real TCP connections and can cut them all and refuse
// new ones, as a network outage would.
type cutDialer struct {
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func (d *cutDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down {
		return nil, errors.New("network down")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		d.conns = append(d.conns, c)
	}
	return c, err
}

func (d *cutDialer) setDown(down bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down = down
	if down {
		for _, c := range d.conns {
			c.Close()
		}
		d.conns = nil
	}
}

// TestAgentResendsInOrder: batches queued while the connection is cut are
// stored after the reconnect in the order they were queued, each once.
func TestAgentResendsInOrder(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	d := &cutDialer{}
	client := &http.Client{Transport: &http.Transport{DialContext: d.dial}}
	t.Cleanup(client.CloseIdleConnections)
	a, _ := e.runAgent(run, client)
	if err := a.Append(appendCtx(t), console(0)); err != nil {
		t.Fatal(err)
	}

	d.setDown(true)
	proxytest.WaitFor(t, "the server to see the agent go", func() bool { return !e.px.Connected(run) })
	const pending = 12
	gone, cancel := context.WithCancel(context.Background())
	cancel() // queue without waiting for the acknowledgement
	for n := 1; n <= pending; n++ {
		if err := a.Append(gone, console(n)); !errors.Is(err, context.Canceled) {
			t.Fatalf("append %d while cut: %v", n, err)
		}
	}
	d.setDown(false)
	proxytest.WaitFor(t, "the pending batches to be acknowledged", func() bool { return a.Unacked() == 0 })

	want := make([]int, pending+1)
	for i := range want {
		want[i] = i
	}
	if got := e.consoleNs(run); !slices.Equal(got, want) {
		t.Fatalf("stored console entries %v, want %v", got, want)
	}
}

// appendREST posts entries to the run's append_log with an Idempotency-Key
// and returns the status and body.
func (e *pxEnv) appendREST(run, key, body string) (int, string) {
	e.t.Helper()
	r, _ := http.NewRequest("POST", e.srv.URL+e.runPath(run)+"/append_log", strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+e.key)
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", key)
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// agentAppend sends append_log with params on a raw agent connection and
// returns the response.
func (a *rawAgent) append(t *testing.T, id int, params string) map[string]any {
	t.Helper()
	a.send(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"append_log","params":%s}`, id, params))
	return a.read(t)
}

// TestRESTAndAgentKeysApart: a REST Idempotency-Key spelled like an
// agent's batch key is another key: neither replays nor refuses the
// agent's batch, whichever comes first, with or without a session.
func TestRESTAndAgentKeysApart(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	for _, c := range []struct {
		name, restKey, agentParams string
		agentFirst                 bool
	}{
		{"agent batch 1, then REST agent-batch:1", "agent-batch:1", `{"seq":1,"entries":[{"type":"console","n":1}]}`, true},
		{"REST agent-batch:1, then agent batch 1", "agent-batch:1", `{"seq":1,"entries":[{"type":"console","n":1}]}`, false},
		{"agent session batch, then REST agent:s1:1", "agent:s1:1", `{"session":"s1","seq":1,"entries":[{"type":"console","n":1}]}`, true},
		{"REST agent:s1:1, then agent session batch", "agent:s1:1", `{"session":"s1","seq":1,"entries":[{"type":"console","n":1}]}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			run := e.newRun("")
			a := e.dialRaw(run)
			agentAppend := func() {
				m := a.append(t, 1, c.agentParams)
				res, _ := m["result"].(map[string]any)
				if res == nil || res["replayed"] != false {
					t.Fatalf("agent batch: %v, want stored", m)
				}
			}
			restAppend := func() {
				if status, body := e.appendREST(run, c.restKey, `{"entries":[{"type":"console","n":2}]}`); status != http.StatusOK {
					t.Fatalf("REST append_log with Idempotency-Key %s: %d %s", c.restKey, status, body)
				}
			}
			if c.agentFirst {
				agentAppend()
				restAppend()
			} else {
				restAppend()
				agentAppend()
			}
			got := e.consoleNs(run)
			slices.Sort(got)
			if !slices.Equal(got, []int{1, 2}) {
				t.Fatalf("stored console entries %v, want 1 (agent) and 2 (REST)", got)
			}
			// Each is still its own key: a repeat replays and stores nothing.
			if m := a.append(t, 2, c.agentParams); m["result"] == nil || m["result"].(map[string]any)["replayed"] != true {
				t.Fatalf("agent batch repeated: %v, want replayed", m)
			}
			if status, body := e.appendREST(run, c.restKey, `{"entries":[{"type":"console","n":2}]}`); status != http.StatusOK {
				t.Fatalf("REST repeat: %d %s", status, body)
			}
			if got := e.consoleNs(run); len(got) != 2 {
				t.Fatalf("after the repeats: %v, want two entries", got)
			}
		})
	}
}

// TestAgentSessionParam: a session is 1..64 characters of [A-Za-z0-9_-]
// (proxy's maxAgentSession) sent with a seq; anything else is -32602 and
// stores nothing. A batch seq of one session is refused with other entries
// (-32602), and is free in another session.
func TestAgentSessionParam(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	a := e.dialRaw(run)
	longest := strings.Repeat("s", 64)
	for i, params := range []string{
		`{"session":"","seq":1,"entries":[{"type":"console","n":9}]}`,
		`{"session":"a:b","seq":1,"entries":[{"type":"console","n":9}]}`,
		`{"session":"é","seq":1,"entries":[{"type":"console","n":9}]}`,
		`{"session":"` + longest + `s","seq":1,"entries":[{"type":"console","n":9}]}`,
		`{"session":"s1","entries":[{"type":"console","n":9}]}`,
		`{"session":7,"seq":1,"entries":[{"type":"console","n":9}]}`,
	} {
		m := a.append(t, 10+i, params)
		if m["error"] == nil || m["error"].(map[string]any)["code"] != float64(-32602) {
			t.Errorf("%s: %v, want -32602", params, m)
		}
	}
	for i, params := range []string{
		`{"session":"` + longest + `","seq":1,"entries":[{"type":"console","n":1}]}`,
		`{"session":"Ab_-09","seq":1,"entries":[{"type":"console","n":2}]}`,
	} {
		m := a.append(t, 20+i, params)
		if m["result"] == nil || m["result"].(map[string]any)["last_accepted_seq"] != float64(1) {
			t.Fatalf("%s: %v, want accepted", params, m)
		}
	}
	m := a.append(t, 30, `{"session":"Ab_-09","seq":1,"entries":[{"type":"console","n":3}]}`)
	if m["error"] == nil || m["error"].(map[string]any)["code"] != float64(-32602) {
		t.Fatalf("seq reused in one session: %v, want -32602", m)
	}
	if got := e.consoleNs(run); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("stored console entries %v, want [1 2]", got)
	}
}

// forwarder is a TCP load balancer in front of two nodes: each new
// connection goes to the node of the moment.
type forwarder struct {
	ln     net.Listener
	target atomic.Pointer[string]
	wg     sync.WaitGroup
}

func newForwarder(t *testing.T, target string) *forwarder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln}
	f.target.Store(&target)
	var mu sync.Mutex
	var conns []net.Conn
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", *f.target.Load())
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, b)
			mu.Unlock()
			f.wg.Add(2)
			go func() { defer f.wg.Done(); io.Copy(b, c); b.Close() }()
			go func() { defer f.wg.Done(); io.Copy(c, b); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// TestAgentMovesOnRestart: a node that closes (a drain) tells its agents
// 1012 "service restart"; the reference agent reconnects at once, however
// long its backoff has grown, lands on the other node behind the balancer,
// and the batch it had not got acknowledged is stored once there. The
// agent used to treat 1012 as a dropped connection and wait out its
// backoff (here a minute).
func TestAgentMovesOnRestart(t *testing.T) {
	e, flaky := newFlakyPxEnv(t)
	run := e.newRun("")
	// The second node: the same database and JWT key, as every node of a
	// deployment shares.
	ctx := context.Background()
	other, err := node.New(ctx, node.Config{Store: e.open(t), DataDir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if err := other.Start(ctx); err != nil {
		t.Fatal(err)
	}
	otherSrv := httptest.NewServer(other.Handler())
	t.Cleanup(otherSrv.Close)
	lb := newForwarder(t, strings.TrimPrefix(e.srv.URL, "http://"))

	tok, url := e.agentToken(run)
	url = strings.Replace(url, strings.TrimPrefix(e.srv.URL, "http://"), lb.ln.Addr().String(), 1)
	a := agentclient.New(agentclient.Options{URL: url, Token: tok, MinBackoff: time.Minute, MaxBackoff: time.Minute})
	runCtx, cancel := context.WithCancel(ctx)
	finished := make(chan error, 1)
	go func() { finished <- a.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-finished })
	proxytest.WaitFor(t, "the agent to connect", func() bool { return e.px.Connected(run) })

	// The store fails the batch once: the agent holds it and would retry
	// only after its (minute-long) backoff.
	flaky.failBatches.Store(1)
	appended := make(chan error, 1)
	go func() { appended <- a.Append(appendCtx(t), console(1)) }()
	proxytest.WaitFor(t, "the batch to fail once", func() bool { return flaky.batchCalls.Load() == 1 })

	otherAddr := strings.TrimPrefix(otherSrv.URL, "http://")
	lb.target.Store(&otherAddr)
	e.px.Close() // as a draining node does: 1012 to every agent
	select {
	case err := <-appended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the batch was not stored within 5 s of the 1012: the agent did not reconnect at once")
	}
	if !other.Proxy().Connected(run) {
		t.Error("the agent is not connected to the other node")
	}
	if got := e.consoleNs(run); !slices.Equal(got, []int{1}) {
		t.Fatalf("stored console entries %v, want [1]", got)
	}
	select {
	case err := <-finished:
		t.Fatalf("the agent stopped after the 1012: %v", err)
	default:
	}
}
