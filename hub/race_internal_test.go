package hub

import (
	"context"
	"sync"
	"testing"
	"time"

	"runhub/store"
)

// emptySource is a store with no events.
type emptySource struct{}

func (emptySource) Events(context.Context, string, int64, int) ([]store.Event, error) {
	return nil, nil
}

func (emptySource) EventsBefore(context.Context, string, int64, int, int) ([]store.Event, error) {
	return nil, nil
}

// TestSubscribeRacesLastUnsubscribe: a subscription that starts while the
// run's last other subscription ends must land on the run state the hub
// delivers to. Otherwise it is registered on a state the hub already
// dropped: Deliver never reaches it (the client waits forever for live
// events), and its own unsubscribe later drops the broker subscription of
// whoever subscribed next.
//
// Regression test: register used to look the state up under h.mu and join
// it after releasing h.mu (fixed in 4c68ec0); the window is tiny, so the
// test repeats the race for a second (the old code failed within ~10^4
// iterations).
func TestSubscribeRacesLastUnsubscribe(t *testing.T) {
	h, err := New(Config{Store: emptySource{}, Broker: NewMemoryBroker()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nop := func(context.Context, [][]byte) error { return nil }
	const run = "run"
	deadline := time.Now().Add(time.Second)
	iters, orphans := 0, 0
	for time.Now().Before(deadline) && orphans == 0 {
		iters++
		s0 := h.subscribe(ctx, newConn(kindSSE, 1<<20, 0, nop), run, 0, 0, store.StatusInProgress)
		var s1 *sub
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); h.unsubscribe(s0) }()
		go func() {
			defer wg.Done()
			s1 = h.subscribe(ctx, newConn(kindSSE, 1<<20, 0, nop), run, 0, 0, store.StatusInProgress)
		}()
		wg.Wait()
		h.mu.Lock()
		cur := h.runs[run]
		h.mu.Unlock()
		if cur != s1.run {
			orphans++
			// What the client sees: once caught up, a published event
			// never reaches it.
			if err := s1.c.flush(ctx, h); err != nil {
				t.Fatal(err)
			}
			h.Deliver(run, []store.Event{{RunID: run, Seq: 1, Kind: store.KindLog, Data: []byte(`{"type":"log"}`)}})
			s1.c.mu.Lock()
			queued := len(s1.c.frames)
			s1.c.mu.Unlock()
			t.Logf("orphaned subscription: %d frames queued after a published event (want 1)", queued)
		}
		h.unsubscribe(s1)
		h.mu.Lock()
		left := len(h.runs)
		h.mu.Unlock()
		if left != 0 && cur == s1.run {
			t.Fatalf("iteration %d: %d run states left after every subscription ended", iters, left)
		}
		if left != 0 {
			h.mu.Lock()
			delete(h.runs, run) // reset for the next round
			h.mu.Unlock()
		}
	}
	if orphans > 0 {
		t.Fatalf("after %d iterations: a new subscription was registered on a run state the hub had already dropped "+
			"(the state must be joined while h.mu is held)", iters)
	}
	t.Logf("%d iterations without an orphaned subscription", iters)
}
