// Package memory is the in-process hub.Broker of a single node: a publish is
// handed straight to the node's hub, synchronously, in the publisher's
// goroutine. It cannot lose a message, so subscribers of a single node only
// read the store to start or resume.
package memory

import (
	"context"

	"runhub/store"
)

// Broker delivers every publish to one handler (the node's hub).
type Broker struct {
	deliver func(runID string, events []store.Event)
}

// New returns a broker that calls deliver for each publish.
func New(deliver func(runID string, events []store.Event)) *Broker {
	return &Broker{deliver: deliver}
}

// Publish delivers events at once. The hub ignores runs without subscribers.
func (b *Broker) Publish(_ context.Context, runID string, events []store.Event) error {
	b.deliver(runID, events)
	return nil
}

// Subscribe has nothing to do in-process: every publish reaches the hub.
func (b *Broker) Subscribe(context.Context, string) error { return nil }

// Unsubscribe has nothing to do in-process.
func (b *Broker) Unsubscribe(context.Context, string) error { return nil }
