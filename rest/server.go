// Package rest serves runhub's HTTP API: the PostHog-compatible tasks and
// task-runs endpoints, authentication (API keys, scopes, projects, rate
// limits) and the operational endpoints.
//
// Guarantees: every error response has the contract's body shape and never
// contains an internal message, a SQL fragment or a secret; bad input is a
// 4xx that changes nothing; the trailing slash is optional on every path and
// never answered with a redirect; a malformed UUID in a path is 404.
// Run mutations go through runs.Service, the one path shared with the proxy.
package rest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
)

// writeReady answers /readyz: the status ("ready", or "unavailable" with
// the reason), this node's id, and the deployment warnings found at start,
// so that an operator looking at one node behind a balancer sees which it
// is and what is wrong with it.
func (s *Server) writeReady(w http.ResponseWriter, status int, reason string) {
	body := map[string]any{"status": "ready"}
	if reason != "" {
		body["status"], body["reason"] = "unavailable", reason
	}
	if s.nodeID != "" {
		body["node"] = s.nodeID
	}
	if len(s.warnings) > 0 {
		body["warnings"] = s.warnings
	}
	writeJSON(w, status, body)
}

// DefaultMaxBodyBytes is the contract's default request body limit: large
// enough for a 10,000-entry append or a 30 MiB artifact in base64's cousin,
// small enough to bound one request's memory.
const DefaultMaxBodyBytes = 32 << 20

// Config wires a Server.
type Config struct {
	// Store and Runs (the one mutation path, runs.New) are required.
	Store        store.Store
	Runs         *runs.Service
	Logger       *slog.Logger
	MaxBodyBytes int64      // 0: DefaultMaxBodyBytes
	RateLimit    *RateLimit // nil: no rate limit (the embedded default)
	// Timeouts bound slow clients (zero fields: the defaults); HTTPServer
	// and ServeHTTP apply them.
	Timeouts Timeouts
	// PublicURL ("https://runhub.example.com", optionally with a path
	// prefix) is what every link in a response is built from; empty: the
	// request's Host. Set it whenever the server is reachable under a
	// known name, so a forged Host cannot point links elsewhere.
	PublicURL string
	// TrustedProxies are the peers whose X-Forwarded-Proto and
	// X-Forwarded-Host are believed (when PublicURL is empty); from any
	// other peer these headers are ignored.
	TrustedProxies []netip.Prefix
	// SeparateMetrics: /metrics is served only by MetricsServer, on its own
	// listener, and the API answers it 404.
	SeparateMetrics bool
	// NodeID names this node in /readyz and in the runhub_node_info metric
	// (empty: neither says).
	NodeID string
	// Warnings are what the node found wrong with its deployment at start
	// (settings that cannot work across machines); /readyz shows them.
	Warnings []string
	// Ready reports extra readiness conditions (the broker); nil: store only.
	Ready func(ctx context.Context) error
	// WriteProbeInterval is how long /readyz caches the store's write
	// probe (0: WriteProbeInterval).
	WriteProbeInterval time.Duration
	// Stream serves GET .../runs/{id}/stream for an authorised run (the hub);
	// it returns an error only before the response started. Required.
	Stream func(w http.ResponseWriter, r *http.Request, run *store.Run) error
	// WS serves the multiplexed GET /ws endpoint for an authenticated
	// caller; authorize resolves the runs it may follow. nil: not mounted.
	WS func(w http.ResponseWriter, r *http.Request, authorize RunAuthorizer)
	// Tokens mints and verifies connection tokens (endpoint 9, the JWKS).
	// Required.
	Tokens Tokens
	// Commands relays commands to agents (the sandbox proxy). Required.
	Commands Commander
	// Blobs stores artifacts and Signer signs the links runhub serves
	// (log_url, and artifact downloads of a filesystem store): both
	// required. Files serves those downloads; required unless Blobs makes
	// its own links (S3).
	Blobs  blob.Store
	Files  *blob.FS
	Signer *blob.Signer
	// PresignTTL is how long an artifact link works (0: PresignTTL).
	PresignTTL time.Duration
	// MaxUploadBytes is the largest artifact prepare_upload takes (0:
	// runs.DefaultMaxUploadBytes); such uploads go straight to storage
	// and are not bound by MaxBodyBytes.
	MaxUploadBytes int64
	// Relay queues Slack relay messages; nil: relay_message answers
	// skipped or 503 "not configured".
	Relay Relayer
	// Agent serves GET /agent/connect (the sandbox proxy); nil: not mounted.
	Agent http.HandlerFunc
	// Extra mounts more handlers (hub, proxy, web) on the router.
	Extra func(r *mux.Router)
}

