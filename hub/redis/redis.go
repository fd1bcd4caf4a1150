// Package redis is the hub.Broker that fans events out between hub nodes
// through Redis pub/sub (go-redis v9).
//
// Redis pub/sub is at-most-once: a message published while a node is
// disconnected is lost for it. That is fine because the store is the source
// of truth: whenever the node's subscription to a run is (re)confirmed by
// Redis, the broker tells the hub to resync that run (read the store after
// each subscriber's cursor), and the hub's periodic position check catches
// anything else. So a Redis outage delays events, never loses or repeats one.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"runhub/hub"
	"runhub/store"
)

// channelPrefix namespaces runhub's channels: one channel per run.
const channelPrefix = "runhub:run:"

// retryDelay paces the receive loop while Redis is unreachable.
const retryDelay = 100 * time.Millisecond

// pingInterval is how often the broker PINGs Redis over the pub/sub
// connection, so that even a connection that carries no message answers
// something (a PONG) this often: silence then means a dead connection.
// One PING a second per node is nothing to Redis.
const pingInterval = time.Second

// staleAfter is how long the pub/sub connection may return nothing at
// all (no message, no PONG) before it is taken for dead and replaced. A
// network partition drops packets silently: the connection neither
// errors nor closes, so without this the node would keep waiting on it,
// believing itself subscribed, until TCP gives up (about 15 minutes); and
// after the network heals it would hear nothing until TCP's next
// retransmission (up to 2 minutes later), or never if a firewall or NAT on
// the way forgot the flow. Three missed PINGs: a Redis that answers
// nothing for 3 s is not serving this node, and a reconnect only costs a
// resubscribe and a store read per followed run.
const staleAfter = 3 * pingInterval

// Broker is a Redis pub/sub broker.
type Broker struct {
	rdb *goredis.Client
	ps  *goredis.PubSub
	log *slog.Logger
	up  atomic.Bool

	mu      sync.Mutex
	handler hub.BrokerEventHandler // set once by Start
	closed  bool
	done    chan struct{} // closed when the receive loop (and its pinger) returned; nil before Start
}

// wireEvent is an event on the wire.
type wireEvent struct {
	Seq  int64           `json:"s,omitempty"`
	Kind string          `json:"k"`
	Type string          `json:"t,omitempty"`
	Data json.RawMessage `json:"d"`
}

// New connects to url (redis://...). The broker delivers nothing until
// Start hands it the node's hub.
func New(ctx context.Context, url string, log *slog.Logger) (*Broker, error) {
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	rdb := goredis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis ping: %w", err)
	}
	b := &Broker{rdb: rdb, ps: rdb.Subscribe(ctx), log: log}
	b.up.Store(true)
	return b, nil
}

