package hub_test

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
	"runhub/store"
)

// closedSource is the store as the hub reads it, which counts the reads
// made after the test marked it closed (as serve closes the store once
// Hub.Close has returned).
type closedSource struct {
	hub.EventSource
	closed atomic.Bool
	after  atomic.Int64
}

func (s *closedSource) Events(ctx context.Context, runID string, after int64, limit int) ([]store.Event, error) {
	if s.closed.Load() {
		s.after.Add(1)
		return nil, fmt.Errorf("store closed")
	}
	return s.EventSource.Events(ctx, runID, after, limit)
}

// TestCloseJoinsBackgroundWork: once Hub.Close has returned, nothing the
// hub started reads the store: neither the position check (even when the
// context it was started with is still live, as serve's is until the end)
// nor a gap read whose reorder timer was armed before Close. The hub used
// to leave both running while serve closed the store under them.
func TestCloseJoinsBackgroundWork(t *testing.T) {
	for _, tc := range []struct {
		name          string
		positionCheck bool
		gap           bool
	}{
		{"position check", true, false},
		{"gap timer", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &closedSource{}
			const wait = 100 * time.Millisecond
			e := newHTEnv(t, hub.Config{CheckInterval: 10 * time.Millisecond, ReorderWait: wait}, htOptions{
				source:        func(s hub.EventSource) hub.EventSource { src.EventSource = s; return src },
				positionCheck: tc.positionCheck,
			})
			run := e.newRun()
			// An SSE subscriber: its handler, not the hub, owns the
			// connection.
			e.mustSSE(testCtx(t, 10*time.Second), run, "").wantIDs(t, 1, 1)
			waitFor(t, 5*time.Second, "the subscription to go live", func() bool { return e.h.LiveForTest() == 1 })
			if tc.gap {
				// seq 3 arrives without seq 2: the run waits for it, then
				// reads the store.
				e.h.Deliver(run, []store.Event{{RunID: run, Seq: 3, Kind: store.KindLog, Type: "log", Data: []byte(`{"type":"log"}`)}})
			}
			e.h.Close()
			src.closed.Store(true)
			time.Sleep(3 * wait) // many check intervals, past the reorder wait
			if n := src.after.Load(); n > 0 {
				t.Fatalf("the hub read the store %d times after Close returned", n)
			}
		})
	}
}

// TestDrainTellsClientsToMove: when the node drains, every client is told
// to reconnect elsewhere rather than dropped: a /ws connection and a
// .../stream WebSocket close with 1012 "service restart", an SSE stream
// ends with a retry hint (and no stream-end, so EventSource reconnects),
// and a stream opened during the drain gets the same answer at once.
// Close used to drop the WebSockets without a close frame and end SSE
// without a hint.
func TestDrainTellsClientsToMove(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)

	sse := e.mustSSE(ctx, run, "")
	sse.wantIDs(t, 1, 1)
	stream := e.mustWS(ctx, run, "")
	if _, err := readJSONRPC(ctx, stream); err != nil {
		t.Fatalf("stream WebSocket: first event: %v", err)
	}
	mux := dialMux(t, e)
	send(t, mux, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run))
	if m := readMsg(t, mux); m.Error != nil {
		t.Fatalf("subscribe: %+v", m)
	}
	readMsg(t, mux) // seq 1
	waitFor(t, 5*time.Second, "three live subscriptions", func() bool { return e.h.LiveForTest() == 3 })

	e.h.Drain()

	for name, c := range map[string]*websocket.Conn{"/ws": mux, "stream WebSocket": stream} {
		for {
			_, err := readJSONRPC(ctx, c)
			if err == nil {
				continue
			}
			if st := websocket.CloseStatus(err); st != websocket.StatusServiceRestart {
				t.Fatalf("%s: ended with %v (status %d), want 1012", name, err, st)
			}
			break
		}
	}
	wantRetry := func(c *sseConn) {
		t.Helper()
		ev, err := c.nextData()
		if err != nil || ev.retry != "1000" || ev.event != "" || ev.hasID {
			t.Fatalf("SSE after the drain: %+v, %v; want a retry: 1000 hint", ev, err)
		}
		if ev, err := c.next(); err != io.EOF {
			t.Fatalf("SSE after the retry hint: %+v, %v; want the end", ev, err)
		}
	}
	wantRetry(sse)

	// Streams opened while the node drains are told to move as well.
	wantRetry(e.mustSSE(ctx, run, ""))
	late, err := e.dialWS(ctx, run, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer late.CloseNow()
	if _, _, err := late.Read(ctx); websocket.CloseStatus(err) != websocket.StatusServiceRestart {
		t.Fatalf("stream WebSocket opened during the drain: %v, want 1012", err)
	}
	e.h.Close() // returns: every stream has ended
}
