package hub

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"runhub/store"
)

// kind is a connection's wire format.
type kind int

const (
	kindSSE kind = iota
	kindWS
)

const (
	// spareFrames bounds the queue array a connection keeps between
	// writes (spare): 16 slots (384 bytes) cover the events that usually
	// queue between two writes, while a burst's larger array goes back to
	// the heap rather than sit on an idle connection.
	spareFrames = 16
	// maxIntervalSleep: a writer waits out a WriteInterval up to this long
	// with time.Sleep (no allocation; its context is checked after), and
	// a longer one with a timer it can leave when its context ends.
	maxIntervalSleep = 50 * time.Millisecond
)

// errSlowConsumer: the connection's queue overflowed.
var errSlowConsumer = errors.New("slow consumer")

// errStreamEnded: the run is terminal and every event was sent.
var errStreamEnded = errors.New("stream ended")

// conn is one client connection: a bounded queue of encoded frames filled by
// Deliver and drained by a writer, which also catches subscriptions up from
// the store. While idle it holds no buffer.
//
// The writer is either a loop that owns the connection (SSE, waiting on
// signal) or, for a WebSocket (.../stream and /ws, both detached from their
// handlers), a goroutine that start launches when the connection turns
// busy and that ends when the queue is empty: an idle WebSocket has no
// writer goroutine and no stack.
type conn struct {
	kind  kind
	limit int
	// write sends frames to the client, coalesced where the transport can.
	write func(ctx context.Context, frames [][]byte) error
	start func() // nil: a loop waits on signal
	// pool, if set, writes the connection while its socket takes frames
	// at once (tryWrite), rather than a start()ed writer (WebSockets).
	pool     *writePool
	tryWrite func(frames [][]byte) (sent int, blocked bool, err error)
	// onSlow is called once, without c.mu, when the queue overflows.
	onSlow func()
	// hide, if set, names the events this connection does not send (its
	// cursor still moves past them): RunhubOnly on a PostHog-shaped SSE
	// stream.
	hide func(store.Event) bool

	mu       sync.Mutex
	frames   [][]byte
	bytes    int
	catchups []*sub
	// spare is the backing array of the frames last written, kept for the
	// next ones when it is small (spareFrames), so that an event queued on
	// an idle connection allocates nothing.
	spare  [][]byte
	slow   bool
	end    bool // an end frame is queued: close after sending it
	mux    bool // /ws: many runs; the end of one does not close the connection
	busy   bool // a started writer is running (start mode)
	signal chan struct{}

	interval  time.Duration // the least time between two writes
	lastWrite time.Time     // used by the writer only
}

func newConn(k kind, limit int, interval time.Duration, write func(ctx context.Context, frames [][]byte) error) *conn {
	c := &conn{kind: k, limit: limit, interval: interval, write: write}
	if k == kindSSE {
		// SSE's loop waits on signal; a WebSocket starts its writer
		// (start), and an idle one does without the channel.
		c.signal = make(chan struct{}, 1)
	}
	return c
}

// shows reports whether the connection sends ev.
func (c *conn) shows(ev store.Event) bool { return c.hide == nil || !c.hide(ev) }

func (c *conn) wake() {
	c.mu.Lock()
	start := c.wantWriterLocked()
	c.mu.Unlock()
	c.startOrSignal(start)
}

// wantWriterLocked reports, with c.mu held, whether the caller must start
// a writer (start mode), and marks the connection busy if so: queuing a
// frame and claiming the writer take one lock, not two.
func (c *conn) wantWriterLocked() bool {
	if c.start == nil || c.busy {
		return false
	}
	c.busy = true
	return true
}

