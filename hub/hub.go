// Package hub fans each run's event stream out to live subscribers (SSE and
// WebSocket) on this node, fed by a Broker that carries news between nodes.
//
// Guarantees: every subscriber receives every stored event of its run
// exactly once and in seq order, starting after the seq it asked for. The
// store is the source of truth and the broker only carries news: a
// subscriber takes a broker message only when it continues its cursor. A
// run holds messages that arrive ahead of a missing one for ReorderWait and
// then reads the gap from the store once for all its subscribers; a
// subscriber that starts, or whose run was resynced, reads the store until
// it has caught up, then goes live again. Each event is encoded once per
// transport, not once per subscriber. A subscriber whose bounded outbound
// queue overflows is disconnected ("slow consumer") and never delays the
// others; it can resume with its last seq. Ephemeral events
// (agent_message_chunk, seq 0) are delivered best effort to live
// subscribers only.
//
// runhub's own events on SSE: PostHog's desktop app follows a run over SSE
// and shows any event type it does not know as a line of the transcript,
// and no notification is known to be one it ignores. So an SSE stream
// carries runhub's own events (RunhubOnly: agent_connected,
// agent_disconnected, artifact) only to a client that asks with
// ?events=all (runhub's viewer does); by default it carries what PostHog's
// server would send. The rule is applied in one place, per connection, as
// events are queued or read from the store: a hidden event still moves the
// subscriber's cursor, so SSE ids skip its seq, Last-Event-ID resumes
// after it, and stream-end comes once every event is past. The stream-end
// payload stays runhub's ({"type": "stream-end", "status": final status});
// PostHog's clients act on the event name. WebSocket streams (on
// .../stream and /ws) are runhub's own protocol and carry every event.
//
// WebSocket notifications queued together are sent as one JSON-RPC batch
// (an array) of at most 16 KiB; a connection writes at most once per
// WriteInterval.
package hub

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"runhub/store"
)

// Defaults; tests may shrink them.
const (
	// DefaultQueueBytes bounds one connection's unsent frames: generous for
	// bursts of large log entries, small enough that 10,000 stuck clients
	// cannot exhaust memory.
	DefaultQueueBytes = 1 << 20
	// DefaultWriteTimeout: a write that takes longer means the client stopped
	// reading; drop it rather than hold its queue.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultKeepAlive is the contract's SSE keepalive interval; proxies
	// commonly cut idle responses after 30-60 s.
	DefaultKeepAlive = 20 * time.Second
	// DefaultPingInterval and DefaultPongTimeout are the contract's WebSocket
	// liveness check.
	DefaultPingInterval = 25 * time.Second
	DefaultPongTimeout  = 10 * time.Second
	// DefaultCheckInterval is the period of the position check: how long an
	// event lost by the broker (Redis pub/sub is at-most-once) can stay
	// unseen by a subscriber that receives nothing newer meanwhile.
	DefaultCheckInterval = 5 * time.Second
	// DefaultWriteInterval is the least time between two writes to one
	// connection: at high event rates it lets each write (a syscall and a
	// goroutine wake-up per connection) carry many events; at a person's
	// pace events are further apart and go out at once.
	DefaultWriteInterval = 10 * time.Millisecond
	// DefaultSlowGrace is how long a WebSocket whose queue overflowed has to
	// take the write in progress (and then the 4008 close) before its
	// connection is cut: a client that only paused sees 4008, one that
	// stopped reading holds nothing for long.
	DefaultSlowGrace = 5 * time.Second
	// DefaultReorderWait is how long events that arrive ahead of a missing
	// one are held for it: long enough for a publisher that committed first
	// but published second, short enough to be unnoticed by a person.
	DefaultReorderWait = 100 * time.Millisecond
	// DefaultAuthTimeout is how long a /ws connection opened without
	// credentials may stay before it authenticates (a request carrying a
	// valid token): a browser subscribes with its token right after
	// connecting, well within a second; an idle stranger must not hold a
	// socket and its goroutines for ever.
	DefaultAuthTimeout = 10 * time.Second
	// DefaultMaxSubscriptions bounds the runs one /ws connection follows:
	// a task board follows tens; each subscription is hub state and fan-out
	// work on every event of its run, which one client must not multiply
	// without end.
	DefaultMaxSubscriptions = 1000
	// DefaultMaxCommands bounds one /ws connection's commands waiting for
	// their agents: each holds a goroutine for up to the command timeout
	// (30 s), and a person sends a handful at a time.
	DefaultMaxCommands = 64
	// DefaultBrokerTimeout bounds one broker subscribe or unsubscribe: a
	// healthy Redis answers in milliseconds, and a stalled one must not hold
	// a subscriber's reply (or a connection's teardown) for longer. A run
	// whose subscribe timed out is still covered by the position check (and
	// go-redis subscribes it again when it reconnects).
	DefaultBrokerTimeout = 5 * time.Second
	// maxPending bounds the events held per run while waiting for a gap.
	maxPending = 4096
	// catchUpPage is how many events one store read returns while a
	// subscriber catches up.
	catchUpPage = 500
)