// required names the first required dependency cfg lacks: every node
// supplies them all (cmd/node), so none has a fallback.
func (cfg *Config) required() error {
	_, presigns := cfg.Blobs.(presigner)
	for _, d := range []struct {
		name    string
		missing bool
	}{
		{"Store", cfg.Store == nil}, {"Runs", cfg.Runs == nil}, {"Stream", cfg.Stream == nil},
		{"Tokens", cfg.Tokens == nil}, {"Commands", cfg.Commands == nil}, {"Blobs", cfg.Blobs == nil},
		{"Signer", cfg.Signer == nil}, {"Files", cfg.Files == nil && !presigns},
	} {
		if d.missing {
			return fmt.Errorf("rest: Config.%s is required", d.name)
		}
	}
	return nil
}

// RunAuthorizer resolves a run a /ws caller may follow, given the token
// the request carried (if any), and whether it may also send commands; it
// fails with store.ErrNotFound or store.ErrForbidden.
type RunAuthorizer = func(ctx context.Context, runID, token string) (*store.Run, bool, error)

// Server is the HTTP API.
type Server struct {
	store      store.Store
	runs       *runs.Service
	log        *slog.Logger
	maxBody    int64
	maxUpload  int64
	limiter    *limiter
	keys       *keyCache
	projects   knownProjects // projects seen to exist (they are never deleted)
	ready      func(ctx context.Context) error
	draining   atomic.Bool // Drain was called: /readyz is 503 for good
	writeProbe *writeProbe // nil: the store has no write probe
	nodeID     string
	warnings   []string
	stream     func(w http.ResponseWriter, r *http.Request, run *store.Run) error
	ws         func(w http.ResponseWriter, r *http.Request, authorize RunAuthorizer)
	tokens     Tokens
	commands   Commander
	agent      http.HandlerFunc
	relay      Relayer
	blobs      blob.Store
	files      *blob.FS
	signer     *blob.Signer
	logLinks   *logLinks
	presignTTL time.Duration
	timeouts   Timeouts
	publicURL  string
	proxies    []netip.Prefix
	separateMx bool
	authLog    *authLog
	router     *mux.Router
	hot        *hotRoute // append_log, matched before the router
	reg        *prometheus.Registry
	reqs       *prometheus.CounterVec
	latency    *prometheus.HistogramVec
}

// New builds the server and its routes.
func New(cfg Config) *Server {
	s := &Server{
		store:      cfg.Store,
		runs:       cfg.Runs,
		log:        cfg.Logger,
		maxBody:    cfg.MaxBodyBytes,
		maxUpload:  cfg.MaxUploadBytes,
		ready:      cfg.Ready,
		nodeID:     cfg.NodeID,
		warnings:   cfg.Warnings,
		stream:     cfg.Stream,
		ws:         cfg.WS,
		tokens:     cfg.Tokens,
		commands:   cfg.Commands,
		agent:      cfg.Agent,
		relay:      cfg.Relay,
		blobs:      cfg.Blobs,
		files:      cfg.Files,
		signer:     cfg.Signer,
		presignTTL: cfg.PresignTTL,
		timeouts:   cfg.Timeouts.withDefaults(),
		publicURL:  strings.TrimSuffix(cfg.PublicURL, "/"),
		proxies:    cfg.TrustedProxies,
		separateMx: cfg.SeparateMetrics,
		router:     mux.NewRouter().SkipClean(true),
		reg:        prometheus.NewRegistry(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.authLog = newAuthLog()
	if s.presignTTL <= 0 {
		s.presignTTL = PresignTTL
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.maxUpload <= 0 {
		s.maxUpload = runs.DefaultMaxUploadBytes
	}
	if err := cfg.required(); err != nil {
		// A programming error, refused at once rather than served as a
		// server that quietly lacks an endpoint.
		panic(err)
	}
	// The node's revocation poller, when Tokens has one, drops a cached
	// key as soon as it sees the key revoked.
	var revoked func(int64) bool
	if tr, ok := cfg.Tokens.(interface{ Revocations() *tokens.Revocations }); ok && tr.Revocations() != nil {
		revoked = tr.Revocations().Revoked
	}
	s.logLinks = newLogLinks(s.signer, LogLinkCacheSize)
	s.keys = newKeyCache(KeyCacheTTL, KeyCacheSize, revoked)
	if cfg.RateLimit != nil {
		s.limiter = newLimiter(*cfg.RateLimit)
	}
	if wp, ok := cfg.Store.(writeProber); ok {
		every := cfg.WriteProbeInterval
		if every <= 0 {
			every = WriteProbeInterval
		}
		s.writeProbe = newWriteProbe(wp.ProbeWrite, every)
	}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "runhub_http_requests_total", Help: "HTTP requests by route template, method and status.",
	}, []string{"route", "method", "status"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "runhub_http_request_duration_seconds", Help: "HTTP request latency by route template.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"route", "method"})
	s.reg.MustRegister(s.reqs, s.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if s.nodeID != "" {
		info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "runhub_node_info", Help: "This node's id (always 1).",
			ConstLabels: prometheus.Labels{"node": s.nodeID}})
		info.Set(1)
		s.reg.MustRegister(info)
	}
	s.router.Use(recordRoute)
	s.routes()
	if cfg.Extra != nil {
		cfg.Extra(s.router)
	}
	return s
}

// Registry is where other packages register their Prometheus metrics so that
// /metrics shows them.
func (s *Server) Registry() prometheus.Registerer { return s.reg }

// ServeHTTP wraps the router (mux middleware does not run for 404/405) with
// the body deadline and limit, the base of links, and metrics. A response
// written before the body was read (a refusal) closes the connection at
// once.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// Everything kept for the request, in one allocation.
	st := &served{info: requestInfo{route: "unmatched", base: s.linkBase(r)}}
	body := s.guardBody(w, r, &st.body)
	limit := s.maxBody
	if s.isUpload(r) {
		// An upload form goes to storage, not to the API: its own limit.
		limit = s.maxUpload + blob.MaxFormOverhead
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, limit)
	}
	st.w = statusWriter{ResponseWriter: w, status: http.StatusOK, body: body}
	rw := &st.w
	// mux attaches the matched route to a copy of the request; the
	// middleware installed in New reports it back through st.info.
	ctx := context.WithValue(r.Context(), requestInfoKey{}, &st.info)
	if r.ContentLength > limit {
		// Refused before reading a byte of it.
		s.writeError(rw, r, errTooLarge)
	} else if vars := s.hot.match(r); vars != nil {
		st.info.route = s.hot.tpl
		s.hot.serve(rw, r.WithContext(ctx), vars)
	} else {
		s.router.ServeHTTP(rw, r.WithContext(ctx))
	}
	if body.unread() && !rw.hijacked {
		body.cut()
	}
	s.reqs.WithLabelValues(st.info.route, r.Method, statusLabel(rw.status)).Inc()
	s.latency.WithLabelValues(st.info.route, r.Method).Observe(time.Since(start).Seconds())
}

