package hub

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"runhub/store"
)

// fanEnv is a hub with n /ws subscribers of one run, each a real WebSocket
// over TCP whose client drains what it receives without allocating, so
// that the allocations counted are the server's.
type fanEnv struct {
	h   *Hub
	run string
	seq int64
	ev  store.Event
	msg []store.Event // the broker's message, reused
}

const benchRun = "0b0c3f5e-4b8f-4a53-9d6c-2c1f7a1e9b10"

func newFanEnv(tb testing.TB, n int, writeInterval time.Duration) *fanEnv {
	tb.Helper()
	// The clients answer no pings: none is sent while measuring.
	h, err := New(Config{Store: emptySource{}, Broker: NewMemoryBroker(), WriteInterval: writeInterval, PingInterval: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	authorize := func(_ context.Context, id, _ string) (*store.Run, bool, error) {
		return &store.Run{ID: id, Status: store.StatusInProgress}, false, nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeWS(w, r.WithContext(WithAuthenticated(r.Context())), authorize)
	}))
	tb.Cleanup(func() {
		h.Close()
		srv.Close()
	})
	sub := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, benchRun)
	for range n {
		nc, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { nc.Close() })
		fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		br := bufio.NewReader(nc)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			tb.Fatalf("handshake: %v %v", resp, err)
		}
		// One masked text frame (a zero mask leaves the payload as is).
		frame := append([]byte{0x81, 0x80 | byte(len(sub)), 0, 0, 0, 0}, sub...)
		if _, err := nc.Write(frame); err != nil {
			tb.Fatal(err)
		}
		go io.Copy(io.Discard, br) // ends when the connection closes
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.LiveForTest() < n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d subscribers live", h.LiveForTest(), n)
		}
		time.Sleep(time.Millisecond)
	}
	data := `{"type":"bench","pad":"` + strings.Repeat("x", 200-28) + `"}`
	e := &fanEnv{h: h, run: benchRun, ev: store.Event{RunID: benchRun, Kind: "log", Data: []byte(data)}}
	e.quiet()
	return e
}

// publish delivers the next event of the run, as the broker does.
func (e *fanEnv) publish() {
	e.seq++
	if e.msg == nil {
		e.msg = make([]store.Event, 1)
	}
	e.msg[0] = e.ev
	e.msg[0].Seq = e.seq
	e.h.Deliver(e.run, e.msg)
}

// quiet waits until every subscriber has written everything queued.
func (e *fanEnv) quiet() {
	for {
		e.h.mu.Lock()
		rs := e.h.runs[e.run]
		e.h.mu.Unlock()
		if rs == nil {
			panic(fmt.Sprintf("no subscribers left at seq %d", e.seq))
		}
		busy := false
		rs.mu.Lock()
		for s := range rs.subs {
			s.c.mu.Lock()
			busy = busy || s.c.busy || len(s.c.frames) > 0
			s.c.mu.Unlock()
		}
		rs.mu.Unlock()
		if !busy {
			return
		}
		// A short sleep, not a spin: spinning took a P from the writers
		// and its CPU was counted as the delivery's.
		time.Sleep(20 * time.Microsecond)
	}
}

// processCPU is the CPU time this process has used (user and system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWSDelivery measures the per-delivery path of /ws: an event
// fanned out to subs subscribers and written to their sockets. "each"
// waits for every write before the next event (a person's pace: one event
// per frame); "burst" publishes back to back and waits at the end (the
// saturated shape, where queued events share frames).
func BenchmarkWSDelivery(b *testing.B) {
	for _, subs := range []int{1, 100, 1000} {
		for _, mode := range []string{"each", "burst"} {
			b.Run(fmt.Sprintf("subs=%d/%s", subs, mode), func(b *testing.B) {
				interval := time.Duration(-1)
				if mode == "burst" {
					interval = 0 // the default
				}
				e := newFanEnv(b, subs, interval)
				var ms0, ms1 runtime.MemStats
				runtime.ReadMemStats(&ms0)
				b.ResetTimer()
				cpu0 := processCPU()
				start := time.Now()
				for range b.N {
					e.publish()
					if mode == "each" {
						e.quiet()
					}
				}
				e.quiet()
				elapsed := time.Since(start)
				cpu := processCPU() - cpu0
				b.StopTimer()
				runtime.ReadMemStats(&ms1)
				deliveries := float64(b.N) * float64(subs)
				b.ReportMetric(float64(elapsed.Nanoseconds())/deliveries, "ns/delivery")
				// CPU time is steadier than wall time on a shared machine;
				// it counts the clients' reads too (they run in this
				// process).
				b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
				b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/deliveries, "allocs/delivery")
			})
		}
	}
}

// Allocation bounds of the /ws delivery path, measured one event at a
// time (each written before the next: one frame per event, the most
// allocations per delivery). Measured: 1 allocation per event (its one
// frame, shared by every subscriber) and none per subscriber.
const (
	// maxAllocsPerEvent: the event's frame, and one to spare.
	maxAllocsPerEvent = 2
	// maxAllocsPerSubscriber: a delivery to one more subscriber must not
	// allocate (its queue reuses its array, its writer is started
	// without a closure); a tenth leaves room for the runtime's own.
	maxAllocsPerSubscriber = 0.1
)

// TestWSDeliveryAllocs asserts the allocations of fanning one event out to
// /ws subscribers: a constant per event, and none that grows with their
// number.
func TestWSDeliveryAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's own allocations are counted too")
	}
	for _, subs := range []int{1, 50} {
		e := newFanEnv(t, subs, -1)
		for range 20 { // warm up: queues, pools, goroutines
			e.publish()
			e.quiet()
		}
		got := testing.AllocsPerRun(200, func() {
			e.publish()
			e.quiet()
		})
		limit := maxAllocsPerEvent + maxAllocsPerSubscriber*float64(subs)
		t.Logf("%d subscribers: %.2f allocations per event (limit %.1f)", subs, got, limit)
		if got > limit {
			t.Errorf("%d subscribers: %.2f allocations per event, want at most %.1f", subs, got, limit)
		}
	}
}

// scheduledForTest is how many connections were given to the shared
// writers so far.
func (p *writePool) scheduledForTest() uint64 {
	p.once.Do(p.start) // the shards, seen after their start
	var n uint64
	for _, sh := range p.shards {
		sh.mu.Lock()
		n += sh.scheduled
		sh.mu.Unlock()
	}
	return n
}

// TestSmallFanOutWritesInline: an event of a run with a few subscribers
// (at most inlineFanOut) is written by its publisher, within Deliver, and
// wakes no shared writer; a run with more subscribers keeps the shared
// writers.
func TestSmallFanOutWritesInline(t *testing.T) {
	for _, subs := range []int{1, inlineFanOut, inlineFanOut + 1} {
		e := newFanEnv(t, subs, -1)
		e.publish()
		e.quiet()
		before := e.h.pool.scheduledForTest()
		const events = 20
		for range events {
			e.publish()
			e.quiet()
		}
		woke := e.h.pool.scheduledForTest() - before
		if subs <= inlineFanOut && woke != 0 {
			t.Errorf("%d subscribers: %d connections handed to the shared writers for %d events, want none", subs, woke, events)
		}
		if subs > inlineFanOut && woke < events {
			t.Errorf("%d subscribers: %d connections handed to the shared writers for %d events, want at least one per event", subs, woke, events)
		}
	}
}
