package runs

import (
	"context"
	"errors"
	"testing"
	"time"

	"runhub/store"
)

type valueKey struct{}

// TestPublishCtx: a publish's context has the request's values, none of
// its cancellation, a deadline that ends it (Done closed, Err and Cause
// DeadlineExceeded, derived contexts ended too), and stop ends it as a
// CancelFunc would; whichever comes first is what Err says.
func TestPublishCtx(t *testing.T) {
	req, cancelReq := context.WithCancel(context.WithValue(context.Background(), valueKey{}, "v"))
	cancelReq()

	c := newPublishCtx(req, 50*time.Millisecond)
	if c.Value(valueKey{}) != "v" {
		t.Errorf("value %v, want the request's", c.Value(valueKey{}))
	}
	if d, ok := c.Deadline(); !ok || time.Until(d) > 50*time.Millisecond || time.Until(d) < 0 {
		t.Errorf("deadline %v %v, want within 50 ms", d, ok)
	}
	if c.Err() != nil || context.Cause(c) != nil {
		t.Fatalf("a live publish context: Err %v, Cause %v (the request's cancellation leaked)", c.Err(), context.Cause(c))
	}
	child, cancelChild := context.WithCancel(c)
	defer cancelChild()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed at the deadline")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) || !errors.Is(context.Cause(c), context.DeadlineExceeded) {
		t.Errorf("after the deadline: Err %v, Cause %v", c.Err(), context.Cause(c))
	}
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a derived context outlived the deadline")
	}
	c.stop() // after the deadline: changes nothing
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Errorf("stopped after the deadline: Err %v", c.Err())
	}

	// Stopped before the deadline, Done asked before or after.
	for _, before := range []bool{true, false} {
		c := newPublishCtx(req, time.Hour)
		var done <-chan struct{}
		if before {
			done = c.Done()
		}
		c.stop()
		if !before {
			done = c.Done()
		}
		select {
		case <-done:
		default:
			t.Errorf("Done asked before stop %v: not closed by stop", before)
		}
		if !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("Done asked before stop %v: Err %v, want Canceled", before, c.Err())
		}
	}

	// Past its deadline without a timer: Err says so, Done is closed.
	c = newPublishCtx(req, -time.Second)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Errorf("past the deadline: Err %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Error("past the deadline: Done not closed")
	}
	c.stop()
}

// ctxIgnorer publishes without looking at its context, as the node's
// in-memory broker does.
type ctxIgnorer struct{}

func (ctxIgnorer) Publish(context.Context, string, []store.Event) error { return nil }

// maxPublishAllocs bounds the allocations of handing an append's events
// to a publisher that does not look at its context: the context's two
// (publishCtx and its WithoutCancel) and no timer.
const maxPublishAllocs = 2

// TestPublishAllocs: a publish to a broker that never blocks sets no timer
// and allocates no more than maxPublishAllocs.
func TestPublishAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's own allocations are counted too")
	}
	svc := &Service{pub: ctxIgnorer{}}
	res := &store.MutationResult{Events: []store.Event{{RunID: "r", Seq: 1, Kind: store.KindLog, Data: []byte(`{}`)}}}
	ctx := context.WithValue(context.Background(), valueKey{}, "v")
	got := testing.AllocsPerRun(100, func() { svc.publish(ctx, "r", res) })
	if got > maxPublishAllocs {
		t.Errorf("%.1f allocations per publish, want at most %d", got, maxPublishAllocs)
	}
}
