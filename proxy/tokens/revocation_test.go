package tokens_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/cmd/node"
	"runhub/hub"
	"runhub/proxy"
	"runhub/proxy/proxytest"
	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/teststore"
)

// Revocation timing in tests: the poll every 50 ms, and every connection
// must be closed within revWindow of the revocation (the contract's 5 s,
// shrunk with the poll interval).
const (
	revPoll   = 50 * time.Millisecond
	revWindow = 2 * time.Second
)

// revNode is a whole node as serve wires it, with revocation polling, on a
// store file that other nodes may share (no broker between them).
type revNode struct {
	srv    *httptest.Server
	st     store.Store
	px     *proxy.Proxy
	tokens *tokens.Tokens
	rv     *tokens.Revocations
}

func newRevNode(t *testing.T, open func(testing.TB) store.Store, keyDir string) *revNode {
	t.Helper()
	ctx := context.Background()
	st := open(t)
	n, err := node.New(ctx, node.Config{Store: st, DataDir: keyDir,
		Revocation: tokens.RevocationConfig{Interval: revPoll, Window: revWindow}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	px, tk, rv := n.Proxy(), n.Tokens(), n.Revocations()
	return &revNode{srv: srv, st: st, px: px, tokens: tk, rv: rv}
}

func (n *revNode) wsURL(path string) string {
	return "ws" + strings.TrimPrefix(n.srv.URL, "http") + path
}

// ended is how a connection ended: the WebSocket close code (-1: none) and
// when.
type ended struct {
	name string
	code websocket.StatusCode
	at   time.Time
}

// follow reads a WebSocket until it ends and reports how on out.
func follow(ctx context.Context, name string, ws *websocket.Conn, out chan<- ended) {
	go func() {
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				out <- ended{name, websocket.CloseStatus(err), time.Now()}
				return
			}
		}
	}()
}

// followSSE reads an SSE response until the server ends it.
func followSSE(name string, body io.ReadCloser, out chan<- ended) {
	go func() {
		defer body.Close()
		io.Copy(io.Discard, body)
		out <- ended{name, -1, time.Now()}
	}()
}

