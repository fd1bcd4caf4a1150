package hub_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
	"runhub/store"
)

// gateBroker behaves like Redis pub/sub on one node: a message reaches the
// hub only while the run's channel is subscribed, and (un)subscribing takes
// effect when the call completes. The next Unsubscribe can be held open to
// model a slow round trip.
type gateBroker struct {
	mu         sync.Mutex
	h          hub.BrokerEventHandler // set by Start
	subscribed map[string]bool
	calls      []string

	holdUnsub atomic.Bool
	unsubbing chan string   // told when a held Unsubscribe starts
	release   chan struct{} // closed to let it finish
}

func newGateBroker() *gateBroker {
	return &gateBroker{subscribed: map[string]bool{}, unsubbing: make(chan string, 1), release: make(chan struct{})}
}

func (b *gateBroker) Start(_ context.Context, h hub.BrokerEventHandler) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.h = h
	return nil
}

func (b *gateBroker) Publish(_ context.Context, runID string, events []store.Event) error {
	b.mu.Lock()
	ok, h := b.subscribed[runID], b.h
	b.mu.Unlock()
	if ok {
		h.Deliver(runID, events)
	}
	return nil
}

func (b *gateBroker) Subscribe(_ context.Context, runID string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subscribed[runID] = true
	b.calls = append(b.calls, "subscribe")
	return nil
}

func (b *gateBroker) Unsubscribe(_ context.Context, runID string) error {
	if b.holdUnsub.Swap(false) {
		b.unsubbing <- runID
		<-b.release
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subscribed[runID] = false
	b.calls = append(b.calls, "unsubscribe")
	return nil
}

func (b *gateBroker) isSubscribed(run string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subscribed[run]
}

// TestBrokerSubscriptionFollowsSubscribers: the node is subscribed to a
// run's channel exactly while it has subscribers of the run, also when the
// last subscriber leaves while a new one arrives. Otherwise (the hub calls
// Unsubscribe for the old state after Subscribe for the new one) the node
// stays unsubscribed while a client follows the run, and that client gets
// live events only from the periodic position check (every 5 s by
// default), if at all. (Regression test for the bug fixed in 4c68ec0.)
func TestBrokerSubscriptionFollowsSubscribers(t *testing.T) {
	b := newGateBroker()
	e := newHTEnv(t, hub.Config{CheckInterval: 5 * time.Second}, htOptions{
		broker:        b,
		positionCheck: true,
	})
	run := e.newRun()
	e.appendN(run, 0, 2) // seqs 2..3
	ctx := testCtx(t, 30*time.Second)

	// Plain bookkeeping: subscribed while followed, not after.
	a := e.mustSSE(ctx, run, "")
	a.wantIDs(t, 1, 3)
	if !b.isSubscribed(run) {
		t.Fatal("not subscribed to the run's channel while a client follows it")
	}
	e.appendN(run, 2, 1)
	a.wantIDs(t, 4, 4)

	// The last subscriber leaves; its Unsubscribe is slow. A new
	// subscriber arrives meanwhile.
	b.holdUnsub.Store(true)
	a.close()
	select {
	case <-b.unsubbing:
	case <-time.After(5 * time.Second):
		t.Fatal("no Unsubscribe after the last subscriber left")
	}
	c, err := e.openSSE(ctx, run, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	r := readSSESeqs(c)
	// A correct hub may make the new subscription wait for the pending
	// Unsubscribe; give it a moment either way, then let the call finish.
	time.Sleep(300 * time.Millisecond)
	close(b.release)
	r.want(t, "new subscriber", 1, 4)

	// A live event must arrive now, not at the next position check.
	e.appendN(run, 3, 1)
	start := time.Now()
	select {
	case got := <-r.seqs:
		if got != 5 {
			t.Fatalf("got seq %d, want 5", got)
		}
	case err := <-r.errc:
		t.Fatal(err)
	case <-time.After(2 * time.Second):
		b.mu.Lock()
		calls := append([]string(nil), b.calls...)
		b.mu.Unlock()
		t.Fatalf("live event not delivered within 2s; broker subscribed=%v, broker calls %v "+
			"(the old state's Unsubscribe ran after the new state's Subscribe)", b.isSubscribed(run), calls)
	}
	t.Logf("live event after %v", time.Since(start))
	if !b.isSubscribed(run) {
		t.Fatal("not subscribed while a client follows the run")
	}
	c.close()
	waitFor(t, 5*time.Second, "the broker subscription to end", func() bool { return !b.isSubscribed(run) })
}

// dropBroker loses every publish while drop is set, like Redis pub/sub
// during a network blip that go-redis does not notice.
type dropBroker struct {
	handlerOf
	drop atomic.Bool
}

// handlerOf is the hub a test broker delivers to, handed over by Start
// (as Hub.Start does).
type handlerOf struct {
	mu sync.Mutex
	h  hub.BrokerEventHandler
}

func (x *handlerOf) Start(_ context.Context, h hub.BrokerEventHandler) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.h = h
	return nil
}

func (x *handlerOf) handler() hub.BrokerEventHandler {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.h
}

func (b *dropBroker) Publish(_ context.Context, runID string, events []store.Event) error {
	if !b.drop.Load() {
		b.handler().Deliver(runID, events)
	}
	return nil
}
func (b *dropBroker) Subscribe(context.Context, string) error   { return nil }
func (b *dropBroker) Unsubscribe(context.Context, string) error { return nil }

// TestPositionCheckFindsLostTail: when the broker loses the newest events
// of a run and nothing follows them, the position check finds them in the
// store and the subscriber gets them, exactly once, within two intervals.
// A message lost in the middle is found sooner, by the gap the next one
// shows (after the reorder wait).
func TestPositionCheckFindsLostTail(t *testing.T) {
	b := &dropBroker{}
	e := newHTEnv(t, hub.Config{CheckInterval: 300 * time.Millisecond, ReorderWait: 50 * time.Millisecond}, htOptions{
		broker:        b,
		positionCheck: true,
	})
	run := e.newRun()
	ctx := testCtx(t, 30*time.Second)
	c := e.mustSSE(ctx, run, "")
	c.wantIDs(t, 1, 1)
	waitFor(t, 5*time.Second, "the subscription to go live", func() bool { return e.h.LiveForTest() == 1 })

	b.drop.Store(true)
	e.appendN(run, 0, 3) // seqs 2..4, lost
	b.drop.Store(false)
	start := time.Now()
	c.wantIDs(t, 2, 4)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("lost tail found after %v; want within two check intervals", d)
	}

	b.drop.Store(true)
	e.appendN(run, 3, 1) // seq 5, lost
	b.drop.Store(false)
	e.appendN(run, 4, 1) // seq 6 shows the gap
	c.wantIDs(t, 5, 6)
	e.setStatus(run, "completed") // seq 7, then stream-end: nothing was sent twice
	c.wantIDs(t, 7, 7)
	c.wantEnd(t, "completed")
}