// statusLabels are the metrics' status labels of every HTTP status code,
// made once rather than formatted for every request.
var statusLabels = func() (l [600]string) {
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func statusLabel(code int) string {
	if code >= 0 && code < len(statusLabels) {
		return statusLabels[code]
	}
	return strconv.Itoa(code)
}

// served is what ServeHTTP keeps for one request.
type served struct {
	w    statusWriter
	body requestBody
	info requestInfo
}

// requestInfo is what ServeHTTP tells the handlers of a request, and they
// tell it back, through the request's context.
type requestInfo struct {
	route string // the matched route's template (recordRoute), for metrics
	base  string // the base of every link in the response (linkBase)
}

type requestInfoKey struct{}

// recordRoute stores the matched route's template for the metrics labels.
func recordRoute(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
			if cr := mux.CurrentRoute(r); cr != nil {
				if tpl, err := cr.GetPathTemplate(); err == nil {
					info.route = strings.TrimSuffix(tpl, slash)
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// statusWriter records the status code; Unwrap lets http.ResponseController
// and WebSocket upgrades reach the underlying writer.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	body        *requestBody // nil: the request has no body
	hijacked    bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
		w.beforeHeader()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.wroteHeader = true
		w.beforeHeader()
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Drain turns /readyz to 503 with the reason "draining", for good: the
// node is shutting down, and a load balancer's health check takes it out
// while it still answers the requests that reach it.
func (s *Server) Drain() { s.draining.Store(true) }

// opsRoutes are the unauthenticated operational endpoints.
func (s *Server) opsRoutes() {
	s.router.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}).Methods(http.MethodGet, http.MethodHead)
	s.router.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			s.writeReady(w, http.StatusServiceUnavailable, "draining")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.store.Ping(ctx); err != nil {
			s.log.WarnContext(ctx, "not ready: store", "err", err)
			s.writeReady(w, http.StatusServiceUnavailable, "store")
			return
		}
		// A store that answers may still refuse writes (full disk,
		// read-only mount): the probe writes, at most once per interval.
		if s.writeProbe != nil {
			if err := s.writeProbe.check(ctx); err != nil {
				s.log.WarnContext(ctx, "not ready: store cannot write", "err", err)
				s.writeReady(w, http.StatusServiceUnavailable, "store")
				return
			}
		}
		if s.ready != nil {
			if err := s.ready(ctx); err != nil {
				s.log.WarnContext(ctx, "not ready", "err", err)
				s.writeReady(w, http.StatusServiceUnavailable, "broker")
				return
			}
		}
		s.writeReady(w, http.StatusOK, "")
	}).Methods(http.MethodGet, http.MethodHead)
	if !s.separateMx {
		s.router.Handle("/metrics", s.metricsHandler()).Methods(http.MethodGet)
	}
	s.router.HandleFunc("/api/schema{_s:/?}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPIDocument)
	}).Methods(http.MethodGet)
}
