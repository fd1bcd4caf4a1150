package hub

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// wsBatchBytes bounds one WebSocket message that carries several
// notifications, so that clients with a modest read limit (32 KiB is
// common) can take it; a single notification larger than this still goes
// out alone.
const wsBatchBytes = 16 << 10

var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, wsBatchBytes); return &b }}

// wsWriter sends queued notifications on a WebSocket. Notifications queued
// together go out as one JSON-RPC 2.0 batch (an array) in one text message:
// a fan-out to thousands of connections costs one write per connection per
// wake-up rather than one per event. A lone notification is sent as a plain
// object.
//
// The write deadline is one timer per connection that closes it when a
// write overruns, rather than a context (and its timer) per write.
type wsWriter struct {
	ws      *websocket.Conn
	gw      *gatherWriter
	timeout time.Duration
	timer   *time.Timer

	mu      sync.Mutex // writing, and the timer against shorten
	writing bool
}

func newWSWriter(ws *websocket.Conn, gw *gatherWriter, timeout time.Duration) *wsWriter {
	t := time.AfterFunc(time.Hour, func() { ws.CloseNow() })
	t.Stop()
	return &wsWriter{ws: ws, gw: gw, timeout: timeout, timer: t}
}

// shorten makes the write in progress, if any, end within d.
func (w *wsWriter) shorten(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.writing {
		w.timer.Reset(d)
	}
}

// stop releases the timer; the connection is closed by its owner.
func (w *wsWriter) stop() { w.timer.Stop() }

func (w *wsWriter) write(_ context.Context, frames [][]byte) error {
	w.mu.Lock()
	w.writing = true
	w.timer.Reset(w.timeout)
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.writing = false
		w.timer.Stop()
		w.mu.Unlock()
	}()
	for len(frames) > 0 {
		n, size := 1, len(frames[0])
		for n < len(frames) && size+len(frames[n])+1 <= wsBatchBytes-2 {
			size += len(frames[n]) + 1
			n++
		}
		var err error
		w.gw.gather()
		if n == 1 {
			err = w.ws.Write(context.Background(), websocket.MessageText, frames[0])
		} else {
			bp := batchBufs.Get().(*[]byte)
			b := append((*bp)[:0], '[')
			for i, f := range frames[:n] {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, f...)
			}
			b = append(b, ']')
			err = w.ws.Write(context.Background(), websocket.MessageText, b)
			*bp = b
			batchBufs.Put(bp)
		}
		if rerr := w.gw.release(); err == nil {
			err = rerr
		}
		if err != nil {
			return err
		}
		frames = frames[n:]
	}
	return nil
}

// Buffers of an accepted WebSocket. net/http hands a hijacked connection
// over with 4 KiB read and write buffers, which coder/websocket keeps for
// the connection's life: 8 KiB per idle subscriber. Clients send little
// (pongs, close frames, small requests), so the read buffer is small; and
// writes go through a gatherWriter that holds a pooled buffer only while a
// message is being written, so that each message still leaves in one
// write syscall.
const (
	wsReadBuffer  = 512
	wsWriteBuffer = 64 // frame headers; payloads pass through to gatherWriter
)

// smallBufHijacker wraps the ResponseWriter given to websocket.Accept.
type smallBufHijacker struct {
	http.ResponseWriter
	gw *gatherWriter
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
	pending, _ := brw.Reader.Peek(brw.Reader.Buffered())
	pending = bytes.Clone(pending)
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(pending), nc), max(wsReadBuffer, len(pending)))
	if len(pending) > 0 {
		br.Peek(len(pending))
	}
	h.gw = &gatherWriter{conn: nc}
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(h.gw, wsWriteBuffer)), nil
}

var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, wsBatchBytes+64); return &b }}

// gatherWriter passes writes to the connection, except between hold and
// release, when it gathers them in a pooled buffer and release sends them
// in one write. Control frames coder/websocket writes from other
// goroutines (pongs, close) pass through, or join the gathered bytes in
// order.
type gatherWriter struct {
	conn net.Conn
	mu   sync.Mutex
	hold bool
	buf  *[]byte
}

func (g *gatherWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.hold {
		return g.conn.Write(p)
	}
	if g.buf == nil {
		g.buf = gatherBufs.Get().(*[]byte)
		*g.buf = (*g.buf)[:0]
	}
	*g.buf = append(*g.buf, p...)
	return len(p), nil
}

func (g *gatherWriter) gather() {
	g.mu.Lock()
	g.hold = true
	g.mu.Unlock()
}

func (g *gatherWriter) release() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold = false
	if g.buf == nil {
		return nil
	}
	_, err := g.conn.Write(*g.buf)
	if cap(*g.buf) <= 1<<20 {
		gatherBufs.Put(g.buf)
	}
	g.buf = nil
	return err
}

// acceptWS accepts a WebSocket with the small buffers above.
func acceptWS(w http.ResponseWriter, r *http.Request) (*websocket.Conn, *gatherWriter, error) {
	hj := &smallBufHijacker{ResponseWriter: w}
	ws, err := websocket.Accept(hj, r, nil)
	if err != nil {
		return nil, nil, err
	}
	return ws, hj.gw, nil
}
