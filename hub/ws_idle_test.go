package hub_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

// TestWSMuxIdleGoroutines: an idle subscribed /ws connection costs at most
// one server goroutine (its reader): no writer or pinger waits per
// connection. The client's side of a connection that is not being read
// costs no goroutine, so the process-wide count shows the server's.
func TestWSMuxIdleGoroutines(t *testing.T) {
	const (
		n = 40
		// perConn is the bound with an allowance for the goroutines
		// the test's own machinery starts and ends meanwhile (the old
		// endpoint took 3 per connection).
		perConn = 1.15
	)
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendLog(run, logEntry(1, 10))
	settle := func() int {
		// Goroutines of finished handlers and writers end shortly after.
		prev := -1
		for i := 0; i < 50; i++ {
			runtime.GC()
			g := runtime.NumGoroutine()
			if g == prev {
				return g
			}
			prev = g
			time.Sleep(20 * time.Millisecond)
		}
		return prev
	}
	// A first connection warms the server up (its listener's goroutines).
	warm := dialMux(t, e)
	send(t, warm, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run))
	readMsg(t, warm)
	readMsg(t, warm)
	before := settle()
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c := dialMux(t, e)
		conns[i] = c
		send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run))
		if m := readMsg(t, c); m.Error != nil {
			t.Fatalf("subscribe: %+v", m)
		}
		if m := readMsg(t, c); m.Method != "event" { // the catch-up
			t.Fatalf("want the event, got %+v", m)
		}
	}
	var per float64
	deadline := time.Now().Add(5 * time.Second)
	for {
		per = float64(settle()-before) / n
		if per <= perConn || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("%.2f goroutines per idle subscribed /ws connection", per)
	if per > perConn {
		t.Fatalf("%.2f goroutines per idle subscribed /ws connection, want at most %.2f", per, perConn)
	}
	// The idle connections are live subscriptions: a new event reaches
	// every one of them.
	e.appendLog(run, logEntry(2, 10))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range conns {
		wantSeqs(t, ctx, c, run, 2, 2)
	}
}

// TestWSMuxIdleHeapAllocs: an idle subscribed /ws connection keeps at most
// maxHeap bytes of Go heap allocated on the server (its stack, 4 KiB, is
// TestWSMuxIdleGoroutines's), so that what an idle connection costs does
// not creep back. The clients are bare sockets that speak just enough
// WebSocket to subscribe, so that the heap measured is the server's (and a
// socket's, about 300 bytes); live heap after a collection is
// deterministic enough to bound, unlike time.
func TestWSMuxIdleHeapAllocs(t *testing.T) {
	if raceOn {
		t.Skip("the race detector allocates on its own")
	}
	const (
		n = 300
		// maxHeap: measured 4.5 KB, of which coder/websocket's
		// connection is 1.5 KB and the sockets (both ends) 0.6 KB; it
		// was 5.7 KB before the connection's context, drain entry,
		// callbacks, subscriptions and buffers were trimmed.
		maxHeap = 4900
	)
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendLog(run, logEntry(1, 10))
	subscribe := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run)
	rawMux(t, e, subscribe).Close() // warms the server up
	heap := func() uint64 {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	time.Sleep(100 * time.Millisecond)
	before := heap()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = rawMux(t, e, subscribe)
	}
	time.Sleep(100 * time.Millisecond) // the subscribes' goroutines end
	per := (float64(heap()) - float64(before)) / n
	t.Logf("%.0f bytes of Go heap per idle subscribed /ws connection", per)
	if per > maxHeap {
		t.Fatalf("%.0f bytes of Go heap per idle subscribed /ws connection, want at most %d", per, maxHeap)
	}
	runtime.KeepAlive(conns)
}

// rawMux opens /ws on a bare socket, subscribes with req and reads the
// reply and the run's first event.
func rawMux(t *testing.T, e *htEnv, req string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
		"Authorization: Bearer %s\r\n\r\n", e.key)
	var head []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("handshake: %v (read %q)", err, head)
		}
		head = append(head, b[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		t.Fatalf("handshake: %q", head)
	}
	// A masked text frame; a zero mask leaves the payload as it is.
	frame := append([]byte{0x81, 0x80 | 126, byte(len(req) >> 8), byte(len(req)), 0, 0, 0, 0}, req...)
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"result"`, `"method":"event"`} {
		var h [4]byte
		if _, err := io.ReadFull(c, h[:2]); err != nil {
			t.Fatal(err)
		}
		size := int(h[1] & 0x7f)
		if size == 126 {
			if _, err := io.ReadFull(c, h[2:4]); err != nil {
				t.Fatal(err)
			}
			size = int(h[2])<<8 | int(h[3])
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(c, msg); err != nil {
			t.Fatal(err)
		}
		if h[0] != 0x81 || !strings.Contains(string(msg), want) {
			t.Fatalf("want a text message with %s, got %#x %s", want, h[0], msg)
		}
	}
	c.SetDeadline(time.Time{})
	return c
}
