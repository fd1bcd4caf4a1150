package redisrelay_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"runhub/cmd/node"
	"runhub/hub/redis/redistest"
	"runhub/proxy"
	"runhub/proxy/agentclient"
	"runhub/proxy/proxytest"
	"runhub/proxy/redisrelay"
	"runhub/store"
	"runhub/store/teststore"
)

// drainNode is a node served by its own HTTPServer, so that Shutdown
// drains it as `runhub serve` does at SIGTERM (listeners closed, then
// the drain: agents sent on with 1012).
type drainNode struct {
	n   *node.Node
	srv *httptest.Server
	px  *proxy.Proxy
}

func newDrainNode(t *testing.T, open func(testing.TB) store.Store, dataDir, redisURL string, pc proxy.Config) *drainNode {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := node.New(ctx, node.Config{Store: open(t), DataDir: dataDir, RedisURL: redisURL, Logger: log, Proxy: pc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = n.HTTPServer()
	srv.Start()
	t.Cleanup(srv.Close)
	return &drainNode{n: n, srv: srv, px: n.Proxy()}
}

// drain stops the node as SIGTERM does: /readyz 503, then Shutdown
// (which sends the agents on), then Close. It returns at once; done is
// closed when the node is closed.
func (d *drainNode) drain(t *testing.T) (done <-chan struct{}) {
	d.n.Drain()
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		d.srv.Config.Shutdown(ctx)
		d.n.Close()
	}()
	t.Cleanup(func() { <-ch })
	return ch
}

// replies records each user message the agent answered and can hold
// the answer to one of them.
type replies struct {
	mu   sync.Mutex
	got  []string
	hold map[string]chan struct{} // content -> released when closed
	seen chan string              // every content, as the agent gets it
}

func newReplies() *replies {
	return &replies{hold: map[string]chan struct{}{}, seen: make(chan string, 64)}
}

func (r *replies) reply(content string) string {
	r.mu.Lock()
	r.got = append(r.got, content)
	hold := r.hold[content]
	r.mu.Unlock()
	r.seen <- content
	if hold != nil {
		<-hold
	}
	return "re: " + content
}

func (r *replies) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(slices.Values(r.got))
}

// followEnv is a project, a run and its agent token on shared nodes.
type followEnv struct {
	key, runPath, token string
	runID               string
}

func newFollowEnv(t *testing.T, st store.Store, on *drainNode) followEnv {
	t.Helper()
	ctx := context.Background()
	p, _ := st.CreateProject(ctx, "follow")
	secret, prefix, hash := store.GenerateAPIKey()
	st.CreateAPIKey(ctx, store.NewAPIKey{Label: "t", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true})
	var task, run struct{ ID string }
	proxytest.APICall(t, on.srv.URL, secret, "POST", fmt.Sprintf("/api/projects/%d/tasks/", p.ID), `{"title":"t"}`, http.StatusCreated, &task)
	runs := fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", p.ID, task.ID)
	proxytest.APICall(t, on.srv.URL, secret, "POST", runs, `{}`, http.StatusCreated, &run)
	var tb struct {
		Token string `json:"token"`
		URL   string `json:"ws_url"`
	}
	proxytest.APICall(t, on.srv.URL, secret, "GET", runs+run.ID+"/connection_token?role=agent", "", http.StatusOK, &tb)
	return followEnv{key: secret, runPath: runs + run.ID, token: tb.Token, runID: run.ID}
}