// rpc sends one JSON-RPC request on ws and returns the raw reply (the
// first message carrying its id).
func rpc(t *testing.T, ctx context.Context, ws *websocket.Conn, id int, method, params string) string {
	t.Helper()
	msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`, id, method, params)
	if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("%s: read reply: %v", method, err)
		}
		if strings.Contains(string(b), fmt.Sprintf(`"id":%d`, id)) {
			return string(b)
		}
	}
}

func dialWS(t *testing.T, ctx context.Context, url string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	ws.SetReadLimit(-1)
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func bearerHeader(key string) http.Header { return http.Header{"Authorization": {"Bearer " + key}} }

// getStatus makes a plain GET and returns its status (closing the body).
func getStatus(t *testing.T, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	res.Body.Close()
	return res.StatusCode
}

// TestRevocationClosesConnections (issue 10 item 5): revoking a key the way
// `keys revoke` does (another store handle writing the file) closes, on
// every node sharing the store and without any broker, every stream, /ws
// and agent connection opened with the key or with a token it minted
// (4001 for WebSockets, the SSE response ended) within the window, and its
// tokens get 401 afterwards. Tokens of another key and tokens without
// key_id keep working, and connections opened with them stay open.
func TestRevocationClosesConnections(t *testing.T) {
	dir := t.TempDir()
	db := teststore.OpenShared(t)
	a := newRevNode(t, db, dir)
	b := newRevNode(t, db, dir) // the second node: same store file, same signing key, no broker
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	st := a.st
	p, err := st.CreateProject(ctx, "rev")
	if err != nil {
		t.Fatal(err)
	}
	newKey := func() (string, int64) {
		secret, prefix, hash := store.GenerateAPIKey()
		k, err := st.CreateAPIKey(ctx, store.NewAPIKey{Label: "t", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true})
		if err != nil {
			t.Fatal(err)
		}
		return secret, k.ID
	}
	doomed, doomedID := newKey()
	kept, _ := newKey()
	var task, run struct{ ID string }
	proxytest.APICall(t, a.srv.URL, doomed, "POST", fmt.Sprintf("/api/projects/%d/tasks/", p.ID), `{"title":"t"}`, http.StatusCreated, &task)
	runs := fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", p.ID, task.ID)
	proxytest.APICall(t, a.srv.URL, doomed, "POST", runs, `{}`, http.StatusCreated, &run)
	runPath := runs + run.ID
	var other struct{ ID string } // the agent on node b follows a run of its own
	proxytest.APICall(t, a.srv.URL, doomed, "POST", runs, `{}`, http.StatusCreated, &other)

	mint := func(key, path, query string) string {
		var tb struct {
			Token string `json:"token"`
		}
		proxytest.APICall(t, a.srv.URL, key, "GET", path+"/connection_token"+query, "", http.StatusOK, &tb)
		return tb.Token
	}
	clientTok := mint(doomed, runPath, "")
	agentTok := mint(doomed, runPath, "?role=agent")
	agentTokB := mint(doomed, runs+other.ID, "?role=agent")
	keptTok := mint(kept, runPath, "")
	if c, err := a.tokens.Verify(clientTok, tokens.AudienceClient); err != nil || c.KeyID != doomedID {
		t.Fatalf("minted token: key_id %+v, %v; want %d", c, err, doomedID)
	}
	// A token minted before tokens named their key (no key_id claim).
	legacyTok, _, err := a.tokens.Mint(tokens.Claims{RunID: run.ID, TaskID: task.ID, TeamID: p.ID, DistinctID: "legacy", Scope: "read"}, tokens.AudienceClient)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.tokens.Verify(legacyTok, tokens.AudienceClient); err != nil || c.KeyID != 0 {
		t.Fatalf("legacy token: %+v, %v", c, err)
	}

	out := make(chan ended, 32)
	var closing []string // what must end
	watch := func(name string, ws *websocket.Conn) { closing = append(closing, name); follow(ctx, name, ws, out) }
	for _, n := range []struct {
		name string
		node *revNode
	}{{"a", a}, {"b", b}} {
		// SSE with the key, and with its token.
		for _, c := range []struct{ name, query, key string }{{"sse key", "", doomed}, {"sse token", "?token=" + clientTok, ""}} {
			r, _ := http.NewRequestWithContext(ctx, "GET", n.node.srv.URL+runPath+"/stream"+c.query, nil)
			if c.key != "" {
				r.Header.Set("Authorization", "Bearer "+c.key)
			}
			res, err := http.DefaultClient.Do(r)
			if err != nil || res.StatusCode != http.StatusOK {
				t.Fatalf("%s on %s: %v %v", c.name, n.name, res, err)
			}
			// Wait for the first event, so the stream is surely established.
			if _, err := bufio.NewReader(res.Body).ReadString('\n'); err != nil {
				t.Fatalf("%s on %s: %v", c.name, n.name, err)
			}
			closing = append(closing, c.name+" "+n.name)
			followSSE(c.name+" "+n.name, res.Body, out)
		}
		// The WebSocket flavour of the run stream, with the key's token.
		ws := dialWS(t, ctx, n.node.wsURL(runPath+"/stream?token="+clientTok), nil)
		if _, _, err := ws.Read(ctx); err != nil {
			t.Fatal(err)
		}
		watch("ws stream token "+n.name, ws)
		// /ws opened with the key, with its token, and one that subscribes
		// with its token.
		ws = dialWS(t, ctx, n.node.wsURL("/ws"), bearerHeader(doomed))
		if r := rpc(t, ctx, ws, 1, "subscribe", fmt.Sprintf(`{"run_id":%q}`, run.ID)); !strings.Contains(r, `"last_seq"`) {
			t.Fatalf("subscribe with key: %s", r)
		}
		watch("/ws key "+n.name, ws)
		ws = dialWS(t, ctx, n.node.wsURL("/ws?token="+clientTok), nil)
		if r := rpc(t, ctx, ws, 1, "subscribe", fmt.Sprintf(`{"run_id":%q}`, run.ID)); !strings.Contains(r, `"last_seq"`) {
			t.Fatalf("subscribe with token: %s", r)
		}
		watch("/ws token "+n.name, ws)
		ws = dialWS(t, ctx, n.node.wsURL("/ws"), bearerHeader(kept))
		if r := rpc(t, ctx, ws, 1, "subscribe", fmt.Sprintf(`{"run_id":%q,"token":%q}`, run.ID, clientTok)); !strings.Contains(r, `"last_seq"`) {
			t.Fatalf("subscribe carrying the token: %s", r)
		}
		watch("/ws subscribe token "+n.name, ws)
	}
	// Agents with agent tokens the key minted, one on each node.
	wsAgent := dialWS(t, ctx, a.wsURL("/agent/connect?token="+agentTok), nil)
	proxytest.WaitFor(t, "the agent on a", func() bool { return a.px.Connected(run.ID) })
	watch("agent a", wsAgent)
	wsAgent = dialWS(t, ctx, b.wsURL("/agent/connect?token="+agentTokB), nil)
	proxytest.WaitFor(t, "the agent on b", func() bool { return b.px.Connected(other.ID) })
	watch("agent b", wsAgent)

	// What must survive: /ws with the other key's token, and with a token
	// without key_id, on both nodes.
	survivors := map[string]*websocket.Conn{}
	for _, n := range []struct {
		name string
		node *revNode
	}{{"a", a}, {"b", b}} {
		for name, tok := range map[string]string{"kept": keptTok, "legacy": legacyTok} {
			ws := dialWS(t, ctx, n.node.wsURL("/ws?token="+tok), nil)
			if r := rpc(t, ctx, ws, 1, "subscribe", fmt.Sprintf(`{"run_id":%q}`, run.ID)); !strings.Contains(r, `"last_seq"`) {
				t.Fatalf("subscribe with %s token: %s", name, r)
			}
			survivors[name+" "+n.name] = ws
		}
	}
	select {
	case e := <-out:
		t.Fatalf("%s ended before the revocation (code %d)", e.name, e.code)
	default:
	}

	// keys revoke: another process opens the store file and writes it.
	cli := db(t)
	revokedAt := time.Now()
	if err := cli.RevokeAPIKey(ctx, doomedID); err != nil {
		t.Fatal(err)
	}
	cli.Close()

	timeout := time.After(revWindow + 5*time.Second)
	seen := map[string]bool{}
	for len(seen) < len(closing) {
		select {
		case e := <-out:
			seen[e.name] = true
			if d := e.at.Sub(revokedAt); d > revWindow {
				t.Errorf("%s closed %v after the revocation, want within %v", e.name, d, revWindow)
			}
			if e.code != -1 && e.code != 4001 {
				t.Errorf("%s closed with %d, want 4001", e.name, e.code)
			}
		case <-timeout:
			for _, name := range closing {
				if !seen[name] {
					t.Errorf("%s still open %v after the revocation", name, time.Since(revokedAt))
				}
			}
			t.FailNow()
		}
	}

	// The key's tokens are refused on every node, as is the key.
	for _, n := range []*revNode{a, b} {
		if s := getStatus(t, n.srv.URL+runPath+"/stream?token="+clientTok); s != http.StatusUnauthorized {
			t.Errorf("stream with the revoked key's token: %d, want 401", s)
		}
		if s := getStatus(t, n.srv.URL+"/agent/connect?token="+agentTok); s != http.StatusUnauthorized {
			t.Errorf("agent connect with the revoked key's token: %d, want 401", s)
		}
		ws := dialWS(t, ctx, n.wsURL("/ws?token="+clientTok), nil)
		if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != 4001 {
			t.Errorf("/ws with the revoked key's token: %v, want close 4001", err)
		}
		ws = dialWS(t, ctx, n.wsURL("/ws"), bearerHeader(kept))
		if r := rpc(t, ctx, ws, 1, "subscribe", fmt.Sprintf(`{"run_id":%q,"token":%q}`, run.ID, clientTok)); !strings.Contains(r, fmt.Sprint(hub.CodeForbidden)) {
			t.Errorf("subscribe with the revoked key's token: %s, want %d", r, hub.CodeForbidden)
		}
		ws.Close(websocket.StatusNormalClosure, "")
		proxytest.APICall(t, n.srv.URL, doomed, "GET", runPath, "", http.StatusUnauthorized, nil)
		// Other tokens still work.
		for name, tok := range map[string]string{"kept": keptTok, "legacy": legacyTok} {
			ctx, cancel := context.WithCancel(ctx)
			r, _ := http.NewRequestWithContext(ctx, "GET", n.srv.URL+runPath+"/stream?token="+tok, nil)
			res, err := http.DefaultClient.Do(r)
			if err != nil || res.StatusCode != http.StatusOK {
				t.Errorf("stream with the %s token after the revocation: %v %v", name, res, err)
			}
			cancel()
			if err == nil {
				res.Body.Close()
			}
		}
	}
	for name, ws := range survivors {
		if r := rpc(t, ctx, ws, 2, "unsubscribe", fmt.Sprintf(`{"run_id":%q}`, run.ID)); !strings.Contains(r, `"unsubscribed":true`) {
			t.Errorf("/ws with the %s token after the revocation: %s", name, r)
		}
		ws.Close(websocket.StatusNormalClosure, "")
	}
	// Every connection that ended has unregistered its watches.
	for name, n := range map[string]*revNode{"a": a, "b": b} {
		proxytest.WaitFor(t, "node "+name+"'s watches to be released", func() bool { return n.rv.Watching() == 0 })
	}
}

// TestRevocationsWatch: the poller's contract on its own: a watch fires
// once when its key is revoked (at once when it already is), never after
// its stop, never for key 0; Start fails when the store cannot be read (a
// node must not serve tokens it cannot check); Close stops the polling.
func TestRevocationsWatch(t *testing.T) {
	ctx := context.Background()
	db := teststore.OpenShared(t)
	st := db(t)
	defer st.Close()
	var ids []int64
	for range 2 {
		_, prefix, hash := store.GenerateAPIKey()
		k, err := st.CreateAPIKey(ctx, store.NewAPIKey{Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeRead}, AllProjects: true})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
	}
	rv := tokens.NewRevocations(tokens.RevocationConfig{Store: st, Interval: revPoll, Window: revWindow})
	if err := rv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer rv.Close()

	fired := make(chan struct{})
	stop := rv.Watch(ids[0], func() { close(fired) }) // a second call would panic
	defer stop()
	rv.Watch(ids[0], func() { t.Error("a stopped watch fired") })()
	rv.Watch(0, func() { t.Error("key 0 fired") })()
	if rv.Revoked(ids[0]) || rv.Revoked(0) {
		t.Fatal("revoked before any revocation")
	}
	if err := st.RevokeAPIKey(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fired:
	case <-time.After(revWindow):
		t.Fatal("the watch did not fire within the window")
	}
	if !rv.Revoked(ids[0]) || rv.Revoked(ids[1]) {
		t.Errorf("Revoked: %v %v, want true false", rv.Revoked(ids[0]), rv.Revoked(ids[1]))
	}
	now := false
	rv.Watch(ids[0], func() { now = true })()
	if !now {
		t.Error("a watch of a revoked key did not fire at once")
	}
	if n := rv.Watching(); n != 0 {
		t.Errorf("%d watches left", n)
	}

	// After Close, nothing is polled any more.
	rv.Close()
	if err := st.RevokeAPIKey(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * revPoll)
	if rv.Revoked(ids[1]) {
		t.Error("polled after Close")
	}

	closed := db(t)
	closed.Close()
	if err := tokens.NewRevocations(tokens.RevocationConfig{Store: closed}).Start(ctx); err == nil {
		t.Error("Start on a store that cannot be read succeeded")
	}
}