// EventSource is the store as the hub needs it.
type EventSource interface {
	Events(ctx context.Context, runID string, after int64, limit int) ([]store.Event, error)
	// EventsBefore serves /ws history: it stops reading at a byte budget.
	EventsBefore(ctx context.Context, runID string, before int64, limit, maxBytes int) ([]store.Event, error)
}

// Broker carries committed events between hub nodes. It is built before
// the hub and given to it in Config; Hub.Start hands the hub to the broker
// as its one event handler (as centrifuge's Node.Run does), so events flow
// one way: runs.Service → Broker.Publish → the broker → every subscribed
// node's hub. Publish is called after the store commit (it is the
// runs.Publisher); the broker calls the handler with every message for a
// run this node subscribed to (including its own).
type Broker interface {
	// Start registers the node's one event handler and begins delivering
	// to it, until the broker is closed (or ctx ends); it is called once,
	// by Hub.Start, before the hub subscribes to any run.
	Start(ctx context.Context, h BrokerEventHandler) error
	Publish(ctx context.Context, runID string, events []store.Event) error
	Subscribe(ctx context.Context, runID string) error
	Unsubscribe(ctx context.Context, runID string) error
}

// BrokerEventHandler is what a broker delivers to: the node's Hub.
type BrokerEventHandler interface {
	// Deliver fans one message out to this node's subscribers of the run.
	Deliver(runID string, events []store.Event)
	// Resync makes the run's live subscribers read the store: called when
	// the broker may have lost messages (it (re)confirmed a subscription).
	Resync(runID string)
}

// Config configures a Hub.
type Config struct {
	// Store and Broker are required: the store is the source of truth the
	// hub backfills from, the broker carries the news (NewMemoryBroker on
	// a single node, hub/redis across nodes).
	Store  EventSource
	Broker Broker
	// Commands serves the /ws command method (the sandbox proxy's
	// WSCommand); nil: this hub relays no commands and /ws answers the
	// method with -32601, as a hub without a proxy must.
	Commands Commander
	// Guard closes the connections of revoked API keys (tokens.Revocations);
	// nil: the caller has no revocations to watch (a hub without keys).
	Guard Guard
	// CheckInterval is the period of the position check (0: default).
	CheckInterval time.Duration
	// ReorderWait is how long out-of-order events wait for a missing one
	// before subscribers backfill from the store (0: default).
	ReorderWait time.Duration
	Logger      *slog.Logger
	QueueBytes  int
	// WriteInterval is the least time between two writes to a connection
	// (0: default; negative: none).
	WriteInterval time.Duration
	WriteTimeout  time.Duration
	// SlowGrace: see DefaultSlowGrace (0: default).
	SlowGrace    time.Duration
	KeepAlive    time.Duration
	PingInterval time.Duration
	PongTimeout  time.Duration
	// AuthTimeout, MaxSubscriptions, MaxCommands and BrokerTimeout: see
	// their defaults (0: default).
	AuthTimeout      time.Duration
	MaxSubscriptions int
	MaxCommands      int
	BrokerTimeout    time.Duration
}