// startAgent runs the reference agent behind lb until the test ends.
func startAgent(t *testing.T, e followEnv, lb *proxytest.Balancer, r *replies) {
	t.Helper()
	ag := agentclient.New(agentclient.Options{
		URL: "ws://runhub.invalid/agent/connect", Token: e.token, Reply: r.reply,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: lb.Dial}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitAgentOn waits until the agent is connected to d and its node's
// claim is in Redis. A node registers a connection before it claims the
// run, so a command sent through another node in between finds no agent
// (400), and a test that then waits for the agent to see it waits for
// ever.
func waitAgentOn(t *testing.T, what string, d *drainNode, redisURL, runID string) {
	t.Helper()
	obs, err := redisrelay.New(context.Background(), redisURL, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	proxytest.WaitFor(t, what, func() bool {
		owner, err := obs.Owner(context.Background(), runID)
		return err == nil && owner != "" && d.px.Connected(runID)
	})
}

// nextSeen is the next content the agent got, or a failure after 15 s.
func nextSeen(t *testing.T, r *replies) string {
	t.Helper()
	select {
	case got := <-r.seen:
		return got
	case <-time.After(15 * time.Second):
		t.Fatal("the agent got no message")
		return ""
	}
}

// result is the outcome of one POST .../command.
type result struct {
	status int
	body   string
	took   time.Duration
}

// send posts a user message to node's command endpoint in the background.
func send(base string, e followEnv, content string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		start := time.Now()
		req, _ := http.NewRequest("POST", base+e.runPath+"/command",
			strings.NewReader(fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":"user_message","params":{"content":%q}}`, content)))
		req.Header.Set("Authorization", "Bearer "+e.key)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- result{status: 0, body: err.Error(), took: time.Since(start)}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		ch <- result{status: res.StatusCode, body: string(b), took: time.Since(start)}
	}()
	return ch
}

func wantAnswer(t *testing.T, what string, ch <-chan result, content string) {
	t.Helper()
	select {
	case r := <-ch:
		want := fmt.Sprintf(`"assistant_message":%q`, "re: "+content)
		if r.status != http.StatusOK || !strings.Contains(r.body, want) {
			t.Fatalf("%s: %d %s after %s, want 200 with %s", what, r.status, r.body, r.took, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
}

func wantWaiting(t *testing.T, what string, ch <-chan result) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s ended while its agent was between nodes: %d %s", what, r.status, r.body)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestCommandsFollowADrainedAgent: the agent is on node A, which drains
// while a command sent through C waits for the agent's answer. That
// answer still arrives (A keeps the connection for the commands in
// flight); a command relayed to A meanwhile, one sent through B while the
// agent is between connections, and one sent once A is gone, all wait and
// reach the agent when it reconnects to B. Each message reaches the agent
// exactly once. Before, the first ended 502 and the others 400.
func TestCommandsFollowADrainedAgent(t *testing.T) {
	rs := redistest.Start(t)
	db, dataDir := teststore.OpenShared(t), t.TempDir()
	st := db(t)
	a := newDrainNode(t, db, dataDir, rs.URL(), proxy.Config{})
	b := newDrainNode(t, db, dataDir, rs.URL(), proxy.Config{})
	c := newDrainNode(t, db, dataDir, rs.URL(), proxy.Config{})
	e := newFollowEnv(t, st, a)
	lb := proxytest.NewBalancer(a.srv.Listener.Addr().String())
	r := newReplies()
	release := make(chan struct{})
	r.hold["in flight"] = release
	startAgent(t, e, lb, r)
	waitAgentOn(t, "the agent on A", a, rs.URL(), e.runID)

	// (a) A command in flight on A when A drains.
	inFlight := send(c.srv.URL, e, "in flight")
	if got := nextSeen(t, r); got != "in flight" {
		t.Fatalf("the agent got %q", got)
	}
	gate := make(chan struct{})
	lb.Point(b.srv.Listener.Addr().String(), gate) // the balancer takes A out
	closed := a.drain(t)
	// A's listener is closed before it sends its agents on.
	proxytest.WaitFor(t, "A to stop accepting", func() bool {
		conn, err := net.Dial("tcp", a.srv.Listener.Addr().String())
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	time.Sleep(50 * time.Millisecond)

	// (d) A command relayed to A while it drains.
	relayed := send(c.srv.URL, e, "relayed to A")
	wantWaiting(t, "the command relayed to the draining node", relayed)

	close(release)
	wantAnswer(t, "the command in flight when A drained", inFlight, "in flight")

	// (b) A command while the agent is between connections.
	between := send(b.srv.URL, e, "between")
	<-closed
	// (c') One sent once A is gone: its claim names a node nobody hears.
	afterA := send(c.srv.URL, e, "after A")
	wantWaiting(t, "the commands sent while the agent moves", between)
	if a.px.Connected(e.runID) || b.px.Connected(e.runID) {
		t.Fatal("the agent should be between connections")
	}

	close(gate) // the agent reaches B
	// The three reach B together: the first written makes the agent busy,
	// so the others may be queued behind it (answered {"queued": true})
	// and delivered when it answers.
	wantAnswerOrQueued(t, "the command relayed to the draining node", relayed, "relayed to A")
	wantAnswerOrQueued(t, "the command sent between connections", between, "between")
	wantAnswerOrQueued(t, "the command sent after A closed", afterA, "after A")
	if !b.px.Connected(e.runID) {
		t.Fatal("the agent is not on B")
	}
	want := []string{"after A", "between", "in flight", "relayed to A"}
	proxytest.WaitFor(t, "the queued messages to reach the agent", func() bool { return len(r.all()) >= len(want) })
	time.Sleep(100 * time.Millisecond) // room for a duplicate to show
	if got := r.all(); !slices.Equal(got, want) {
		t.Fatalf("the agent answered %q, want each once: %q", got, want)
	}
}

// wantAnswerOrQueued is wantAnswer that also takes {"queued": true}: the
// message met a busy agent and waits in the run's queue.
func wantAnswerOrQueued(t *testing.T, what string, ch <-chan result, content string) {
	t.Helper()
	select {
	case r := <-ch:
		answered := strings.Contains(r.body, fmt.Sprintf(`"assistant_message":%q`, "re: "+content))
		queued := strings.Contains(r.body, `"result":{"queued":true}`)
		if r.status != http.StatusOK || !answered && !queued {
			t.Fatalf("%s: %d %s after %s, want 200 with its answer or queued", what, r.status, r.body, r.took)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
}

// TestUnansweredCommandIsNotResent: a command written to an agent whose
// node drains, and that the agent does not answer within the drain's
// grace, has an unknown outcome: the caller gets 502 "Agent server is not
// reachable", and the agent, once on its next node, does not get the
// command again (user_message is not idempotent).
func TestUnansweredCommandIsNotResent(t *testing.T) {
	rs := redistest.Start(t)
	db, dataDir := teststore.OpenShared(t), t.TempDir()
	st := db(t)
	grace := proxy.Config{DrainGrace: 200 * time.Millisecond}
	a := newDrainNode(t, db, dataDir, rs.URL(), grace)
	b := newDrainNode(t, db, dataDir, rs.URL(), grace)
	e := newFollowEnv(t, st, a)
	lb := proxytest.NewBalancer(a.srv.Listener.Addr().String())
	r := newReplies()
	release := make(chan struct{})
	r.hold["slow"] = release
	startAgent(t, e, lb, r)
	waitAgentOn(t, "the agent on A", a, rs.URL(), e.runID)

	slow := send(b.srv.URL, e, "slow")
	nextSeen(t, r)
	lb.Point(b.srv.Listener.Addr().String(), nil)
	<-a.drain(t)
	select {
	case res := <-slow:
		if res.status != http.StatusBadGateway || !strings.Contains(res.body, "Agent server is not reachable") {
			t.Fatalf("the unanswered command: %d %s, want 502", res.status, res.body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the unanswered command got no answer")
	}
	close(release)
	proxytest.WaitFor(t, "the agent on B", func() bool { return b.px.Connected(e.runID) })
	wantAnswer(t, "a command on B", send(b.srv.URL, e, "next"), "next")
	if got, want := r.all(), []string{"next", "slow"}; !slices.Equal(got, want) {
		t.Fatalf("the agent got %q, want %q (the unanswered command not again)", got, want)
	}
}

// TestHandoffAndDeadOwner: a node's handed-off claim names it for the
// ttl given and then expires, and does not touch a claim another node
// took since; a request to a node nobody listens for (killed) is
// ErrAgentMoving, so the proxy waits for the agent elsewhere, not
// ErrAgentGone.
func TestHandoffAndDeadOwner(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := redisrelay.New(ctx, rs.URL(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := redisrelay.New(ctx, rs.URL(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	if _, err := a.Claim(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if err := a.Handoff(ctx, "r1", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if o, _ := a.Owner(ctx, "r1"); o != a.NodeID() {
		t.Fatalf("owner right after the handoff: %q, want A", o)
	}
	proxytest.WaitFor(t, "the handed-off claim to expire", func() bool { o, _ := b.Owner(ctx, "r1"); return o == "" })

	a.Claim(ctx, "r2")
	b.Claim(ctx, "r2") // the agent reconnected to B
	if err := a.Handoff(ctx, "r2", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if o, _ := a.Owner(ctx, "r2"); o != b.NodeID() {
		t.Fatalf("A's late handoff changed B's claim: owner %q", o)
	}

	_, err = b.Request(ctx, "killed-node", proxy.RelayRequest{RunID: "r3", Method: "cancel"})
	if !errors.Is(err, proxy.ErrAgentMoving) {
		t.Fatalf("a request to a node nobody hears: %v, want ErrAgentMoving", err)
	}
}
