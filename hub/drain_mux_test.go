package hub_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

// TestDrainTellsBusyMuxClientsToMove: /ws connections that are pinged and
// get events while the hub drains are all told to move (1012), none is
// cut. Two races used to cut some (the client read EOF, as after a crash,
// which the system test saw once in ~300 closes of a rolling restart): a
// ping in flight when the connection's context ended dropped the
// connection (coder/websocket closes on a write's context end), and the
// handler cancelled the stream's reads (dropping the connection) while
// jsonrpc2's own goroutine was still sending the 1012. Pings every
// millisecond and several rounds make the windows wide enough to hit.
func TestDrainTellsBusyMuxClientsToMove(t *testing.T) {
	const rounds, clients = 8, 50
	for round := range rounds {
		e := newHTEnv(t, hub.Config{PingInterval: time.Millisecond})
		run := e.newRun()
		ctx := testCtx(t, 20*time.Second)
		conns := make([]*websocket.Conn, clients)
		for i := range conns {
			conns[i] = dialMux(t, e)
			send(t, conns[i], fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run))
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { // events keep coming during the drain
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				e.tryAppend(run, []string{logEntry(i, 10)})
			}
		})
		var cut atomic.Int64
		for _, c := range conns {
			wg.Go(func() {
				for {
					_, err := readJSONRPC(ctx, c)
					if err == nil {
						continue
					}
					if websocket.CloseStatus(err) != websocket.StatusServiceRestart {
						cut.Add(1)
						t.Logf("round %d: a /ws connection ended with %v, want 1012", round, err)
					}
					return
				}
			})
		}
		time.Sleep(200 * time.Millisecond)
		e.h.Drain()
		time.Sleep(100 * time.Millisecond)
		close(stop)
		wg.Wait()
		if n := cut.Load(); n > 0 {
			t.Fatalf("round %d: %d of %d /ws connections were cut at the drain instead of told to move (1012)", round, n, clients)
		}
		e.h.Close()
	}
}
