package rest

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Limits on slow clients. A client that holds a connection without sending
// its request costs the server a goroutine and a file descriptor, so every
// stage of reading a request has a deadline.
const (
	// DefaultHeaderTimeout bounds the request line and headers: a few KiB
	// that any client sends in one round trip; 10 s allows a slow mobile
	// link and cuts a slowloris client that trickles header bytes.
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds reading a whole request body, counted from
	// the end of its headers: the largest body (DefaultMaxBodyBytes, 32 MiB)
	// arrives within it at about 2.2 Mbit/s, a slow uplink. A handler that
	// legitimately reads its body for longer (a streaming ingest) extends
	// the deadline itself per read with http.ResponseController's
	// SetReadDeadline. Requests without a body (SSE streams) have nothing to
	// read and are bounded by their write deadlines; WebSockets set their
	// own deadlines after the upgrade.
	DefaultBodyTimeout = 2 * time.Minute
	// DefaultIdleTimeout is how long a keep-alive connection may wait for
	// its next request: long enough for a client polling every minute to
	// reuse its connection, short enough that idle ones do not pile up.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultIngestIdleTimeout is how long an event-stream upload (POST
	// .../event_stream/) may go without a line before it is ended. Such an
	// upload stays open while its agent works, and PostHog's sender closes
	// one after at most 5 minutes: 6 leaves a minute for a slow last line,
	// and ends an upload whose sender is gone.
	DefaultIngestIdleTimeout = 6 * time.Minute
)

// Timeouts bound how long a client may take to send a request; a zero field
// takes its default. Tests shrink them.
type Timeouts struct {
	Header time.Duration // request line and headers (DefaultHeaderTimeout)
	Body   time.Duration // the whole body, after the headers (DefaultBodyTimeout)
	Idle   time.Duration // between two requests on a connection (DefaultIdleTimeout)
	// IngestIdle replaces Body for an event-stream upload: the longest
	// wait for its next line (DefaultIngestIdleTimeout).
	IngestIdle time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	if t.Header <= 0 {
		t.Header = DefaultHeaderTimeout
	}
	if t.Body <= 0 {
		t.Body = DefaultBodyTimeout
	}
	if t.Idle <= 0 {
		t.Idle = DefaultIdleTimeout
	}
	if t.IngestIdle <= 0 {
		t.IngestIdle = DefaultIngestIdleTimeout
	}
	return t
}

// HTTPServer is the http.Server the API listens with: the one place its
// timeouts are set, used by `runhub serve` and by the tests alike. The
// caller adds what belongs to the process (BaseContext, ErrorLog).
// There is no ReadTimeout (counted from the request's first byte):
// ServeHTTP sets the body deadline once the headers are in, so a slow
// header phase does not eat into the body's time.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.timeouts.Header,
		IdleTimeout:       s.timeouts.Idle,
	}
}

// MetricsServer serves only GET /metrics, for a listener of its own
// (Config.SeparateMetrics), with the API's header and idle timeouts.
func (s *Server) MetricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metricsHandler())
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: s.timeouts.Header,
		IdleTimeout:       s.timeouts.Idle,
	}
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})
}

// requestBody wraps a request body to hold the body-read deadline and to
// know whether the handler read it to its end.
type requestBody struct {
	io.ReadCloser
	rc   http.ResponseController
	done atomic.Bool
}

// guardBody sets the body-read deadline of r and wraps its body in b; nil for a
// request without a body, whose connection keeps no read deadline.
func (s *Server) guardBody(w http.ResponseWriter, r *http.Request, b *requestBody) *requestBody {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	b.ReadCloser, b.rc = r.Body, *http.NewResponseController(w)
	b.rc.SetReadDeadline(time.Now().Add(s.timeouts.Body))
	r.Body = b
	return b
}

// Read notes the end of the body. There Go clears the read deadline itself
// (its watch for the client going away starts without one), so a handler
// that runs long after reading its body is not cancelled by it.
func (b *requestBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done.Store(true)
	}
	return n, err
}

// unread reports whether the handler answered without reading the whole
// body (refused by auth, routing, size, rate limit, or cut by the deadline).
func (b *requestBody) unread() bool { return b != nil && !b.done.Load() }

// cut makes the server close a connection whose body was not read, at
// once: without it Go would read on (up to 256 KiB, until the client sends
// them or the body deadline passes) hoping to reuse the connection, and a
// client announcing a body it never sends would hold it that long.
func (b *requestBody) cut() { b.rc.SetReadDeadline(time.Now()) }

// Hijack records the hijack: a hijacked connection (WebSocket) belongs to
// its new owner and is never cut.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked = true
	}
	return c, brw, err
}

// beforeHeader runs once, before the status line is written: a response
// sent while the body is unread announces that the connection closes.
func (w *statusWriter) beforeHeader() {
	if w.body.unread() {
		w.Header().Set("Connection", "close")
	}
}
