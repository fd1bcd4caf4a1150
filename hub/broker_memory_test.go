package hub_test

import (
	"context"
	"testing"

	"runhub/hub"
	"runhub/store"
)

// recordHandler records what a broker delivers.
type recordHandler struct{ got []string }

func (r *recordHandler) Deliver(runID string, _ []store.Event) { r.got = append(r.got, runID) }
func (r *recordHandler) Resync(string)                         {}

// TestMemoryBrokerOneHandler: the memory broker delivers to the one handler
// Start registered, refuses a publish before it (there is no hub to reach)
// and a second handler.
func TestMemoryBrokerOneHandler(t *testing.T) {
	ctx := context.Background()
	b := hub.NewMemoryBroker()
	if err := b.Publish(ctx, "r", nil); err == nil {
		t.Fatal("publish before Start accepted")
	}
	h := &recordHandler{}
	if err := b.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx, &recordHandler{}); err == nil {
		t.Fatal("a second handler accepted")
	}
	if err := b.Publish(ctx, "r", nil); err != nil || len(h.got) != 1 {
		t.Fatalf("publish after Start: %v, delivered %v", err, h.got)
	}
}

// TestHubRequiresStoreAndBroker: a hub without its store or its broker is
// a construction error, and Start hands the hub to its broker.
func TestHubRequiresStoreAndBroker(t *testing.T) {
	st := emptyStore{}
	if _, err := hub.New(hub.Config{Broker: hub.NewMemoryBroker()}); err == nil {
		t.Error("hub without a store built")
	}
	if _, err := hub.New(hub.Config{Store: st}); err == nil {
		t.Error("hub without a broker built")
	}
	b := hub.NewMemoryBroker()
	h, err := hub.New(hub.Config{Store: st, Broker: b})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), "r", nil); err != nil {
		t.Fatalf("the broker has no handler after Hub.Start: %v", err)
	}
	if err := h.Start(context.Background()); err == nil {
		t.Error("a second Start accepted")
	}
}

// emptyStore is an event source with no events.
type emptyStore struct{}

func (emptyStore) Events(context.Context, string, int64, int) ([]store.Event, error) { return nil, nil }
func (emptyStore) EventsBefore(context.Context, string, int64, int, int) ([]store.Event, error) {
	return nil, nil
}
