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
// write blocks, under the socket's own write deadline (kept by the
// GatherWriter, set only when the one in place runs short): a write that
// overruns fails, and coder/websocket then closes the connection. Unlike a
// timer, or a context per write (which coder/websocket keeps until the
// next write), it costs an idle connection nothing. tryWrite never blocks
// and needs no deadline: it is what the hub's shared writers use
// (writePool).
type wsWriter struct {
	ws      *websocket.Conn
	gw      *wsrpc.GatherWriter
	timeout time.Duration
}

func newWSWriter(ws *websocket.Conn, gw *wsrpc.GatherWriter, timeout time.Duration) *wsWriter {
	return &wsWriter{ws: ws, gw: gw, timeout: timeout}
}

// shorten makes the writes in progress, if any, end within d.
func (w *wsWriter) shorten(d time.Duration) { w.gw.Shorten(d) }

// writeMessage sends one message (a /ws reply) under the write deadline.
func (w *wsWriter) writeMessage(b []byte) error {
	w.gw.Begin(w.timeout)
	defer w.gw.End()
	w.gw.Gather()
	err := w.ws.Write(context.Background(), websocket.MessageText, b)
	if rerr := w.gw.Release(); err == nil {
		err = rerr
	}
	return err
}

// flush writes what a tryWrite left unsent, under the write deadline.
func (w *wsWriter) flush() error {
	w.gw.Begin(w.timeout)
	defer w.gw.End()
	return w.gw.Release()
}

func (w *wsWriter) write(_ context.Context, frames [][]byte) error {
	w.gw.Begin(w.timeout)
	defer w.gw.End()
	_, _, err := w.send(frames, false)
	return err
}

// tryWrite writes frames as far as the socket takes them without
// blocking: blocked reports that bytes may remain for flush to write, and
// sent how many frames were written or left to flush; the others were not
// touched (another goroutine was writing), and go back to the queue.
func (w *wsWriter) tryWrite(frames [][]byte) (sent int, blocked bool, err error) {
	return w.send(frames, true)
}

func (w *wsWriter) send(frames [][]byte, try bool) (sent int, blocked bool, err error) {
	for len(frames) > 0 {
		n, size := 1, len(frames[0])
		for n < len(frames) && size+len(frames[n])+1 <= wsBatchBytes-2 {
			size += len(frames[n]) + 1
			n++
		}
		if !try {
			w.gw.Gather()
		} else if !w.gw.TryGather() {
			return sent, true, nil
		}
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
		var rerr error
		if try {
			blocked, rerr = w.gw.TryRelease()
		} else {
			rerr = w.gw.Release()
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			return sent, false, err
		}
		frames, sent = frames[n:], sent+n
		if blocked {
			return sent, true, nil
		}
	}
	return sent, false, nil
}
