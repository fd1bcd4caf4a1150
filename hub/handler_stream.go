package hub

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"runhub/hub/wsrpc"
	"runhub/store"
)

// Close codes of the contract.
const (
	closeSlowConsumer websocket.StatusCode = 4008
)

// closeRestart tells a WebSocket client that this node is going away and
// that it should reconnect at once (to another node, through the load
// balancer) and resume from its last seq: 1012 "service restart".
func closeRestart(ws *websocket.Conn) {
	ws.Close(websocket.StatusServiceRestart, "service restart")
}

// sseRetryMillis is the reconnection delay an SSE stream ending at a drain
// tells EventSource to use (the "retry:" field): one second, short enough
// that a viewer barely notices the move, and long enough that the load
// balancer's health check (on /readyz, 503 from the drain's start) has
// usually taken this node out before the reconnection arrives. It is a
// constant, so every client of a draining node comes back within the same
// second; a client that wants jitter adds it itself.
const sseRetryMillis = 1000

// sseRetry is the last frame of an SSE stream ended by a drain.
var sseRetry = []byte("retry: " + strconv.Itoa(sseRetryMillis) + "\n\n")

// startAfter resolves where a stream starts: Last-Event-ID or ?after= (the
// seq already seen), ?start=latest (after the newest event), else from the
// first event.
func startAfter(r *http.Request, run *store.Run) (int64, error) {
	v := r.Header.Get("Last-Event-ID")
	attr := "Last-Event-ID"
	if v == "" {
		v, attr = r.URL.Query().Get("after"), "after"
	}
	if v != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return 0, store.Invalid(attr, "%s must be a non-negative event seq.", attr)
		}
		return n, nil
	}
	if r.URL.Query().Get("start") == "latest" {
		return run.LastSeq, nil
	}
	return 0, nil
}

// ServeStream serves GET .../runs/{id}/stream for an authorised run: a
// WebSocket when the request asks for an upgrade, else SSE. It returns an
// error only before the response has started.
func (h *Hub) ServeStream(w http.ResponseWriter, r *http.Request, run *store.Run) error {
	after, err := startAfter(r, run)
	if err != nil {
		return err
	}
	hide, err := sseHide(r)
	if err != nil {
		return err
	}
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return h.serveWS(w, r, run, after)
	}
	h.serveSSE(w, r, run, after, hide)
	return nil
}

// serveSSE streams the run over SSE; hide names the events it leaves out
// (sseHide).
func (h *Hub) serveSSE(w http.ResponseWriter, r *http.Request, run *store.Run, after int64, hide func(store.Event) bool) {
	rc := http.NewResponseController(w)
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc.Flush()
	write := func(_ context.Context, frames [][]byte) error {
		rc.SetWriteDeadline(time.Now().Add(h.cfg.WriteTimeout))
		for _, f := range frames { // buffered by the server; one flush sends them together
			if _, err := w.Write(f); err != nil {
				return err
			}
		}
		return rc.Flush()
	}
	if !h.hold() {
		write(r.Context(), [][]byte{sseRetry})
		return
	}
	defer h.work.Done()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(h.ctx, cancel)() // Hub.Close ends it too
	// A revoked key ends the response: EventSource has no close code.
	defer h.watchKeys(r.Context(), cancel).stop()
	c := newConn(kindSSE, h.cfg.QueueBytes, h.cfg.WriteInterval, write)
	c.hide = hide
	c.onSlow = h.m.slow.Inc // a blocked write ends at its deadline
	s := h.subscribe(ctx, c, run.ID, after, run.LastSeq, run.Status)
	defer h.unsubscribe(s)
	keepAlive := time.NewTicker(h.cfg.KeepAlive)
	defer keepAlive.Stop()
	for {
		if err := c.flush(ctx, h); err != nil {
			h.logEnd(ctx, run.ID, "sse", err)
			return
		}
		select {
		case <-ctx.Done():
			if h.draining() {
				// The client reconnects (Last-Event-ID) after the hint.
				write(context.Background(), [][]byte{sseRetry})
			}
			return
		case <-c.signal:
		case <-keepAlive.C:
			if err := write(ctx, [][]byte{sseKeepAlive}); err != nil {
				return
			}
		}
	}
}

