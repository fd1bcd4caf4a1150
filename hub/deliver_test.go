package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
	"runhub/store"
	"runhub/store/runs"
)

// seqReader reads a stream in the background and hands over the seqs of
// its stored events (ephemeral events and keepalives are dropped; a
// stream end is -1).
type seqReader struct {
	seqs chan int64
	errc chan error
	seen atomic.Int64 // the highest seq read from the connection
}

// got records a seq read from the connection, then queues it for want.
func (r *seqReader) got(seq int64) {
	if seq > r.seen.Load() {
		r.seen.Store(seq)
	}
	r.seqs <- seq
}

func readSSESeqs(c *sseConn) *seqReader {
	r := &seqReader{seqs: make(chan int64, 1<<16), errc: make(chan error, 1)}
	go func() {
		for {
			ev, err := c.next()
			if err != nil {
				r.errc <- err
				return
			}
			switch {
			case ev.event == "stream-end":
				r.seqs <- -1
			case ev.hasID:
				r.got(ev.id)
			}
		}
	}()
	return r
}

func readWSSeqs(ctx context.Context, c *websocket.Conn) *seqReader {
	r := &seqReader{seqs: make(chan int64, 1<<16), errc: make(chan error, 1)}
	go func() {
		for {
			n, _, err := readNote(ctx, c)
			if err != nil {
				r.errc <- err
				return
			}
			switch {
			case n.Method == "stream_end":
				r.seqs <- -1
			case n.Params.Seq != nil:
				r.got(*n.Params.Seq)
			}
		}
	}()
	return r
}

// want reads exactly the seqs from..to.
func (r *seqReader) want(t testing.TB, name string, from, to int64) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for want := from; want <= to; want++ {
		// Seqs read before a stream failure come first.
		select {
		case got := <-r.seqs:
			if got != want {
				t.Fatalf("%s: got seq %d, want %d", name, got, want)
			}
			continue
		default:
		}
		select {
		case got := <-r.seqs:
			if got != want {
				t.Fatalf("%s: got seq %d, want %d", name, got, want)
			}
		case err := <-r.errc:
			r.errc <- err // keep reporting it
			t.Fatalf("%s: stream failed waiting for seq %d: %v", name, want, err)
		case <-timeout:
			t.Fatalf("%s: timed out waiting for seq %d", name, want)
		}
	}
}

// quiet wants no stored event for d.
func (r *seqReader) quiet(t testing.TB, name string, d time.Duration) {
	t.Helper()
	select {
	case got := <-r.seqs:
		t.Fatalf("%s: unexpected seq %d", name, got)
	case err := <-r.errc:
		select {
		case got := <-r.seqs:
			t.Fatalf("%s: unexpected seq %d", name, got)
		default:
		}
		t.Fatalf("%s: stream failed: %v", name, err)
	case <-time.After(d):
	}
}

// quietAppend stores entries without publishing them.
func (e *htEnv) quietAppend(run string, from, n int) []store.Event {
	e.t.Helper()
	raw := make([]json.RawMessage, n)
	for i := range raw {
		raw[i] = json.RawMessage(logEntry(from+i, 0))
	}
	quiet, err := runs.New(runs.Config{Store: e.st, Publisher: runs.NoPublisher{}})
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := quiet.AppendLog(context.Background(), e.ref(run), raw, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Events
}

// subscribers opens an SSE and a WebSocket subscriber and waits until both
// have the run's first event.
func (e *htEnv) subscribers(ctx context.Context, run string) map[string]*seqReader {
	e.t.Helper()
	rs := map[string]*seqReader{
		"sse": readSSESeqs(e.mustSSE(ctx, run, "")),
		"ws":  readWSSeqs(ctx, e.mustWS(ctx, run, "")),
	}
	for name, r := range rs {
		r.want(e.t, name, 1, 1)
	}
	return rs
}

// TestDeliverGapBackfill: events stored but never published are found in
// the store when a later message shows the gap.
func TestDeliverGapBackfill(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 30*time.Second)
	subs := e.subscribers(ctx, run)

	a := e.quietAppend(run, 0, 3) // 2..4
	b := e.quietAppend(run, 3, 2) // 5..6
	c := e.quietAppend(run, 5, 1) // 7
	for name, r := range subs {
		r.quiet(t, name, 50*time.Millisecond)
	}
	e.h.Deliver(run, c) // only the last message arrives
	for name, r := range subs {
		r.want(t, name, 2, 7)
	}
	// Stale and duplicate messages deliver nothing twice.
	e.h.Deliver(run, a)
	e.h.Deliver(run, c)
	e.h.Deliver(run, b)
	e.h.Deliver(run, append(append([]store.Event{}, a...), b...))
	for name, r := range subs {
		r.quiet(t, name, 50*time.Millisecond)
	}
	e.appendN(run, 6, 1) // 8, published
	for name, r := range subs {
		r.want(t, name, 8, 8)
	}
	// A message that repeats old events and carries new ones: only the new.
	d := e.quietAppend(run, 7, 2) // 9..10
	e.h.Deliver(run, append(append([]store.Event{}, c...), d...))
	for name, r := range subs {
		r.want(t, name, 9, 10)
		r.quiet(t, name, 30*time.Millisecond)
	}
}