// stallBroker delivers in-process, and its Subscribe for one run blocks
// until released or until its context ends, like a Redis that stopped
// answering.
type stallBroker struct {
	handlerOf
	stalled string
	entered chan struct{} // closed when the stalled Subscribe starts
	release chan struct{}
	ended   chan error // the stalled Subscribe's result

	mu         sync.Mutex
	subscribed map[string]bool
}

func (b *stallBroker) Publish(_ context.Context, runID string, events []store.Event) error {
	b.h.Deliver(runID, events)
	return nil
}

func (b *stallBroker) Subscribe(ctx context.Context, runID string) error {
	if runID == b.stalled {
		close(b.entered)
		var err error
		select {
		case <-b.release:
		case <-ctx.Done():
			err = ctx.Err()
		}
		b.ended <- err
		if err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subscribed[runID] = true
	return nil
}

func (b *stallBroker) Unsubscribe(_ context.Context, runID string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subscribed, runID)
	return nil
}

func (b *stallBroker) isSubscribed(run string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subscribed[run]
}

// TestBrokerStallBlocksOnlyItsRun: a broker Subscribe that hangs for one
// run does not hold up subscribers of another run on the same node, and
// the hanging call is given up after BrokerTimeout (the subscriber then
// gets its reply and is served from the store and the position check).
// The hub used to hold one mutex across every broker call, with no
// deadline: one stalled Redis call blocked every subscribe on the node for
// as long as it lasted.
func TestBrokerStallBlocksOnlyItsRun(t *testing.T) {
	const bound = time.Second
	b := &stallBroker{entered: make(chan struct{}), release: make(chan struct{}), ended: make(chan error, 1),
		subscribed: map[string]bool{}}
	e := newHTEnv(t, hub.Config{BrokerTimeout: bound}, htOptions{broker: b})
	t.Cleanup(func() {
		select {
		case <-b.release:
		default:
			close(b.release)
		}
	})
	stalled, other := e.newRun(), e.newRun()
	b.stalled = stalled
	c1, c2 := dialMux(t, e), dialMux(t, e)
	ctx := testCtx(t, 10*time.Second)

	send(t, c1, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, stalled))
	select {
	case <-b.entered:
	case <-ctx.Done():
		t.Fatal("no broker Subscribe for the run")
	}
	start := time.Now()

	// Another run's subscriber is served while the call hangs.
	if m := rpcCall(t, c2, 1, "subscribe", map[string]any{"run_id": other}, bound/2); m.Error != nil {
		t.Fatalf("subscribe to another run: error %d", m.Error.Code)
	}
	select {
	case err := <-b.ended:
		t.Fatalf("the stalled call ended (%v) before the other run's subscribe was answered", err)
	default:
	}
	if !b.isSubscribed(other) {
		t.Fatal("the other run is not subscribed at the broker")
	}
	wantSeqs(t, ctx, c2, other, 1, 1)

	// The hanging call is given up after the bound, and its subscriber
	// answered.
	select {
	case err := <-b.ended:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("stalled Subscribe ended with %v, want its deadline", err)
		}
	case <-time.After(5 * bound):
		t.Fatalf("the stalled Subscribe still runs %v after it started; want it bounded by %v", time.Since(start), bound)
	}
	if d := time.Since(start); d < bound*9/10 {
		t.Errorf("stalled Subscribe gave up after %v, before its %v bound", d, bound)
	}
	if m := readReply(t, ctx, c1, 1); m.Error != nil {
		t.Fatalf("subscribe to the stalled run: error %d", m.Error.Code)
	}
	wantSeqs(t, ctx, c1, stalled, 1, 1)

	// Leaving ends the broker subscriptions.
	c1.Close(websocket.StatusNormalClosure, "")
	c2.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 5*time.Second, "the broker subscriptions to end", func() bool {
		return !b.isSubscribed(other) && !b.isSubscribed(stalled)
	})
}
