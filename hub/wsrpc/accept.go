package wsrpc

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// Buffers of an accepted WebSocket. net/http hands a hijacked connection
// over with 4 KiB read and write buffers, which coder/websocket keeps for
// the connection's life: 8 KiB per idle subscriber. Clients send little
// (pongs, close frames, small requests), so the read buffer is small; and
// writes go through a GatherWriter that holds a pooled buffer only while a
// message is being written, so that each message still leaves in one
// write syscall.
const (
	// wsReadBuffer is bufio's least: it holds a frame header (at most 14
	// bytes) and a usual pong. A payload longer than the buffer is read
	// straight into the message (bufio reads a large read directly), so a
	// request costs a read or two more than with a larger buffer, and
	// requests are rare; an idle connection keeps 240 bytes less.
	wsReadBuffer = 16
	// wsWriteBuffer holds a frame header (at most 14 bytes) and a ping's
	// payload (a counter); a larger payload passes through to the
	// GatherWriter, which gathers a message's frames into one write.
	wsWriteBuffer = 16
	// gatherBufBytes is the size a pooled gather buffer starts with: a
	// message of 16 KiB (the hub's largest batch of notifications) and
	// its frame header, so that the usual message never grows it.
	gatherBufBytes = 16<<10 + 64
)

// smallBufHijacker wraps the ResponseWriter given to websocket.Accept.
type smallBufHijacker struct {
	http.ResponseWriter
	gw *GatherWriter
}

func (h *smallBufHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil {
		nc.Close()
		return nil, nil, err
	}
	// Bytes the client sent after its handshake are already buffered:
	// move them into the new reader's buffer, where coder/websocket looks.
	// (Only then: the readers that do it stay with the connection.)
	var br *bufio.Reader
	if n := brw.Reader.Buffered(); n == 0 {
		br = bufio.NewReaderSize(nc, wsReadBuffer)
	} else {
		pending, _ := brw.Reader.Peek(n)
		pending = bytes.Clone(pending)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(pending), nc), max(wsReadBuffer, len(pending)))
		br.Peek(len(pending))
	}
	h.gw = &GatherWriter{conn: nc}
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(h.gw, wsWriteBuffer)), nil
}

var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, gatherBufBytes); return &b }}

// GatherWriter passes writes to the connection, except between Gather and
// Release, when it gathers them in a pooled buffer and release sends them
// in one write. Control frames coder/websocket writes from other
// goroutines (pongs, close) pass through, or join the gathered bytes in
// order.
//
// TryRelease sends what was gathered without blocking: what the socket
// does not take stays as a backlog, which every later write joins in
// order, until Release or Flush writes it (blocking). So a goroutine that
// writes for many connections never waits on one of them.
//
// It also keeps the connection's write deadline for the writes between
// Begin and End, lazily: the socket's deadline is set again only when the
// one in place would leave a write less than three quarters of its
// timeout, and a write made outside Begin and End (a pong, a close) first
// clears a deadline left from an earlier write. Setting the deadline
// twice per message was a measurable share of the delivery CPU.
type GatherWriter struct {
	conn net.Conn
	mu   sync.Mutex
	hold bool
	off  int32 // bytes of *buf already written (a backlog; messages are far below 2 GiB)
	buf  *[]byte
	err  error // a failed write of TryRelease: every later write fails with it

	// dmu guards the deadline state; unlike mu it is never held across a
	// write, so that Shorten reaches a write blocked on a full socket.
	dmu      sync.Mutex
	active   int32 // writes between Begin and End
	deadline int64 // the socket's write deadline, Unix ns (0: none)

	raw *rawWriter // made at the first TryRelease
}

// rawWriter is what TryRelease needs of the socket, made once it is first
// used (an idle connection that never received an event goes without).
type rawWriter struct {
	conn syscall.RawConn
	try  func(fd uintptr) bool
}

func (g *GatherWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return 0, g.err
	}
	if !g.hold && g.buf == nil {
		g.clearIdleDeadline()
		return g.conn.Write(p)
	}
	if g.buf == nil {
		g.buf = gatherBufs.Get().(*[]byte)
		*g.buf = (*g.buf)[:0]
	}
	*g.buf = append(*g.buf, p...)
	return len(p), nil
}

// clearIdleDeadline clears a deadline left from an earlier write when no
// write between Begin and End is in progress.
func (g *GatherWriter) clearIdleDeadline() {
	g.dmu.Lock()
	if g.active == 0 && g.deadline != 0 {
		g.deadline = 0
		g.conn.SetWriteDeadline(time.Time{})
	}
	g.dmu.Unlock()
}

