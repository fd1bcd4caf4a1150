package hub

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

const (
	// pingSlots is how many slots the ping wheel turns through in one
	// PingInterval: a connection is pinged once per turn, between
	// (pingSlots-1)/pingSlots of the interval and the whole interval after
	// it was added (0.8 s early at most with the default 25 s).
	pingSlots = 32
	// minPingTick bounds how often the wheel turns a slot, whatever the
	// PingInterval (tests use a few milliseconds): a shorter interval gets
	// fewer slots, down to one.
	minPingTick = time.Millisecond
)

// pingWheel checks the liveness of every WebSocket of the hub from one
// goroutine: a connection sits in one of the wheel's slots (a linked
// list), and each tick pings the connections of the next slot. An idle
// connection so costs a small pinger (no timer, no closure), and only the
// ping in flight (at most one per connection) has a goroutine of its own.
type pingWheel struct {
	h       *Hub
	once    sync.Once
	mu      sync.Mutex
	started bool
	slots   []*pinger // each slot's first pinger
	cur     int       // the slot pinged last
	due     []*pinger // the slot being pinged (the wheel's goroutine only)
}

// pinger is one connection on the wheel. prev, next and slot are guarded
// by the wheel's mu.
type pinger struct {
	w          *pingWheel
	ws         *websocket.Conn
	ctx        context.Context
	inFlight   atomic.Bool
	prev, next *pinger
	slot       int // -1: not on the wheel
}

// startPinger pings ws every PingInterval until ctx ends or stop.
func (h *Hub) startPinger(ctx context.Context, ws *websocket.Conn) *pinger {
	w := &h.pings
	w.once.Do(w.start)
	p := &pinger{w: w, ws: ws, ctx: ctx, slot: -1}
	w.mu.Lock()
	if w.started {
		// Behind the slot pinged last: its first ping comes a turn later.
		p.slot = w.cur
		p.next = w.slots[p.slot]
		if p.next != nil {
			p.next.prev = p
		}
		w.slots[p.slot] = p
	}
	w.mu.Unlock()
	return p
}

// stop takes the connection off the wheel (a ping already due may still
// be sent; it checks the connection's context first).
func (p *pinger) stop() {
	w := p.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.slot < 0 {
		return
	}
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		w.slots[p.slot] = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	}
	p.prev, p.next, p.slot = nil, nil, -1
}

// start starts the wheel's goroutine, owned by the hub (Close ends and
// waits for it); none once the hub is closed.
func (w *pingWheel) start() {
	n := min(pingSlots, max(1, int(w.h.cfg.PingInterval/minPingTick)))
	if !w.h.hold() {
		return
	}
	w.slots = make([]*pinger, n)
	w.started = true
	go w.run(w.h.cfg.PingInterval / time.Duration(n))
}

func (w *pingWheel) run(tick time.Duration) {
	defer w.h.work.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-w.h.ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		w.cur = (w.cur + 1) % len(w.slots)
		for p := w.slots[w.cur]; p != nil; p = p.next {
			w.due = append(w.due, p)
		}
		w.mu.Unlock()
		for i, p := range w.due {
			p.ping()
			w.due[i] = nil
		}
		w.due = w.due[:0]
	}
}

func (p *pinger) ping() {
	if p.ctx.Err() != nil || !p.inFlight.CompareAndSwap(false, true) {
		return
	}
	timeout := p.w.h.cfg.PongTimeout
	go func() {
		defer p.inFlight.Store(false)
		// The ping's context must not end with ctx: coder/websocket drops
		// the connection when a write's context ends mid-write, and on /ws
		// ctx ends at a drain just before the 1012 is sent, which a ping
		// in flight would then beat (the client saw the connection cut,
		// not told to move). The ping still ends with the connection.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), timeout)
		defer cancel()
		if err := p.ws.Ping(pctx); err != nil && p.ctx.Err() == nil {
			p.ws.CloseNow() // no pong in time
		}
	}()
}
