package hub_test

import (
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

// TestUnsubscribeCleanup: once every client of every run has gone (closed
// by the client, cut mid catch-up, or ended by the server) the hub holds no
// run state and no subscription.
func TestUnsubscribeCleanup(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	ctx := testCtx(t, 30*time.Second)
	var runIDs []string
	for i := 0; i < 3; i++ {
		run := e.newRun()
		e.appendN(run, 0, 5)
		runIDs = append(runIDs, run)
	}
	var sses []*sseConn
	var wss []*websocket.Conn
	for _, run := range runIDs {
		for j := 0; j < 4; j++ {
			c := e.mustSSE(ctx, run, "")
			c.wantIDs(t, 1, 6)
			sses = append(sses, c)
			w := e.mustWS(ctx, run, "")
			wantSeqs(t, ctx, w, run, 1, 6)
			wss = append(wss, w)
		}
	}
	if r, s := e.h.StateForTest(); r != 3 || s != 24 {
		t.Fatalf("hub holds %d runs, %d subscriptions; want 3, 24", r, s)
	}
	for _, run := range runIDs {
		e.appendN(run, 5, 1)
	}
	// Half the WebSockets close properly, half drop the connection; the
	// SSE clients just go away.
	for i, w := range wss {
		if i%2 == 0 {
			w.Close(websocket.StatusNormalClosure, "bye")
		} else {
			w.CloseNow()
		}
	}
	for _, c := range sses {
		c.close()
	}
	waitFor(t, 5*time.Second, "every subscription to end", func() bool {
		r, s := e.h.StateForTest()
		return r == 0 && s == 0
	})

	// Clients that leave in the middle of a long catch-up.
	big := runIDs[0]
	for i := 0; i < 10; i++ {
		e.appendN(big, 100+i*100, 100)
	}
	for i := 0; i < 6; i++ {
		cctx, cancel := context.WithCancel(ctx)
		if i%2 == 0 {
			c := e.mustSSE(cctx, big, "")
			c.wantIDs(t, 1, int64(10*(i+1)))
			c.close()
		} else {
			w, err := e.dialWS(cctx, big, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			wantSeqs(t, cctx, w, big, 1, int64(10*(i+1)))
			w.CloseNow()
		}
		cancel()
	}
	// And one ended by the server (stream end) next to one that stays.
	stays := e.mustSSE(ctx, runIDs[1], "start=latest")
	ends := e.mustSSE(ctx, runIDs[2], "start=latest")
	waitFor(t, 5*time.Second, "2 subscriptions", func() bool { _, s := e.h.StateForTest(); return s == 2 })
	e.setStatus(runIDs[2], "completed")
	ends.wantIDs(t, 8, 8)
	ends.wantEnd(t, "completed")
	waitFor(t, 5*time.Second, "one run left", func() bool {
		r, s := e.h.StateForTest()
		return r == 1 && s == 1
	})
	stays.close()
	waitFor(t, 5*time.Second, "every subscription to end", func() bool {
		r, s := e.h.StateForTest()
		return r == 0 && s == 0
	})
}