// Hub is one node's fan-out.
type Hub struct {
	cfg    Config
	src    EventSource
	broker Broker
	log    *slog.Logger
	m      *metrics

	commands Commander // nil: /ws has no command method (Config.Commands)
	guard    Guard     // nil: revoking a key closes no connection (Config.Guard)

	mu   sync.Mutex
	runs map[string]*runState

	// ctx ends, at Close, everything the hub runs: connections (WebSocket
	// streams outlive their handlers), the position check and gap reads;
	// work counts them (see hold), so that Close can wait for them.
	ctx    context.Context
	stop   context.CancelFunc
	work   sync.WaitGroup
	workMu sync.Mutex
	closed bool // guarded by workMu

	pool   writePool // the shared WebSocket writers
	pings  pingWheel // the WebSockets' liveness checks
	drains drainList // the WebSockets to tell at Drain

	brokerMu   sync.Mutex              // guards brokerRuns (never held across broker I/O)
	brokerRuns map[string]*brokerState // runs with a broker subscription or a call in flight
}

// brokerState is the broker subscription of one run as the hub knows it.
type brokerState struct {
	subscribed bool          // as of the last completed call
	busy       chan struct{} // non-nil while a call is in flight; closed when it ends
}

// runState is the subscribers of one run on this node.
type runState struct {
	id       string
	quotedID []byte // id as a JSON string, for the frames
	mu       sync.Mutex
	lastSeq  int64 // highest seq known to exist (from the broker or the store)
	subs     map[*sub]struct{}
	// head is the highest seq passed to subscribers in order (0: none yet);
	// pending holds events that arrived ahead of head+1, for at most
	// ReorderWait (gapTimer).
	head     int64
	pending  map[int64]store.Event
	gapTimer *time.Timer
}

// sub is one subscription: a connection following a run. cursor, live,
// status and ended are guarded by run.mu.
type sub struct {
	run    *runState
	c      *conn
	cursor int64  // last seq queued or written to the client
	live   bool   // taking broker messages; false while catching up from the store
	status string // run status as of the last state event the client got
	ended  bool
	gone   bool // unsubscribed (guarded by run.mu)
}