// serveWS hands the connection over to the hub and returns: a WebSocket
// stream outlives its handler, so that an idle subscriber costs neither a
// handler goroutine (with the stack it grew while authorising) nor the
// request's memory. What remains per idle connection is coder/websocket's
// reader goroutine and buffers, the subscription, and the ping timer.
func (h *Hub) serveWS(w http.ResponseWriter, r *http.Request, run *store.Run, after int64) error {
	ws, gw, err := wsrpc.Accept(w, r)
	if err != nil {
		return nil // Accept has answered the request
	}
	if !h.hold() {
		closeRestart(ws)
		return nil
	}
	// CloseRead's goroutine answers pings and the close handshake (this
	// stream takes no client messages); ctx ends with the connection, or
	// with the hub once the client has been told to move (CloseRead drops
	// the connection as soon as its context ends, so ctx must not end
	// before the 1012 is sent).
	ctx, cancel := context.WithCancel(context.Background())
	ctx = ws.CloseRead(ctx)
	drain := new(drainEntry)
	h.drains.add(drain, func() {
		closeRestart(ws)
		cancel()
	})
	ww := newWSWriter(ws, gw, h.cfg.WriteTimeout)
	c := newConn(kindWS, h.cfg.QueueBytes, h.cfg.WriteInterval, ww.write)
	// writers owns the connection's writer and close goroutines; after
	// writers.close none starts (a shared writer may still hand the
	// connection back by calling c.start).
	var writers group
	// The writer is built once: starting it (go writer()) allocates
	// nothing per wake-up.
	writer := func() {
		defer writers.leave()
		err := ww.flush() // what a shared writer left unsent comes first
		if err == nil {
			err = c.drain(ctx, h)
		}
		if err != nil {
			h.logEnd(ctx, run.ID, "ws", err)
			switch {
			case errors.Is(err, errSlowConsumer):
				ws.Close(closeSlowConsumer, "slow consumer")
			case errors.Is(err, errStreamEnded):
				ws.Close(websocket.StatusNormalClosure, "stream ended")
			}
			cancel()
		}
	}
	c.start = func() {
		if writers.enter() {
			go writer()
		}
	}
	if gw.CanTry() {
		c.pool, c.tryWrite = &h.pool, ww.tryWrite
	}
	c.onSlow = func() {
		h.m.slow.Inc()
		// A writer blocked on a full socket would hold the connection
		// until the write deadline; the client gets SlowGrace to take what
		// is in flight, then the connection ends (4008 if it can still be
		// sent, else a plain close).
		ww.shorten(h.cfg.SlowGrace)
	}
	// A revoked key closes the stream with 4001; the close runs as a
	// writer (stop, below, comes before writers.Wait, so none starts
	// after it).
	rv := h.watchKeys(r.Context(), func() {
		writers.goDo(func() {
			ws.Close(closeRevoked, "API key revoked")
			cancel()
		})
	})
	p := h.startPinger(ctx, ws)
	s := h.subscribe(ctx, c, run.ID, after, run.LastSeq, run.Status)
	context.AfterFunc(ctx, func() {
		defer h.work.Done()
		h.drains.remove(drain)
		rv.stop()
		// No wake-up reaches c once it is unsubscribed, so no writer
		// starts after this; wait for the one that may be running.
		h.unsubscribe(s)
		p.stop()
		if h.draining() {
			closeRestart(ws)
		} else {
			ws.CloseNow()
		}
		writers.close()
		cancel()
	})
	return nil
}

func (h *Hub) logEnd(ctx context.Context, runID, transport string, err error) {
	switch {
	case errors.Is(err, errStreamEnded), ctx.Err() != nil:
	case errors.Is(err, errSlowConsumer):
		h.log.Info("slow consumer disconnected", "run_id", runID, "transport", transport)
	default:
		h.log.Debug("stream closed", "run_id", runID, "transport", transport, "err", err)
	}
}
