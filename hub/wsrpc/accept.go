package wsrpc

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
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
	// wsReadBuffer holds a pong or a close frame (at most 131 bytes)
	// and a usual request (a subscribe is about 120 bytes) in one read; a
	// larger request takes a few reads, and requests are rare.
	wsReadBuffer  = 256
	wsWriteBuffer = 64 // frame headers; payloads pass through to GatherWriter
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
type GatherWriter struct {
	conn net.Conn
	mu   sync.Mutex
	hold bool
	buf  *[]byte
}

func (g *GatherWriter) Write(p []byte) (int, error) {
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

// SetWriteDeadline sets the connection's write deadline (see
// net.Conn.SetWriteDeadline): a write that overruns it fails, and
// coder/websocket then closes the connection.
func (g *GatherWriter) SetWriteDeadline(t time.Time) error { return g.conn.SetWriteDeadline(t) }

func (g *GatherWriter) Gather() {
	g.mu.Lock()
	g.hold = true
	g.mu.Unlock()
}

func (g *GatherWriter) Release() error {
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
