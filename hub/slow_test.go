package hub_test

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"runhub/hub"
)

// rawWS is a WebSocket client on a bare TCP connection with a small receive
// buffer: it does the handshake and then reads only when told to, so a
// test sees exactly what the server put on the wire (including a close
// frame, or none).
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRawWS(t *testing.T, e *htEnv, run string, rcvbuf int) *rawWS {
	t.Helper()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		return serr
	}}
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key := make([]byte, 16)
	rand.Read(key)
	fmt.Fprintf(conn, "GET %s/stream HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
		e.runPath(run), addr, base64.StdEncoding.EncodeToString(key), e.key)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: HTTP %d", res.StatusCode)
	}
	return &rawWS{conn: conn, br: br}
}

// readAll reads frames until the connection ends (or the deadline), and
// returns the event seqs of the text messages, the close frame's code
// (0 if none) and reason, and the error that ended the reading.
func (w *rawWS) readAll(deadline time.Duration) (seqs []int64, closeCode int, reason string, err error) {
	w.conn.SetReadDeadline(time.Now().Add(deadline))
	var msg []byte
	for {
		var hdr [2]byte
		if _, err = io.ReadFull(w.br, hdr[:]); err != nil {
			return
		}
		fin, op := hdr[0]&0x80 != 0, hdr[0]&0x0f
		if hdr[1]&0x80 != 0 {
			err = errors.New("masked server frame")
			return
		}
		n := uint64(hdr[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err = io.ReadFull(w.br, b[:]); err != nil {
				return
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err = io.ReadFull(w.br, b[:]); err != nil {
				return
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		payload := make([]byte, n)
		if _, err = io.ReadFull(w.br, payload); err != nil {
			return
		}
		switch op {
		case 0x8: // close
			if len(payload) >= 2 {
				closeCode, reason = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
			}
			return
		case 0x9, 0xA: // ping, pong
		case 0x1, 0x0:
			msg = append(msg, payload...)
			if !fin {
				continue
			}
			var notes []wsNote
			if len(msg) > 0 && msg[0] == '[' {
				if jerr := json.Unmarshal(msg, &notes); jerr != nil || len(notes) < 2 {
					err = fmt.Errorf("bad batch %.200s", msg)
					return
				}
			} else {
				notes = make([]wsNote, 1)
				if jerr := json.Unmarshal(msg, &notes[0]); jerr != nil {
					err = fmt.Errorf("bad message %.200s", msg)
					return
				}
			}
			for _, n := range notes {
				if n.Params.Seq == nil {
					err = fmt.Errorf("notification without seq in %.200s", msg)
					return
				}
				seqs = append(seqs, *n.Params.Seq)
			}
			msg = nil
		default:
			err = fmt.Errorf("unexpected opcode %d", op)
			return
		}
	}
}

// contiguous reports whether seqs is 1..len(seqs).
func contiguous(seqs []int64) bool {
	for i, s := range seqs {
		if s != int64(i+1) {
			return false
		}
	}
	return true
}

// flood appends about total bytes of padded entries, 8 per request, and
// returns the run's last seq.
func flood(t *testing.T, e *htEnv, run string, total, entryBytes int, keepUp ...*seqReader) int64 {
	t.Helper()
	start := time.Now()
	const per = 8
	// A reader that keeps up is never more than floodWindow entries behind
	// (half of a 64 KiB queue of 2,000-byte entries): the flood waits for
	// it, so on a loaded machine the test still tells a reader that is slow
	// because it stopped from one that is slow because it was not
	// scheduled. Readers that stop are not waited for.
	const floodWindow = 16
	base := e.lastSeq(run)
	n := 0
	for sent := 0; sent < total; sent += per * entryBytes {
		entries := make([]string, per)
		for i := range entries {
			entries[i] = logEntry(n, entryBytes)
			n++
		}
		e.appendLog(run, entries...)
		for _, r := range keepUp {
			deadline := time.Now().Add(30 * time.Second)
			for r.seen.Load() < base+int64(n)-floodWindow {
				if time.Now().After(deadline) {
					t.Fatalf("flood: a reader that keeps up is at seq %d of %d after 30 s", r.seen.Load(), base+int64(n))
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	t.Logf("flood: %d entries of %d bytes in %v", n, entryBytes, time.Since(start).Round(time.Millisecond))
	return e.lastSeq(run)
}

// slowEnv is a server with a 64 KiB queue per connection and small socket
// send buffers, so that a client that stops reading overflows its queue
// after little more than 64 KiB.
func slowEnv(t *testing.T, writeTimeout time.Duration) *htEnv {
	return newHTEnv(t, hub.Config{QueueBytes: 64 << 10, WriteTimeout: writeTimeout},
		htOptions{listener: func(l net.Listener) net.Listener { return smallBufListener{Listener: l, sndbuf: 64 << 10} }})
}

// TestSlowConsumerDropped: with a 64 KiB queue, clients that never read
// (a WebSocket and an SSE one) are disconnected while ~8 MiB of entries are
// appended; readers that keep up get everything in order, and the run
// state ends with them. The dropped SSE client resumes with its last seq.
func TestSlowConsumerDropped(t *testing.T) {
	e := slowEnv(t, time.Second)
	run := e.newRun()
	ctx := testCtx(t, 60*time.Second)

	stuckWS := dialRawWS(t, e, run, 4<<10)
	stuckSSE, err := openSSEWith(ctx, smallRecvClient(4<<10), e.streamURL(run), e.key, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stuckSSE.close)
	goodWS := readWSSeqs(ctx, e.mustWS(ctx, run, ""))
	goodSSE := readSSESeqs(e.mustSSE(ctx, run, ""))
	// Live, so that the flood goes through the queues, not the catch-up.
	waitFor(t, 5*time.Second, "4 live subscriptions", func() bool { return e.h.LiveForTest() == 4 })

	last := flood(t, e, run, 8<<20, 2000, goodWS, goodSSE)
	goodWS.want(t, "reading ws", 1, last)
	goodSSE.want(t, "reading sse", 1, last)
	waitFor(t, 10*time.Second, "the stuck clients to be dropped", func() bool { _, s := e.h.StateForTest(); return s == 2 })

	// The stuck WebSocket's connection was closed by the server: what it
	// holds is a gapless prefix, then the end of the connection.
	seqs, code, reason, err := stuckWS.readAll(10 * time.Second)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("stuck websocket still open after %d events: %v", len(seqs), err)
	}
	if !contiguous(seqs) || int64(len(seqs)) >= last {
		t.Errorf("stuck websocket got %d events (contiguous %v) of %d", len(seqs), contiguous(seqs), last)
	}
	if code != 0 && (code != 4008 || reason != "slow consumer") {
		t.Errorf("stuck websocket closed with %d %q, want 4008 \"slow consumer\"", code, reason)
	}
	t.Logf("stuck websocket: %d events, then close code %d (%v)", len(seqs), code, err)

	// The stuck SSE response ends without stream-end; it resumes.
	var seen int64
	for {
		ev, err := stuckSSE.next()
		if err != nil {
			t.Logf("stuck sse: %d events, then %v", seen, err)
			break
		}
		if ev.event == "stream-end" {
			t.Fatalf("stuck sse got stream-end")
		}
		if ev.hasID {
			if ev.id != seen+1 {
				t.Fatalf("stuck sse: id %d after %d", ev.id, seen)
			}
			seen = ev.id
		}
	}
	if seen >= last {
		t.Fatalf("stuck sse got all %d events: it was not slow", seen)
	}
	resumed := e.mustSSE(ctx, run, "", "Last-Event-ID", fmt.Sprint(seen))
	resumed.wantIDs(t, seen+1, last)

	e.setStatus(run, "completed")
	resumed.wantIDs(t, last+1, last+1)
	resumed.wantEnd(t, "completed")
	for name, r := range map[string]*seqReader{"reading ws": goodWS, "reading sse": goodSSE} {
		r.want(t, name, last+1, last+1)
		r.want(t, name, -1, -1)
	}
	waitFor(t, 5*time.Second, "the hub to drop the run", func() bool {
		r, s := e.h.StateForTest()
		return r == 0 && s == 0
	})
}

// TestSlowConsumerCloseCode: clients that stop reading during a burst and
// read again before the write timeout (and, on WebSocket, the slow grace) find their connection ended: the
// WebSocket with close 4008 "slow consumer" after a gapless prefix, the SSE
// response closed without stream-end. A reader that kept up is unaffected.
func TestSlowConsumerCloseCode(t *testing.T) {
	e := newHTEnv(t, hub.Config{QueueBytes: 64 << 10, WriteTimeout: 30 * time.Second, SlowGrace: 30 * time.Second},
		htOptions{listener: func(l net.Listener) net.Listener { return smallBufListener{Listener: l, sndbuf: 64 << 10} }})
	run := e.newRun()
	ctx := testCtx(t, 60*time.Second)

	lateWS, err := e.dialWS(ctx, run, "", smallRecvClient(4<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer lateWS.CloseNow()
	lateSSE, err := openSSEWith(ctx, smallRecvClient(4<<10), e.streamURL(run), e.key, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lateSSE.close)
	good := readWSSeqs(ctx, e.mustWS(ctx, run, ""))
	waitFor(t, 5*time.Second, "3 live subscriptions", func() bool { return e.h.LiveForTest() == 3 })

	last := flood(t, e, run, 2<<20, 2000, good)
	good.want(t, "reader", 1, last)

	var seqs []int64
	var closeErr error
	for {
		n, b, err := readNote(ctx, lateWS)
		if err != nil {
			closeErr = err
			break
		}
		if n.Method != "event" || n.Params.Seq == nil {
			t.Fatalf("late websocket got %s", b)
		}
		seqs = append(seqs, *n.Params.Seq)
	}
	var ce websocket.CloseError
	if !errors.As(closeErr, &ce) || ce.Code != 4008 || ce.Reason != "slow consumer" {
		t.Errorf("late websocket ended with %v, want close 4008 \"slow consumer\"", closeErr)
	}
	if !contiguous(seqs) || int64(len(seqs)) >= last {
		t.Errorf("late websocket got %d events (contiguous %v) of %d", len(seqs), contiguous(seqs), last)
	}

	var seen int64
	for {
		ev, err := lateSSE.next()
		if err != nil {
			t.Logf("late sse: %d events, then %v", seen, err)
			break
		}
		if ev.event == "stream-end" || !ev.hasID || ev.id != seen+1 {
			t.Fatalf("late sse: event %q id %d after %d", ev.event, ev.id, seen)
		}
		seen = ev.id
	}
	if seen >= last {
		t.Errorf("late sse got all %d events: it was not dropped", seen)
	}
	waitFor(t, 5*time.Second, "one subscription left", func() bool { _, s := e.h.StateForTest(); return s == 1 })

	// Both resume with their last seq.
	ws := e.mustWS(ctx, run, fmt.Sprintf("after=%d", len(seqs)))
	wantSeqs(t, ctx, ws, run, int64(len(seqs))+1, last)
	sse := e.mustSSE(ctx, run, "", "Last-Event-ID", fmt.Sprint(seen))
	sse.wantIDs(t, seen+1, last)
	e.setStatus(run, "completed")
	good.want(t, "reader", last+1, last+1)
	good.want(t, "reader", -1, -1)
	sse.wantIDs(t, last+1, last+1)
	sse.wantEnd(t, "completed")
	wantSeqs(t, ctx, ws, run, last+1, last+1)
	if n, b, err := readNote(ctx, ws); err != nil || n.Method != "stream_end" {
		t.Fatalf("got %s %v, want stream_end", b, err)
	}
}

// throttledReader reads at most about rate bytes per second.
type throttledReader struct {
	r    io.Reader
	rate int
}

func (t throttledReader) Read(p []byte) (int, error) {
	if len(p) > 16<<10 {
		p = p[:16<<10]
	}
	n, err := t.r.Read(p)
	time.Sleep(time.Duration(n) * time.Second / time.Duration(t.rate))
	return n, err
}

// TestCatchUpSteadyReader: a client that reads steadily, but slower than
// a whole catch-up page can be written within WriteTimeout, is not
// disconnected: the contract drops clients that fall behind their bounded
// queue, and WriteTimeout is meant for clients that stopped reading.
func TestCatchUpSteadyReader(t *testing.T) {
	e := newHTEnv(t, hub.Config{WriteTimeout: time.Second},
		htOptions{listener: func(l net.Listener) net.Listener { return smallBufListener{Listener: l, sndbuf: 32 << 10} }})
	run := e.newRun()
	const entries, size = 240, 16 << 10 // ~4 MiB, one catch-up page
	for i := 0; i < entries; i += 24 {
		batch := make([]string, 24)
		for j := range batch {
			batch[j] = logEntry(i+j, size)
		}
		e.appendLog(run, batch...)
	}
	e.setStatus(run, "completed")
	last := e.lastSeq(run)
	ctx := testCtx(t, 30*time.Second)

	// About 2 MiB/s: the page takes ~2 s, each 1 MiB of it ~0.5 s.
	c, err := openSSEWith(ctx, smallRecvClient(32<<10), e.streamURL(run), e.key, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	c.r = bufio.NewReaderSize(throttledReader{r: c.res.Body, rate: 2 << 20}, 64<<10)
	start := time.Now()
	var seen int64
	for {
		ev, err := c.next()
		if err != nil {
			t.Fatalf("after %v and %d of %d events: %v (the server dropped a client that was reading steadily)",
				time.Since(start).Round(time.Millisecond), seen, last, err)
		}
		if ev.event == "stream-end" {
			break
		}
		if !ev.hasID || ev.id != seen+1 {
			t.Fatalf("event %q id %d after %d", ev.event, ev.id, seen)
		}
		seen = ev.id
	}
	if seen != last {
		t.Fatalf("stream-end after %d of %d events", seen, last)
	}
	t.Logf("caught up %d events in %v", seen, time.Since(start).Round(time.Millisecond))
}

// TestSlowConsumerCutAfterGrace: a WebSocket client that never reads is
// cut within the slow grace after its queue overflows, long before the
// write deadline, and the hub's slow-consumer counter shows it.
func TestSlowConsumerCutAfterGrace(t *testing.T) {
	e := newHTEnv(t, hub.Config{QueueBytes: 64 << 10, WriteTimeout: time.Minute, SlowGrace: 200 * time.Millisecond},
		htOptions{listener: func(l net.Listener) net.Listener { return smallBufListener{Listener: l, sndbuf: 64 << 10} }})
	run := e.newRun()
	ctx := testCtx(t, 60*time.Second)
	stuck := dialRawWS(t, e, run, 4<<10)
	defer stuck.conn.Close()
	good := readWSSeqs(ctx, e.mustWS(ctx, run, ""))
	waitFor(t, 5*time.Second, "2 live subscriptions", func() bool { return e.h.LiveForTest() == 2 })

	last := flood(t, e, run, 2<<20, 2000, good)
	good.want(t, "reader", 1, last)
	// The write deadline is a minute away: only the grace can end it.
	waitFor(t, 10*time.Second, "the stuck client to be cut", func() bool { _, s := e.h.StateForTest(); return s == 1 })
	var slow float64
	for _, c := range e.h.Collectors() {
		if strings.Contains(fmt.Sprint(c.(prometheus.Metric).Desc()), `"runhub_hub_slow_consumers_total"`) {
			slow = testutil.ToFloat64(c)
		}
	}
	if slow != 1 {
		t.Errorf("runhub_hub_slow_consumers_total = %v, want 1", slow)
	}
}