// Start registers the node's hub as the one handler and starts the receive
// loop, which runs until ctx is cancelled or Close is called: h.Deliver gets
// every message of a subscribed run; h.Resync is called whenever Redis
// (re)confirms a run's subscription, after which earlier messages may have
// been lost. (hub.Broker; called by Hub.Start.)
func (b *Broker) Start(ctx context.Context, h hub.BrokerEventHandler) error {
	if h == nil {
		return errors.New("redis broker: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return errors.New("redis broker: closed")
	case b.handler != nil:
		return errors.New("redis broker: already started")
	}
	b.handler, b.done = h, make(chan struct{})
	go b.receive(ctx)
	return nil
}

// Close stops the receive loop, waits for it and closes the connections.
func (b *Broker) Close() error {
	b.mu.Lock()
	b.closed = true
	done := b.done
	b.mu.Unlock()
	err := b.ps.Close()
	if done != nil {
		<-done
	}
	if e := b.rdb.Close(); err == nil {
		err = e
	}
	return err
}

// isClosed reports whether Close was called: a read that Close cut short
// fails with the connection's error rather than ErrClosed.
func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Ready reports whether the pub/sub connection is up.
func (b *Broker) Ready(ctx context.Context) error {
	if !b.up.Load() {
		return errors.New("redis pub/sub disconnected")
	}
	return b.rdb.Ping(ctx).Err()
}

// Publish sends events to every node subscribed to the run.
func (b *Broker) Publish(ctx context.Context, runID string, events []store.Event) error {
	wire := make([]wireEvent, len(events))
	for i, ev := range events {
		wire[i] = wireEvent{Seq: ev.Seq, Kind: ev.Kind, Type: ev.Type, Data: ev.Data}
	}
	payload, err := json.Marshal(wire)
	if err != nil {
		return fmt.Errorf("encode events: %w", err)
	}
	if err := b.rdb.Publish(ctx, channelPrefix+runID, payload).Err(); err != nil {
		return fmt.Errorf("redis publish: %w", err)
	}
	return nil
}

// Subscribe makes this node receive the run's messages.
func (b *Broker) Subscribe(ctx context.Context, runID string) error {
	return b.ps.Subscribe(ctx, channelPrefix+runID)
}

// Unsubscribe stops receiving the run's messages.
func (b *Broker) Unsubscribe(ctx context.Context, runID string) error {
	return b.ps.Unsubscribe(ctx, channelPrefix+runID)
}

func (b *Broker) receive(ctx context.Context) {
	defer close(b.done)
	pctx, stopPings := context.WithCancel(ctx)
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		b.keepAlive(pctx)
	}()
	defer func() {
		stopPings()
		<-pinged
	}()
	for {
		// The deadline is what finds a silent connection (see
		// staleAfter): go-redis takes a read that ran out of time on
		// Receive (unlike ReceiveTimeout) for a broken connection, closes
		// it and dials again, subscribing to every channel anew.
		rctx, cancel := context.WithTimeout(ctx, staleAfter)
		msg, err := b.ps.Receive(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, goredis.ErrClosed) || b.isClosed() {
				return
			}
			if b.up.Swap(false) {
				b.log.Warn("redis pub/sub disconnected; subscribers fall back to the store", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(retryDelay):
			}
			// A node that follows no run has no subscription to renew, so
			// no "subscribe" reply would ever say the connection is back:
			// a PING over it reconnects, and its PONG says so.
			pingCtx, cancel := context.WithTimeout(ctx, staleAfter)
			b.ps.Ping(pingCtx)
			cancel()
			continue
		}
		switch m := msg.(type) {
		case *goredis.Pong:
			if !b.up.Swap(true) {
				b.log.Info("redis pub/sub reconnected")
			}
		case *goredis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if !b.up.Swap(true) {
				b.log.Info("redis pub/sub reconnected; resyncing runs from the store")
			}
			b.handler.Resync(strings.TrimPrefix(m.Channel, channelPrefix))
		case *goredis.Message:
			var wire []wireEvent
			if err := json.Unmarshal([]byte(m.Payload), &wire); err != nil {
				b.log.Warn("undecodable broker message dropped", "channel", m.Channel, "err", err)
				continue
			}
			runID := strings.TrimPrefix(m.Channel, channelPrefix)
			events := make([]store.Event, len(wire))
			for i, w := range wire {
				events[i] = store.Event{RunID: runID, Seq: w.Seq, Kind: w.Kind, Type: w.Type, Data: w.Data}
			}
			b.handler.Deliver(runID, events)
		}
	}
}

// keepAlive PINGs over the pub/sub connection every pingInterval until ctx
// ends, so that a healthy connection is never silent for staleAfter. A
// PING that cannot be sent is the receive loop's to notice (its read fails
// or runs out of time). While the connection is down the receive loop
// alone reconnects: a PING that waited for the connection behind its
// reconnect would time out on the new connection and close it again.
func (b *Broker) keepAlive(ctx context.Context) {
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !b.up.Load() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, pingInterval)
		b.ps.Ping(pctx)
		cancel()
	}
}