// TestDeliverReordered: messages that arrive out of order still give every
// seq once, in order.
func TestDeliverReordered(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 30*time.Second)
	subs := e.subscribers(ctx, run)

	a := e.quietAppend(run, 0, 3) // 2..4
	b := e.quietAppend(run, 3, 2) // 5..6
	c := e.quietAppend(run, 5, 3) // 7..9
	e.h.Deliver(run, c)
	e.h.Deliver(run, b)
	e.h.Deliver(run, a)
	for name, r := range subs {
		r.want(t, name, 2, 9)
	}
	// In order now, but one event at a time and each twice.
	d := e.quietAppend(run, 8, 4) // 10..13
	for i := range d {
		e.h.Deliver(run, d[i:i+1])
		e.h.Deliver(run, d[i:i+1])
	}
	for name, r := range subs {
		r.want(t, name, 10, 13)
		r.quiet(t, name, 30*time.Millisecond)
	}
	// Events of one message out of order inside it.
	f := e.quietAppend(run, 12, 3) // 14..16
	e.h.Deliver(run, []store.Event{f[1], f[0], f[2]})
	for name, r := range subs {
		r.want(t, name, 14, 16)
		r.quiet(t, name, 30*time.Millisecond)
	}
}

// TestDeliverConcurrentShuffled: several goroutines deliver every message
// in random orders, with repeats, while subscribers join and follow; each
// subscriber gets every seq once, in order.
func TestDeliverConcurrentShuffled(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 60*time.Second)
	early := e.subscribers(ctx, run)

	rng := rand.New(rand.NewPCG(1, 2))
	var msgs [][]store.Event
	n := 0
	for n < 600 {
		k := 1 + rng.IntN(20)
		msgs = append(msgs, e.quietAppend(run, n, k))
		n += k
	}
	last := int64(n + 1)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 7))
			for _, i := range r.Perm(len(msgs)) {
				e.h.Deliver(run, msgs[i])
				if r.IntN(10) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}(uint64(g))
	}
	late := map[string]*seqReader{
		"late sse": readSSESeqs(e.mustSSE(ctx, run, "after=100")),
		"late ws":  readWSSeqs(ctx, e.mustWS(ctx, run, "after=300")),
	}
	wg.Wait()
	for name, r := range early {
		r.want(t, name, 2, last)
	}
	late["late sse"].want(t, "late sse", 101, last)
	late["late ws"].want(t, "late ws", 301, last)
	e.setStatus(run, "completed")
	for name, r := range early {
		r.want(t, name, last+1, last+1)
		r.want(t, name, -1, -1)
	}
	for name, r := range late {
		r.want(t, name, last+1, last+1)
		r.want(t, name, -1, -1)
	}
}

// TestDeliverNoSubscribers: messages for runs nobody follows, and empty
// messages, are ignored.
func TestDeliverNoSubscribers(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.h.Deliver(run, e.quietAppend(run, 0, 2))
	e.h.Deliver("00000000-0000-0000-0000-000000000000", nil)
	e.h.Deliver(run, nil)
	if r, s := e.h.StateForTest(); r != 0 || s != 0 {
		t.Fatalf("hub holds %d runs, %d subscriptions", r, s)
	}
	ctx := testCtx(t, 10*time.Second)
	subs := e.subscribers(ctx, run)
	e.h.Deliver(run, nil)
	e.h.Deliver(run, []store.Event{})
	for name, r := range subs {
		r.want(t, name, 2, 3)
	}
}

// TestDeliverGapReadOnceForAllSubscribers: when a message is lost, the run
// reads the missing events from the store once and every live subscriber
// gets them, rather than each subscriber reading the store on its own.
func TestDeliverGapReadOnceForAllSubscribers(t *testing.T) {
	src := &countingSource{}
	e := newHTEnv(t, hub.Config{ReorderWait: 20 * time.Millisecond},
		htOptions{source: func(s hub.EventSource) hub.EventSource { src.EventSource = s; return src }})
	run := e.newRun()
	ctx := testCtx(t, 30*time.Second)
	subs := map[string]*seqReader{}
	for i := range 20 {
		subs[fmt.Sprintf("sse%d", i)] = readSSESeqs(e.mustSSE(ctx, run, ""))
		subs[fmt.Sprintf("ws%d", i)] = readWSSeqs(ctx, e.mustWS(ctx, run, ""))
	}
	for name, r := range subs {
		r.want(t, name, 1, 1)
	}
	waitFor(t, 5*time.Second, "the subscriptions to go live", func() bool { return e.h.LiveForTest() == len(subs) })
	before := src.reads.Load()
	e.quietAppend(run, 0, 3) // 2..4: lost
	e.appendN(run, 3, 2)     // 5..6: published
	for name, r := range subs {
		r.want(t, name, 2, 6)
	}
	if n := src.reads.Load() - before; n > 2 {
		t.Errorf("%d store reads to fill one gap for %d subscribers; want 1", n, len(subs))
	}
}
