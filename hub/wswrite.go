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
// The write deadline is one timer per connection that closes it when a
// write overruns, rather than a context (and its timer) per write.
type wsWriter struct {
	ws      *websocket.Conn
	gw      *wsrpc.GatherWriter
	timeout time.Duration
	timer   *time.Timer

	mu      sync.Mutex // writing, and the timer against shorten
	writing bool
}

func newWSWriter(ws *websocket.Conn, gw *wsrpc.GatherWriter, timeout time.Duration) *wsWriter {
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
