package hub_test

// Tests of the /ws connection limits: the authentication deadline, the
// subscription cap and the cap on commands in flight.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/hub"
	"runhub/proxy/tokens"
	"runhub/store"
)

// dialWSAs opens /ws with the given header pairs and query (no credentials
// unless given).
func dialWSAs(t *testing.T, e *htEnv, query string, hdr ...string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/ws"
	if query != "" {
		url += "?" + query
	}
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// rpcCall sends a request and returns its reply, skipping notifications;
// it fails the test when no reply comes within wait.
func rpcCall(t *testing.T, c *websocket.Conn, id int, method string, params any, wait time.Duration) rpcMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("%s: write: %v", method, err)
	}
	return readReply(t, ctx, c, id)
}

func readReply(t *testing.T, ctx context.Context, c *websocket.Conn, id int) rpcMsg {
	t.Helper()
	for {
		b, err := readJSONRPC(ctx, c)
		if err != nil {
			t.Fatalf("waiting for the reply to request %d: %v", id, err)
		}
		var m rpcMsg
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		if m.ID != nil && *m.ID == id {
			return m
		}
	}
}

// wantClosed reads until the connection ends and wants close code code.
func wantClosed(t *testing.T, c *websocket.Conn, code websocket.StatusCode, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		if _, _, err := c.Read(ctx); err != nil {
			if got := websocket.CloseStatus(err); got != code {
				t.Fatalf("connection ended with %v (close status %d), want close %d", err, got, code)
			}
			return
		}
	}
}

func (e *htEnv) connectionToken(run string) string {
	e.t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	e.mustJSON("GET", e.runPath(run)+"/connection_token/", "", http.StatusOK, &tok)
	return tok.Token
}

