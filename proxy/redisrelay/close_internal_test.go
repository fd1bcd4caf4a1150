package redisrelay

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"runhub/hub/redis/redistest"
	"runhub/proxy"
	"runhub/proxy/proxytest"
)

// stallHandler holds the relay's receive loop in its first eviction until
// release is closed, and counts the commands it is handed.
type stallHandler struct {
	stalled  chan struct{} // closed when the loop is held
	release  chan struct{}
	held     atomic.Bool
	commands atomic.Int32
}

func (h *stallHandler) LocalCommand(context.Context, proxy.RelayRequest) (*proxy.Response, error) {
	h.commands.Add(1)
	return &proxy.Response{JSONRPC: "2.0", Result: json.RawMessage(`{}`)}, nil
}

func (h *stallHandler) EvictLocal(string) {
	if h.held.CompareAndSwap(false, true) {
		close(h.stalled)
		<-h.release
	}
}

// TestCloseAnswersEveryDeliveredRequest: a request that Redis delivered to
// a node's channel (PUBLISH counted the node) while the node's relay was
// behind in reading it, and that node closes, is answered "moving" (its
// sender follows the agent), never dropped: before, Close closed the
// subscription with the request unread, and its sender waited for a reply
// until its deadline (the command relayed to a draining node: no answer).
// The closing relay does not hand the request to its handler.
func TestCloseAnswersEveryDeliveredRequest(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := New(ctx, rs.URL(), log)
	if err != nil {
		t.Fatal(err)
	}
	h := &stallHandler{stalled: make(chan struct{}), release: make(chan struct{})}
	if err := a.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	opt, _ := goredis.ParseURL(rs.URL())
	other := goredis.NewClient(opt) // another node
	defer other.Close()
	replies := other.Subscribe(ctx, nodePrefix+"asker")
	defer replies.Close()
	if _, err := replies.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	publish := func(m message) int64 {
		t.Helper()
		b, _ := json.Marshal(m)
		n, err := other.Publish(ctx, nodePrefix+a.NodeID(), b).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// A's loop is held; what follows fills the client's buffer (100
	// messages), so the request stays unread on A's connection.
	publish(message{Kind: "evict", RunID: "r"})
	<-h.stalled
	for range 300 {
		publish(message{Kind: "evict", RunID: "r"})
	}
	req := proxy.RelayRequest{RunID: "r", Method: "user_message", Params: json.RawMessage(`{"content":"hi"}`), ID: 1}
	if n := publish(message{Kind: "req", Corr: "c1", ReplyTo: "asker", Req: &req}); n != 1 {
		t.Fatalf("the request reached %d nodes, want A", n)
	}

	closed := make(chan struct{})
	go func() { defer close(closed); a.Close() }()
	// A is off its channel at Redis, then its loop goes on.
	proxytest.WaitFor(t, "A to leave its channel", func() bool {
		subs, err := other.PubSubNumSub(ctx, nodePrefix+a.NodeID()).Result()
		return err == nil && subs[nodePrefix+a.NodeID()] == 0
	})
	close(h.release)

	select {
	case msg := <-replies.Channel():
		var rep message
		if err := json.Unmarshal([]byte(msg.Payload), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Kind != "rep" || rep.Corr != "c1" || rep.Err != "moving" {
			t.Fatalf("the reply: %+v, want a moving reply to c1", rep)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request delivered to the closing node got no answer")
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if n := h.commands.Load(); n != 0 {
		t.Fatalf("the closing relay handed %d commands to its handler", n)
	}
}

// TestCloseWithRedisGone: Close waits for Redis to confirm the
// unsubscribe at most unsubscribeWait, so a node whose Redis is gone or
// does not answer still shuts down.
func TestCloseWithRedisGone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cut   func(t *testing.T, rs *redistest.Server)
		least time.Duration
	}{
		{"stopped", func(_ *testing.T, rs *redistest.Server) { rs.Stop() }, 0},
		{"paused", func(t *testing.T, rs *redistest.Server) {
			opt, _ := goredis.ParseURL(rs.URL())
			c := goredis.NewClient(opt)
			defer c.Close()
			if err := c.Do(context.Background(), "CLIENT", "PAUSE", "20000", "ALL").Err(); err != nil {
				t.Fatal(err)
			}
		}, unsubscribeWait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := redistest.Start(t)
			ctx := context.Background()
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			a, err := New(ctx, rs.URL(), log)
			if err != nil {
				t.Fatal(err)
			}
			h := &stallHandler{stalled: make(chan struct{}), release: make(chan struct{})}
			close(h.release)
			if err := a.Start(ctx, h); err != nil {
				t.Fatal(err)
			}
			tc.cut(t, rs)
			start := time.Now()
			closed := make(chan struct{})
			go func() { defer close(closed); a.Close() }()
			select {
			case <-closed:
			case <-time.After(unsubscribeWait + 5*time.Second):
				t.Fatalf("Close still runs after %s", time.Since(start))
			}
			if took := time.Since(start); took < tc.least {
				t.Fatalf("Close returned after %s, want it to wait %s for the confirmation", took, tc.least)
			}
		})
	}
}