// Begin starts a write that must end within timeout, give or take its
// last quarter (the deadline in place is kept while it is between three
// quarters of timeout and timeout away); End ends it.
func (g *GatherWriter) Begin(timeout time.Duration) {
	g.dmu.Lock()
	g.active++
	now := time.Now()
	if left := time.Duration(g.deadline - now.UnixNano()); g.deadline == 0 || left < timeout-timeout/4 || left > timeout {
		t := now.Add(timeout)
		g.deadline = t.UnixNano()
		g.conn.SetWriteDeadline(t)
	}
	g.dmu.Unlock()
}

func (g *GatherWriter) End() {
	g.dmu.Lock()
	g.active--
	g.dmu.Unlock()
}

// Shorten makes the writes in progress between Begin and End, if any, end
// within d.
func (g *GatherWriter) Shorten(d time.Duration) {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	if g.active > 0 {
		t := time.Now().Add(d)
		g.deadline = t.UnixNano()
		g.conn.SetWriteDeadline(t)
	}
}

func (g *GatherWriter) Gather() {
	g.mu.Lock()
	g.hold = true
	g.mu.Unlock()
}

// TryGather is Gather unless a write holds the connection (a blocking
// write of another goroutine: a pong, a reply, a flush), when it reports
// false and the caller, which must not wait, writes nothing.
func (g *GatherWriter) TryGather() bool {
	if !g.mu.TryLock() {
		return false
	}
	g.hold = true
	g.mu.Unlock()
	return true
}

// Release sends what was gathered, and any backlog before it, blocking
// until the socket takes it (or its deadline passes). Called without a
// Gather, it writes the backlog a TryRelease left.
func (g *GatherWriter) Release() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold = false
	return g.flushLocked()
}

func (g *GatherWriter) flushLocked() error {
	if g.err != nil {
		g.dropLocked()
		return g.err
	}
	if g.buf == nil {
		return nil
	}
	_, err := g.conn.Write((*g.buf)[g.off:])
	g.dropLocked()
	return err
}

func (g *GatherWriter) dropLocked() {
	if g.buf != nil && cap(*g.buf) <= 1<<20 {
		gatherBufs.Put(g.buf)
	}
	g.buf, g.off = nil, 0
}

// CanTry reports whether TryRelease can write without blocking: the
// connection is a socket (a TLS connection is not: TryRelease leaves all
// it gathered for Release).
func (g *GatherWriter) CanTry() bool {
	_, ok := g.conn.(syscall.Conn)
	return ok
}

// TryRelease ends gathering and writes what was gathered, after any
// backlog, as far as the socket takes it without blocking. blocked
// reports that a backlog may remain (or that another goroutine is writing,
// and gathering may not have ended), for Release to write. An error is
// kept: every later write fails with it.
func (g *GatherWriter) TryRelease() (blocked bool, err error) {
	if !g.mu.TryLock() {
		return true, nil
	}
	defer g.mu.Unlock()
	g.hold = false
	if g.err != nil {
		g.dropLocked()
		return false, g.err
	}
	if g.buf == nil {
		return false, nil
	}
	if g.raw == nil {
		sc, ok := g.conn.(syscall.Conn)
		if !ok {
			return true, nil // for Release to write (see CanTry)
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			g.err = err
			g.dropLocked()
			return false, err
		}
		g.raw = &rawWriter{conn: rc, try: g.try}
	}
	// A deadline left from an earlier write, now past, would fail this
	// write before it is tried.
	g.clearIdleDeadline()
	if err := g.raw.conn.Write(g.raw.try); err != nil && g.err == nil {
		g.err = err
	}
	if g.err != nil {
		g.dropLocked()
		return false, g.err
	}
	if int(g.off) < len(*g.buf) {
		return true, nil
	}
	g.dropLocked()
	return false, nil
}

// try is one non-blocking attempt to write the backlog (RawConn.Write
// calls it once: it always reports done).
func (g *GatherWriter) try(fd uintptr) bool {
	for int(g.off) < len(*g.buf) {
		n, err := syscall.Write(int(fd), (*g.buf)[g.off:])
		if n > 0 {
			g.off += int32(n)
		}
		switch {
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			return true
		case err != nil:
			g.err = &net.OpError{Op: "write", Net: "tcp", Err: err}
			return true
		case n == 0:
			return true
		}
	}
	return true
}

// Accept accepts a WebSocket with the small buffers above; the
// GatherWriter it returns is the one every message of the connection
// should be written through (Gather, write, Release).
func Accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, *GatherWriter, error) {
	hj := &smallBufHijacker{ResponseWriter: w}
	ws, err := websocket.Accept(hj, r, nil)
	if err != nil {
		return nil, nil, err
	}
	return ws, hj.gw, nil
}