func newTokens(t *testing.T) *tokens.Tokens {
	t.Helper()
	tk, err := tokens.Load(tokens.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestWSAuthDeadline: a /ws connection that carries no credentials and
// does not authenticate within the deadline is closed with 4001; one that
// subscribes with a valid token in time, or that carried an API key or a
// connection token at the upgrade, stays open past it.
func TestWSAuthDeadline(t *testing.T) {
	const deadline = 300 * time.Millisecond
	e := newHTEnv(t, hub.Config{AuthTimeout: deadline}, htOptions{tokens: newTokens(t)})
	run := e.newRun()
	tok := e.connectionToken(run)

	opened := time.Now()
	idle := dialWSAs(t, e, "")
	badToken := dialWSAs(t, e, "")
	subscriber := dialWSAs(t, e, "")
	withKey := dialWSAs(t, e, "", "Authorization", "Bearer "+e.key)
	withToken := dialWSAs(t, e, "token="+tok)

	if m := rpcCall(t, badToken, 1, "subscribe", map[string]any{"run_id": run, "token": "nope"}, 5*time.Second); m.Error == nil || m.Error.Code != hub.CodeForbidden {
		t.Fatalf("subscribe with a bad token: %+v", m)
	}
	if m := rpcCall(t, subscriber, 1, "subscribe", map[string]any{"run_id": run, "token": tok}, 5*time.Second); m.Error != nil {
		t.Fatalf("subscribe with a valid token: error %d", m.Error.Code)
	}

	wantClosed(t, idle, 4001, 10*time.Second)
	if d := time.Since(opened); d < deadline {
		t.Errorf("closed after %v, before the %v deadline", d, deadline)
	}
	wantClosed(t, badToken, 4001, 10*time.Second)

	time.Sleep(3 * deadline) // well past the deadline for everyone
	for i, c := range []*websocket.Conn{subscriber, withKey, withToken} {
		if m := rpcCall(t, c, 10+i, "unsubscribe", map[string]any{"run_id": run}, 5*time.Second); m.Error != nil {
			t.Fatalf("connection %d: unsubscribe after the deadline: error %d", i, m.Error.Code)
		}
	}
	// The token-authenticated subscriber still gets live events.
	if m := rpcCall(t, subscriber, 20, "subscribe", map[string]any{"run_id": run, "token": tok, "after": "latest"}, 5*time.Second); m.Error != nil {
		t.Fatalf("subscribe again: error %d", m.Error.Code)
	}
	e.appendN(run, 0, 1)
	wantSeqs(t, testCtx(t, 5*time.Second), subscriber, run, 2, 2)
}

// TestWSSubscriptionCap: a connection follows at most MaxSubscriptions
// runs; one more is refused with -32005 and not subscribed, subscribing
// again to a followed run is not refused, and a subscription whose stream
// ended makes room.
func TestWSSubscriptionCap(t *testing.T) {
	const limit = 3
	e := newHTEnv(t, hub.Config{MaxSubscriptions: limit})
	c := dialMux(t, e)
	runs := make([]string, limit+1)
	for i := range runs {
		runs[i] = e.newRun()
	}
	for i, run := range runs[:limit] {
		if m := rpcCall(t, c, i+1, "subscribe", map[string]any{"run_id": run, "after": "latest"}, 5*time.Second); m.Error != nil {
			t.Fatalf("subscribe %d: error %d", i+1, m.Error.Code)
		}
	}
	extra := runs[limit]
	m := rpcCall(t, c, 10, "subscribe", map[string]any{"run_id": extra, "after": "latest"}, 5*time.Second)
	if m.Error == nil || m.Error.Code != hub.CodeTooManySubscriptions {
		t.Fatalf("subscription %d: %+v, want error %d", limit+1, m, hub.CodeTooManySubscriptions)
	}
	if _, subs := e.h.StateForTest(); subs != limit {
		t.Fatalf("%d subscriptions in the hub, want %d", subs, limit)
	}
	if m := rpcCall(t, c, 11, "subscribe", map[string]any{"run_id": runs[0], "after": "latest"}, 5*time.Second); m.Error != nil {
		t.Fatalf("subscribing again to a followed run at the cap: error %d", m.Error.Code)
	}
	// The refused run's events never reach the connection (they would
	// come first); the followed run's do.
	e.appendN(extra, 0, 1)
	e.appendN(runs[0], 0, 1)
	wantSeqs(t, testCtx(t, 5*time.Second), c, runs[0], 2, 2)

	// A run that ends frees its place.
	e.setStatus(runs[1], "completed")
	for ctx := testCtx(t, 5*time.Second); ; {
		n, b, err := readNote(ctx, c)
		if err != nil {
			t.Fatalf("waiting for stream_end: %v", err)
		}
		if n.Method == "stream_end" {
			if n.Params.RunID != runs[1] {
				t.Fatalf("unexpected %s", b)
			}
			break
		}
	}
	if m := rpcCall(t, c, 12, "subscribe", map[string]any{"run_id": extra}, 5*time.Second); m.Error != nil {
		t.Fatalf("subscribe after a followed run ended: error %d", m.Error.Code)
	}
	if _, subs := e.h.StateForTest(); subs != limit {
		t.Fatalf("%d subscriptions in the hub, want %d", subs, limit)
	}
}

// TestWSCommandCap: a connection has at most MaxCommands commands waiting
// for their agents; one more is answered -32006 at once, and a finished
// command frees its place.
func TestWSCommandCap(t *testing.T) {
	const limit = 2
	entered := make(chan string, 16)
	release := make(chan struct{})
	var releaseOnce sync.Once
	e := newHTEnv(t, hub.Config{MaxCommands: limit,
		Commands: func(ctx context.Context, run *store.Run, method string, _ json.RawMessage) (json.RawMessage, *jsonrpc2.Error) {
			entered <- method
			select {
			case <-release:
				return json.RawMessage(`{"ok":true}`), nil
			case <-ctx.Done():
				return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeInternalError, Message: ctx.Err().Error()}
			}
		}})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	c := dialMux(t, e)
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)
	sendCmd := func(id int) {
		b := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"command","params":{"run_id":%q,"method":"cancel"}}`, id, run)
		if err := c.Write(ctx, websocket.MessageText, []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	for id := 1; id <= limit; id++ {
		sendCmd(id)
	}
	for range limit {
		select {
		case <-entered:
		case <-ctx.Done():
			t.Fatal("commands did not reach the commander")
		}
	}
	if m := rpcCall(t, c, 100, "command", map[string]any{"run_id": run, "method": "cancel"}, 5*time.Second); m.Error == nil || m.Error.Code != hub.CodeTooManyCommands {
		t.Fatalf("command %d: %+v, want error %d", limit+1, m, hub.CodeTooManyCommands)
	}
	select {
	case <-entered:
		t.Fatal("the refused command reached the commander")
	default:
	}
	// Other requests are not held up by the commands in flight.
	if m := rpcCall(t, c, 101, "subscribe", map[string]any{"run_id": run}, 5*time.Second); m.Error != nil {
		t.Fatalf("subscribe with commands in flight: error %d", m.Error.Code)
	}
	releaseOnce.Do(func() { close(release) })
	for done := 0; done < limit; {
		b, err := readJSONRPC(ctx, c)
		if err != nil {
			t.Fatalf("waiting for the commands' replies: %v", err)
		}
		var m rpcMsg
		json.Unmarshal(b, &m)
		if m.ID == nil {
			continue // the subscription's events
		}
		if *m.ID > limit || m.Error != nil || string(m.Result) != `{"ok":true}` {
			t.Fatalf("command reply %s", b)
		}
		done++
	}
	if m := rpcCall(t, c, 102, "command", map[string]any{"run_id": run, "method": "cancel"}, 5*time.Second); m.Error != nil {
		t.Fatalf("command after the others finished: error %d", m.Error.Code)
	}
}
