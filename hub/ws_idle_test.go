package hub_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

// TestWSMuxIdleGoroutines: an idle subscribed /ws connection costs at most
// one server goroutine (its reader): no writer or pinger waits per
// connection. The client's side of a connection that is not being read
// costs no goroutine, so the process-wide count shows the server's.
func TestWSMuxIdleGoroutines(t *testing.T) {
	const (
		n = 40
		// perConn is the bound with an allowance for the goroutines
		// the test's own machinery starts and ends meanwhile (the old
		// endpoint took 3 per connection).
		perConn = 1.15
	)
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendLog(run, logEntry(1, 10))
	settle := func() int {
		// Goroutines of finished handlers and writers end shortly after.
		prev := -1
		for i := 0; i < 50; i++ {
			runtime.GC()
			g := runtime.NumGoroutine()
			if g == prev {
				return g
			}
			prev = g
			time.Sleep(20 * time.Millisecond)
		}
		return prev
	}
	// A first connection warms the server up (its listener's goroutines).
	warm := dialMux(t, e)
	send(t, warm, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run))
	readMsg(t, warm)
	readMsg(t, warm)
	before := settle()
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c := dialMux(t, e)
		conns[i] = c
		send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run))
		if m := readMsg(t, c); m.Error != nil {
			t.Fatalf("subscribe: %+v", m)
		}
		if m := readMsg(t, c); m.Method != "event" { // the catch-up
			t.Fatalf("want the event, got %+v", m)
		}
	}
	var per float64
	deadline := time.Now().Add(5 * time.Second)
	for {
		per = float64(settle()-before) / n
		if per <= perConn || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("%.2f goroutines per idle subscribed /ws connection", per)
	if per > perConn {
		t.Fatalf("%.2f goroutines per idle subscribed /ws connection, want at most %.2f", per, perConn)
	}
	// The idle connections are live subscriptions: a new event reaches
	// every one of them.
	e.appendLog(run, logEntry(2, 10))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range conns {
		wantSeqs(t, ctx, c, run, 2, 2)
	}
}
