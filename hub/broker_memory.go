package hub

import (
	"context"
	"errors"
	"sync"

	"runhub/store"
)

// MemoryBroker is the in-process Broker of a single node: a publish is
// handed straight to the node's hub, synchronously, in the publisher's
// goroutine. It cannot lose a message, so subscribers of a single node only
// read the store to start or resume.
type MemoryBroker struct {
	mu      sync.RWMutex
	handler BrokerEventHandler // nil until Start
}

// NewMemoryBroker returns a broker that delivers nothing until Start hands
// it the node's hub.
func NewMemoryBroker() *MemoryBroker { return &MemoryBroker{} }

// errNotStarted: a publish before the node started has no hub to reach.
// The events are in the store, so subscribers that start later read them.
var errNotStarted = errors.New("memory broker: not started")

// Start registers the one handler every publish is delivered to (the hub,
// from Hub.Start). It fails if a handler is registered already: a broker
// feeds one hub.
func (b *MemoryBroker) Start(_ context.Context, h BrokerEventHandler) error {
	if h == nil {
		return errors.New("memory broker: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.handler != nil {
		return errors.New("memory broker: already started")
	}
	b.handler = h
	return nil
}

// Publish delivers events at once. The hub ignores runs without subscribers.
func (b *MemoryBroker) Publish(_ context.Context, runID string, events []store.Event) error {
	b.mu.RLock()
	h := b.handler
	b.mu.RUnlock()
	if h == nil {
		return errNotStarted
	}
	h.Deliver(runID, events)
	return nil
}

// Subscribe has nothing to do in-process: every publish reaches the hub.
func (b *MemoryBroker) Subscribe(context.Context, string) error { return nil }

// Unsubscribe has nothing to do in-process.
func (b *MemoryBroker) Unsubscribe(context.Context, string) error { return nil }