// New builds a hub on its store and broker (both required). Start hands it
// to the broker.
func New(cfg Config) (*Hub, error) {
	if cfg.Store == nil {
		return nil, errors.New("hub: Config.Store is required")
	}
	if cfg.Broker == nil {
		return nil, errors.New("hub: Config.Broker is required")
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.PongTimeout <= 0 {
		cfg.PongTimeout = DefaultPongTimeout
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.WriteInterval == 0 {
		cfg.WriteInterval = DefaultWriteInterval
	}
	if cfg.SlowGrace <= 0 {
		cfg.SlowGrace = DefaultSlowGrace
	}
	if cfg.ReorderWait <= 0 {
		cfg.ReorderWait = DefaultReorderWait
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	if cfg.MaxSubscriptions <= 0 {
		cfg.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if cfg.MaxCommands <= 0 {
		cfg.MaxCommands = DefaultMaxCommands
	}
	if cfg.BrokerTimeout <= 0 {
		cfg.BrokerTimeout = DefaultBrokerTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Hub{cfg: cfg, src: cfg.Store, broker: cfg.Broker, commands: cfg.Commands, guard: cfg.Guard,
		log: cfg.Logger, runs: map[string]*runState{}, brokerRuns: map[string]*brokerState{}, m: newMetrics()}
	h.ctx, h.stop = context.WithCancel(context.Background())
	h.pool.h = h
	h.pings.h = h
	return h, nil
}

// Close ends everything the hub runs (connections, including WebSocket
// streams that outlive their handlers, the position check and gap reads)
// and waits until it is gone: after Close returns the hub reads nothing
// from the store, so the store may close. It may be called more than once.
func (h *Hub) Close() {
	h.Drain()
	h.work.Wait()
}

// Drain starts the hub's shutdown without waiting for it: every client is
// told to move to another node (WebSockets close with 1012 "service
// restart", SSE streams end after a retry hint) and no new stream starts.
// Call it as the HTTP server's shutdown begins, before the requests'
// contexts end, so that the streams end as a restart rather than as a
// dropped connection; Close waits for them.
func (h *Hub) Drain() {
	h.workMu.Lock()
	h.closed = true
	h.workMu.Unlock()
	h.stop()
	h.drains.drain()
}

// draining reports whether Drain (or Close) has begun.
func (h *Hub) draining() bool { return h.ctx.Err() != nil }

// hold registers work that Close must end and wait for; the caller calls
// h.work.Done when it finishes. It reports false once Close has begun: the
// work must not start.
func (h *Hub) hold() bool {
	h.workMu.Lock()
	defer h.workMu.Unlock()
	if h.closed {
		return false
	}
	h.work.Add(1)
	return true
}

// Start hands the hub to its broker as the broker's one event handler, then
// runs the position check (see Run) until Close, which waits for it. Call
// it once, before serving.
func (h *Hub) Start(ctx context.Context) error {
	if err := h.broker.Start(ctx, h); err != nil {
		return fmt.Errorf("hub: start broker: %w", err)
	}
	if !h.hold() {
		return errors.New("hub: closed")
	}
	go func() {
		defer h.work.Done()
		h.check(h.ctx)
	}()
	return nil
}

// Resync makes every live subscriber of the run read the store after its
// cursor: called when the broker may have lost messages.
func (h *Hub) Resync(runID string) {
	h.mu.Lock()
	rs := h.runs[runID]
	h.mu.Unlock()
	if rs == nil {
		return
	}
	h.m.resyncs.Inc()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for s := range rs.subs {
		if s.live {
			s.live = false
			s.c.needCatchUp(s)
		}
	}
}

// Run performs the position check until ctx ends: for every run with
// subscribers on this node, a cheap store read tells whether events exist
// beyond the newest one the hub has seen. An event that was already in the
// store at the previous check and is still unseen now was lost by the
// broker, and the run is resynced. (Events committed a moment ago and still
// on their way through the broker are not lost; under load there always
// are some, which is why one check is not enough.) It bounds how long a
// lost message can go unnoticed to two intervals.
//
// Run also returns at Close, which waits for it; a node uses Start, which
// also hands the hub to its broker.
func (h *Hub) Run(ctx context.Context) {
	if !h.hold() {
		return
	}
	defer h.work.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(h.ctx, cancel)()
	h.check(ctx)
}

// check is the position check loop of Run.
func (h *Hub) check(ctx context.Context) {
	t := time.NewTicker(h.cfg.CheckInterval)
	defer t.Stop()
	unseen := map[string]int64{} // run -> an unseen seq found at the last check
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		check := make(map[string]int64, len(h.runs))
		for id, rs := range h.runs {
			rs.mu.Lock()
			check[id] = rs.lastSeq
			rs.mu.Unlock()
		}
		h.mu.Unlock()
		for id, last := range check {
			if seq, ok := unseen[id]; ok && seq > last {
				h.log.Info("position check found unseen events; resyncing", "run_id", id, "seq", seq)
				h.Resync(id)
			}
			delete(unseen, id)
			evs, err := h.src.Events(ctx, id, last, 1)
			if err != nil {
				if ctx.Err() == nil {
					h.log.Warn("position check failed", "run_id", id, "err", err)
				}
				continue
			}
			if len(evs) > 0 {
				unseen[id] = evs[0].Seq
			}
		}
		for id := range unseen {
			if _, ok := check[id]; !ok {
				delete(unseen, id)
			}
		}
	}
}

// batch is one broker message with its lazily built encodings, shared by
// every subscriber of the run. A batch of one event (the usual message)
// keeps its encodings in the batch itself.
type batch struct {
	quotedID []byte // the run's id as a JSON string
	events   []store.Event
	sse      [][]byte
	ws       [][]byte
	status   []string
	sseOne   []byte // the encodings of a batch of one event
	wsOne    []byte
}

func (rs *runState) batch(events []store.Event) batch {
	return batch{quotedID: rs.quotedID, events: events}
}

func (b *batch) frame(i int, k kind) []byte {
	if len(b.events) == 1 {
		if k == kindSSE {
			if b.sseOne == nil {
				b.sseOne = sseFrame(b.events[0])
			}
			return b.sseOne
		}
		if b.wsOne == nil {
			b.wsOne = wsFrame(b.quotedID, b.events[0])
		}
		return b.wsOne
	}
	switch k {
	case kindSSE:
		if b.sse == nil {
			b.sse = make([][]byte, len(b.events))
		}
		if b.sse[i] == nil {
			b.sse[i] = sseFrame(b.events[i])
		}
		return b.sse[i]
	default:
		if b.ws == nil {
			b.ws = make([][]byte, len(b.events))
		}
		if b.ws[i] == nil {
			b.ws[i] = wsFrame(b.quotedID, b.events[i])
		}
		return b.ws[i]
	}
}

// statusOf returns the run status a task_run_state event carries, or "".
func statusOf(ev store.Event) string {
	if ev.Kind != store.KindRunState {
		return ""
	}
	var s struct {
		Status string `json:"status"`
	}
	json.Unmarshal(ev.Data, &s)
	return s.Status
}

// statusAt returns the status event i carries, or "": decoded once per
// batch, and only when the batch holds a state event.
func (b *batch) statusAt(i int) string {
	if b.events[i].Kind != store.KindRunState {
		return ""
	}
	if b.status == nil {
		b.status = make([]string, len(b.events))
		for j, ev := range b.events {
			b.status[j] = statusOf(ev)
		}
	}
	return b.status[i]
}

// Deliver is the broker's callback (BrokerEventHandler): fan one message out to this node's
// subscribers of the run.
//
// Concurrent publishers commit in one order and publish in another, so
// messages often arrive slightly out of seq order. Rather than send every
// subscriber to the store for such a gap, the run holds out-of-order events
// for up to reorderWait and releases them as soon as the gap fills; only a
// gap that outlives the wait (a message really lost) makes subscribers
// backfill from the store.
//
// A run with at most inlineFanOut subscribers has its frames written here,
// in the caller's goroutine (the publisher's with the memory broker, the
// pub/sub reader's with Redis), without blocking on any client.
func (h *Hub) Deliver(runID string, events []store.Event) {
	h.mu.Lock()
	rs := h.runs[runID]
	h.mu.Unlock()
	if rs == nil || len(events) == 0 {
		return
	}
	var inl inlineWrites
	rs.mu.Lock()
	defer inl.write() // after rs.mu.Unlock (deferred calls run last in, first out)
	defer rs.mu.Unlock()
	if len(rs.pending) == 0 && rs.inOrder(events) {
		// The usual message: nothing held, and it continues head. It
		// goes out as it came, without a copy.
		for _, ev := range events {
			rs.lastSeq = max(rs.lastSeq, ev.Seq)
			if ev.Seq > rs.head {
				rs.head = ev.Seq
			}
		}
		h.fanOut(rs, events, &inl)
		return
	}
	ready := make([]store.Event, 0, len(events))
	for _, ev := range events {
		rs.lastSeq = max(rs.lastSeq, ev.Seq)
		switch {
		case ev.Seq == 0 || ev.Seq <= rs.head:
			ready = append(ready, ev) // ephemeral, or old news each subscriber filters
		case rs.head == 0 || ev.Seq == rs.head+1:
			ready = append(ready, ev)
			rs.head = ev.Seq
			ready = rs.releasePending(ready)
		default:
			if rs.pending == nil {
				rs.pending = map[int64]store.Event{}
			}
			rs.pending[ev.Seq] = ev
		}
	}
	if len(rs.pending) > maxPending {
		ready = rs.releaseAll(ready)
	} else if len(rs.pending) > 0 && rs.gapTimer == nil {
		rs.gapTimer = time.AfterFunc(h.cfg.ReorderWait, func() { h.gapExpired(rs) })
	}
	h.fanOut(rs, ready, &inl)
}

// inOrder reports whether events would all be ready as they come, in
// their order (see Deliver's cases), when nothing is held.
func (rs *runState) inOrder(events []store.Event) bool {
	head := rs.head
	for _, ev := range events {
		switch {
		case ev.Seq == 0 || ev.Seq <= head:
		case head == 0 || ev.Seq == head+1:
			head = ev.Seq
		default:
			return false
		}
	}
	return true
}

// releasePending appends the held events that now continue head.
func (rs *runState) releasePending(ready []store.Event) []store.Event {
	for len(rs.pending) > 0 {
		ev, ok := rs.pending[rs.head+1]
		if !ok {
			break
		}
		delete(rs.pending, ev.Seq)
		ready = append(ready, ev)
		rs.head = ev.Seq
	}
	if len(rs.pending) == 0 && rs.gapTimer != nil {
		rs.gapTimer.Stop()
		rs.gapTimer = nil
	}
	return ready
}

// releaseAll gives up on the gap: every held event goes out in seq order,
// and the subscribers that miss what is in the gap read it from the store.
func (rs *runState) releaseAll(ready []store.Event) []store.Event {
	held := make([]store.Event, 0, len(rs.pending))
	for _, ev := range rs.pending {
		held = append(held, ev)
	}
	slices.SortFunc(held, func(a, b store.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	rs.pending = nil
	if rs.gapTimer != nil {
		rs.gapTimer.Stop()
		rs.gapTimer = nil
	}
	rs.head = held[len(held)-1].Seq
	return append(ready, held...)
}

// gapExpired runs when held events waited ReorderWait for a gap to fill.
// The run reads the missing events from the store once, for all of its
// subscribers, rather than each subscriber reading them on its own; only
// when the store cannot fill the gap either (a read error, or a gap longer
// than a page) do the subscribers backfill themselves. A timer that fires
// after Close does nothing; one that fired before is waited for by Close.
func (h *Hub) gapExpired(rs *runState) {
	if !h.hold() {
		return
	}
	defer h.work.Done()
	rs.mu.Lock()
	rs.gapTimer = nil
	from, to := rs.head, int64(0)
	for seq := range rs.pending {
		if to == 0 || seq < to {
			to = seq
		}
	}
	rs.mu.Unlock()
	if to == 0 {
		return
	}
	var evs []store.Event
	if n := to - 1 - from; n > 0 && n <= catchUpPage {
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.WriteTimeout)
		var err error
		evs, err = h.src.Events(ctx, rs.id, from, int(n))
		cancel()
		h.m.gapReads.Inc()
		if err != nil && h.ctx.Err() == nil {
			h.log.Warn("gap backfill failed; subscribers will read the store", "run_id", rs.id, "err", err)
		}
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, ev := range evs {
		if ev.Seq > rs.head {
			if rs.pending == nil {
				rs.pending = map[int64]store.Event{}
			}
			rs.pending[ev.Seq] = ev
		}
	}
	ready := rs.releasePending(nil)
	if len(rs.pending) > 0 {
		ready = rs.releaseAll(ready)
	}
	h.fanOut(rs, ready, nil)
}

// inlineFanOut is the most subscribers a run may have for its publisher to
// write their frames itself (inlineWrites) rather than wake a shared
// writer. A hand-off to a writer costs a goroutine wake-up, and under load
// its wait for a CPU, before every delivery; the few non-blocking writes of
// a run with a few viewers (the common case) cost the publisher about as
// much as the hand-off. A large fan-out keeps the shared writers, which
// spread it over the CPUs and do not hold its publisher for thousands of
// writes.
const inlineFanOut = 8

// inlineWrites are the connections a small fan-out claimed (conn.push),
// for its publisher to write once the run's lock is released: a fixed
// array, so that it lives on the publisher's stack.
type inlineWrites struct {
	n     int
	conns [inlineFanOut]*conn
}

// enqueue queues frame on c (conn.enqueue), keeping c for write when the
// caller claimed it and it is a pooled WebSocket; anything else (SSE's
// loop, a connection without the pool, no set, a full set) has its writer
// started or signalled at once, as conn.enqueue does.
func (w *inlineWrites) enqueue(c *conn, frame []byte) {
	start := c.push(frame, false)
	if !start || w == nil || c.pool == nil || w.n == len(w.conns) {
		c.startOrSignal(start)
		return
	}
	w.conns[w.n] = c
	w.n++
}

// write writes the claimed connections (writePool.writeNow), without any
// lock held.
func (w *inlineWrites) write() {
	for i, c := range w.conns[:w.n] {
		w.conns[i] = nil
		c.pool.writeNow(c)
	}
	w.n = 0
}

// fanOut queues events, in the order given, for every live subscriber of
// the run. Called with rs.mu held. inl, if not nil, takes the connections
// to write once rs.mu is released when the run has at most inlineFanOut
// subscribers; nil, or a larger run, has the shared writers write them.
func (h *Hub) fanOut(rs *runState, events []store.Event, inl *inlineWrites) {
	if len(events) == 0 {
		return
	}
	if len(rs.subs) > inlineFanOut {
		inl = nil
	}
	b := rs.batch(events)
	for s := range rs.subs {
		if !s.live {
			s.c.wake() // a catching-up subscriber re-checks lastSeq
			continue
		}
		for i, ev := range events {
			if ev.Seq == 0 {
				if s.c.shows(ev) {
					inl.enqueue(s.c, b.frame(i, s.c.kind))
				}
				continue
			}
			if ev.Seq <= s.cursor {
				continue // already sent (from the store, or a duplicate)
			}
			if ev.Seq != s.cursor+1 {
				s.live = false // a gap: read the store
				s.c.needCatchUp(s)
				break
			}
			s.cursor = ev.Seq
			if st := b.statusAt(i); st != "" {
				s.status = st
			}
			if s.c.shows(ev) {
				inl.enqueue(s.c, b.frame(i, s.c.kind))
			}
		}
		h.maybeEnd(rs, s)
	}
}

// maybeEnd ends a live subscription whose run is terminal and drained.
// Called with rs.mu held.
func (h *Hub) maybeEnd(rs *runState, s *sub) {
	if s.live && !s.ended && store.IsTerminal(s.status) && s.cursor >= rs.lastSeq {
		s.ended = true
		delete(rs.subs, s)
		s.c.enqueue(endFrame(s.c.kind, rs.id, s.status), true)
	}
}

// subscribe registers a subscription and has its connection catch it up
// from the store before it goes live.
func (h *Hub) subscribe(ctx context.Context, c *conn, runID string, after, lastSeq int64, status string) *sub {
	s := h.register(ctx, c, runID, after, lastSeq, status)
	c.needCatchUp(s)
	return s
}

// register adds a subscription that is not live yet; the caller queues its
// catch-up (after replying, on /ws). The run's broker subscription is in
// place when it returns, before the first store read, so nothing published
// after that read can be missed.
func (h *Hub) register(ctx context.Context, c *conn, runID string, after, lastSeq int64, status string) *sub {
	// h.mu is held while the subscription joins the run, so that a
	// concurrent last unsubscribe cannot orphan the runState it joins.
	h.mu.Lock()
	rs := h.runs[runID]
	if rs == nil {
		// Events up to lastSeq are in the store; the run expects the next.
		quoted, _ := json.Marshal(runID)
		rs = &runState{id: runID, quotedID: quoted, subs: map[*sub]struct{}{}, head: lastSeq}
		h.runs[runID] = rs
	}
	s := &sub{run: rs, c: c, cursor: after, status: status}
	rs.mu.Lock()
	rs.lastSeq = max(rs.lastSeq, lastSeq)
	rs.subs[s] = struct{}{}
	rs.mu.Unlock()
	h.m.subscriptions.Inc()
	h.mu.Unlock()
	h.syncBroker(ctx, runID)
	return s
}

// unsubscribe removes s; the last subscriber of a run on this node drops the
// broker subscription.
func (h *Hub) unsubscribe(s *sub) {
	rs := s.run
	h.mu.Lock()
	rs.mu.Lock()
	s.ended = true // a pending catch-up stops
	if !s.gone {
		s.gone = true
		h.m.subscriptions.Dec()
	}
	delete(rs.subs, s)
	empty := len(rs.subs) == 0
	rs.mu.Unlock()
	if empty && h.runs[rs.id] == rs {
		delete(h.runs, rs.id)
	}
	h.mu.Unlock()
	if empty {
		h.syncBroker(h.ctx, rs.id)
	}
}

// syncBroker makes the broker subscription of a run match whether the run
// has subscribers now, and returns when it does (or when ctx ends; the call
// in flight then finishes the job). Each call to the broker is bounded by
// BrokerTimeout and made without any hub lock held, so a stalled broker
// delays only the subscribers of the run it stalls on. At most one call per
// run is in flight; whoever made it reconciles again when it returns, so
// racing subscribe/unsubscribe pairs cannot leave a run with subscribers
// but no broker subscription, or subscribed without subscribers.
func (h *Hub) syncBroker(ctx context.Context, runID string) {
	for {
		h.brokerMu.Lock()
		bs := h.brokerRuns[runID]
		if bs != nil && bs.busy != nil {
			busy := bs.busy
			h.brokerMu.Unlock()
			select {
			case <-busy:
				continue
			case <-ctx.Done():
				return
			}
		}
		h.mu.Lock()
		_, want := h.runs[runID]
		h.mu.Unlock()
		if want == (bs != nil && bs.subscribed) {
			h.brokerMu.Unlock()
			return
		}
		if bs == nil {
			bs = &brokerState{}
			h.brokerRuns[runID] = bs
		}
		done := make(chan struct{})
		bs.busy = done
		h.brokerMu.Unlock()

		// Detached from the caller: other subscribers of the run wait for
		// this call, whoever made it.
		bctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
		var err error
		if want {
			err = h.broker.Subscribe(bctx, runID)
		} else {
			err = h.broker.Unsubscribe(bctx, runID)
		}
		cancel()
		if err != nil && h.ctx.Err() == nil {
			op := "unsubscribe"
			if want {
				op = "subscribe"
			}
			h.log.Warn("broker "+op+" failed; the position check covers the run", "run_id", runID, "err", err)
		}

		h.brokerMu.Lock()
		// A failed call counts as done: the broker keeps the run's
		// subscription state (go-redis re-subscribes what it was asked to
		// on reconnect), and the position check covers lost messages.
		bs.subscribed = want
		bs.busy = nil
		if !want {
			delete(h.brokerRuns, runID)
		}
		close(done)
		h.brokerMu.Unlock()
	}
}

// catchUp reads the store after s.cursor and writes what it finds until the
// subscriber has everything the hub knows of, then makes it live.
func (h *Hub) catchUp(ctx context.Context, s *sub) error {
	rs := s.run
	for {
		rs.mu.Lock()
		after, ended := s.cursor, s.ended
		rs.mu.Unlock()
		if ended {
			return nil
		}
		evs, err := h.src.Events(ctx, rs.id, after, catchUpPage)
		if err != nil {
			return err
		}
		if len(evs) > 0 {
			b := rs.batch(evs)
			frames := make([][]byte, 0, len(evs))
			status := ""
			for i := range evs {
				if s.c.shows(evs[i]) {
					frames = append(frames, b.frame(i, s.c.kind))
				}
				if st := b.statusAt(i); st != "" {
					status = st
				}
			}
			// Written in chunks of at most a queue's worth, each under its
			// own write deadline: a client that reads steadily is never
			// dropped for the size of a catch-up page.
			for start := 0; start < len(frames); {
				end, size := start, 0
				for end < len(frames) && (end == start || size+len(frames[end]) <= h.cfg.QueueBytes) {
					size += len(frames[end])
					end++
				}
				if err := s.c.write(ctx, frames[start:end]); err != nil {
					return err
				}
				start = end
			}
			rs.mu.Lock()
			s.cursor = evs[len(evs)-1].Seq
			if status != "" {
				s.status = status
			}
			rs.lastSeq = max(rs.lastSeq, s.cursor)
			rs.mu.Unlock()
		}
		if len(evs) < catchUpPage {
			rs.mu.Lock()
			if rs.lastSeq <= s.cursor {
				s.live = true
				h.maybeEnd(rs, s)
			}
			live := s.live
			rs.mu.Unlock()
			if live {
				return nil
			}
		}
	}
}
