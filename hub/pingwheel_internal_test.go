package hub

import (
	"context"
	"testing"
	"time"
)

// TestPingWheelStop: connections taken off the wheel (first, middle, last
// of a slot, and twice) leave exactly the others on it, each once.
func TestPingWheelStop(t *testing.T) {
	h, err := New(Config{Store: emptySource{}, Broker: NewMemoryBroker(), PingInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ps := make([]*pinger, 6)
	for i := range ps {
		ps[i] = h.startPinger(context.Background(), nil)
	}
	onWheel := func() map[*pinger]int {
		h.pings.mu.Lock()
		defer h.pings.mu.Unlock()
		seen := map[*pinger]int{}
		for _, head := range h.pings.slots {
			for p := head; p != nil; p = p.next {
				seen[p]++
			}
		}
		return seen
	}
	if got := onWheel(); len(got) != len(ps) {
		t.Fatalf("%d pingers on the wheel, want %d", len(got), len(ps))
	}
	// ps[5] was added last: it heads its slot; ps[0] is at its end.
	for _, i := range []int{5, 2, 0, 2} {
		ps[i].stop()
	}
	got := onWheel()
	for i, p := range ps {
		want := 1
		if i == 0 || i == 2 || i == 5 {
			want = 0
		}
		if got[p] != want {
			t.Errorf("pinger %d on the wheel %d times, want %d", i, got[p], want)
		}
	}
}
