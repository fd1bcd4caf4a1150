package hub_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

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
