package hub

import (
	"context"
	"sync"
	"time"

	"github.com/coder/websocket"

	"runhub/hub/wsrpc"
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
// The write deadline is the socket's own (net.Conn.SetWriteDeadline), set
// while writes are in progress: a write that overruns fails, and
// coder/websocket then closes the connection. Unlike a timer, or a context
// per write (which coder/websocket keeps until the next write), it costs an
// idle connection nothing.
type wsWriter struct {
	ws      *websocket.Conn
	gw      *wsrpc.GatherWriter
	timeout time.Duration

	mu      sync.Mutex // writing, and the deadline against shorten
	writing int        // writes in progress (events, and replies on /ws)
}

func newWSWriter(ws *websocket.Conn, gw *wsrpc.GatherWriter, timeout time.Duration) *wsWriter {
	return &wsWriter{ws: ws, gw: gw, timeout: timeout}
}

// shorten makes the writes in progress, if any, end within d.
func (w *wsWriter) shorten(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.writing > 0 {
		w.gw.SetWriteDeadline(time.Now().Add(d))
	}
}

func (w *wsWriter) begin() {
	w.mu.Lock()
	w.writing++
	w.gw.SetWriteDeadline(time.Now().Add(w.timeout))
	w.mu.Unlock()
}

func (w *wsWriter) end() {
	w.mu.Lock()
	w.writing--
	if w.writing == 0 {
		w.gw.SetWriteDeadline(time.Time{})
	}
	w.mu.Unlock()
}

// writeMessage sends one message (a /ws reply) under the write deadline.
func (w *wsWriter) writeMessage(b []byte) error {
	w.begin()
	defer w.end()
	w.gw.Gather()
	err := w.ws.Write(context.Background(), websocket.MessageText, b)
	if rerr := w.gw.Release(); err == nil {
		err = rerr
	}
	return err
}

func (w *wsWriter) write(_ context.Context, frames [][]byte) error {
	w.begin()
	defer w.end()
	for len(frames) > 0 {
		n, size := 1, len(frames[0])
		for n < len(frames) && size+len(frames[n])+1 <= wsBatchBytes-2 {
			size += len(frames[n]) + 1
			n++
		}
		var err error
		w.gw.Gather()
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
		if rerr := w.gw.Release(); err == nil {
			err = rerr
		}
		if err != nil {
			return err
		}
		frames = frames[n:]
	}
	return nil
}