// startOrSignal, without c.mu, starts the writer wantWriterLocked claimed,
// or signals the loop that writes (loop mode).
func (c *conn) startOrSignal(start bool) {
	if c.start != nil {
		if start && c.pool != nil {
			c.pool.schedule(c)
		} else if start {
			c.start()
		}
		return
	}
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// drain is a started writer's body: it flushes until the queue is empty,
// then marks the connection idle (under the same lock that enqueue takes,
// so that a frame queued meanwhile starts a new writer or is seen here).
func (c *conn) drain(ctx context.Context, h *Hub) error {
	for {
		if err := c.flush(ctx, h); err != nil {
			return err
		}
		c.mu.Lock()
		if len(c.frames) == 0 && len(c.catchups) == 0 && !c.slow {
			c.busy = false
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
	}
}

// enqueue adds a frame, or marks the connection slow when it would overflow
// the queue. It never blocks.
func (c *conn) enqueue(frame []byte, end bool) {
	c.startOrSignal(c.push(frame, end))
}

// push is enqueue without the writer's start: it reports whether the
// caller claimed the connection (marked it busy) and must have it written,
// by startOrSignal or, for a small fan-out, by writePool.writeNow once the
// run's lock is released.
func (c *conn) push(frame []byte, end bool) (start bool) {
	c.mu.Lock()
	if c.slow {
		c.mu.Unlock()
		return
	}
	if c.bytes+len(frame) > c.limit {
		c.slow, c.frames, c.bytes = true, nil, 0
		if c.onSlow != nil {
			defer c.onSlow()
		}
	} else {
		if c.frames == nil {
			c.frames, c.spare = c.spare, nil
		}
		c.frames = append(c.frames, frame)
		c.bytes += len(frame)
		c.end = c.end || (end && !c.mux)
	}
	start = c.wantWriterLocked()
	c.mu.Unlock()
	return start
}

func (c *conn) needCatchUp(s *sub) {
	c.mu.Lock()
	c.catchups = append(c.catchups, s)
	c.mu.Unlock()
	c.wake()
}

// flush writes everything queued, then catches up the subscriptions that
// need it (in that order, so that a subscription's queued frames, which
// precede its cursor, go out before what the store adds after it).
func (c *conn) flush(ctx context.Context, h *Hub) error {
	// Events that arrive within interval of the previous write wait for
	// each other: under a high event rate a connection writes (and its
	// goroutine wakes) at most once per interval, carrying many events.
	if d := c.interval - time.Since(c.lastWrite); d > 0 {
		if d <= maxIntervalSleep {
			time.Sleep(d) // no timer to allocate; ctx is checked next
		} else {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	for {
		c.mu.Lock()
		frames, slow, end, catchups := c.frames, c.slow, c.end, c.catchups
		c.frames, c.bytes, c.catchups = nil, 0, nil
		c.mu.Unlock()
		if slow {
			return errSlowConsumer
		}
		if len(frames) > 0 {
			if err := c.write(ctx, frames); err != nil {
				return err
			}
			c.lastWrite = time.Now()
			if cap(frames) <= spareFrames {
				clear(frames) // the frames themselves are not kept
				c.mu.Lock()
				if c.spare == nil {
					c.spare = frames[:0]
				}
				c.mu.Unlock()
			}
		}
		if end {
			return errStreamEnded
		}
		if len(catchups) == 0 {
			return nil
		}
		for _, s := range catchups {
			if err := h.catchUp(ctx, s); err != nil {
				return err
			}
		}
	}
}

// Frame encodings. Event data is compact JSON (no newline), so an SSE data
// line never needs splitting.

func sseFrame(ev store.Event) []byte {
	b := make([]byte, 0, len(ev.Data)+32)
	if ev.Seq > 0 {
		b = append(b, "id: "...)
		b = strconv.AppendInt(b, ev.Seq, 10)
		b = append(b, '\n')
	}
	b = append(b, "data: "...)
	b = append(b, ev.Data...)
	return append(b, '\n', '\n')
}

// wsFrame is a JSON-RPC 2.0 notification:
// {"jsonrpc":"2.0","method":"event","params":{"run_id","seq","event"}};
// seq is absent on ephemeral events; id is the run's id as a JSON string.
func wsFrame(id []byte, ev store.Event) []byte {
	b := make([]byte, 0, len(ev.Data)+len(id)+80)
	b = append(b, `{"jsonrpc":"2.0","method":"event","params":{"run_id":`...)
	b = append(b, id...)
	if ev.Seq > 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendInt(b, ev.Seq, 10)
	}
	b = append(b, `,"event":`...)
	b = append(b, ev.Data...)
	return append(b, "}}"...)
}

var sseKeepAlive = []byte("event: keepalive\ndata: {\"type\":\"keepalive\"}\n\n")

func endFrame(k kind, runID, status string) []byte {
	if k == kindSSE {
		b, _ := json.Marshal(struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		}{"stream-end", status})
		return append(append([]byte("event: stream-end\ndata: "), b...), '\n', '\n')
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "stream_end",
		"params": map[string]string{"run_id": runID, "status": status}})
	return b
}
