// Package proxy connects sandbox agents to runhub: the agent sessions of
// GET /agent/connect (whose changes take the run service's one mutation
// path), commands routed to a run's agent on this node, on another node
// (Relay) or to its HTTP sandbox. Connection tokens are proxy/tokens, the
// reference agent proxy/agentclient, the Slack relay proxy/slack.
//
// A command follows its agent when the agent moves to another node (its
// node drains or dies): it waits up to FollowWait for the agent to
// reconnect anywhere and is delivered there. It is delivered at most once:
// only a command never written to an agent is sent again; one written to
// an agent that went away without answering has an unknown outcome
// (user_message is not idempotent) and is answered ErrAgentGone (502), not
// sent twice and not dropped. A draining node answers the commands in
// flight before it sends its agents on (DrainGrace). See follow.go.
package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/hub/wsrpc"
	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/runs"
)

// Runs is the run service as agents use it (*runs.Service): every change an
// agent makes takes the same validate → store → publish path as REST.
type Runs interface {
	AppendLog(ctx context.Context, ref store.RunRef, raw []json.RawMessage, idem *store.Idempotency) (*store.MutationResult, error)
	UpdateRun(ctx context.Context, ref store.RunRef, p store.RunPatch, idem *store.Idempotency) (*store.MutationResult, error)
	SetOutput(ctx context.Context, ref store.RunRef, output map[string]json.RawMessage, idem *store.Idempotency) (*store.MutationResult, error)
}

// RunLookup finds a run by id (store.Store).
type RunLookup interface {
	RunByID(ctx context.Context, id string) (*store.Run, error)
}

// Close codes of GET /agent/connect.
const (
	CloseBadToken  websocket.StatusCode = 4001
	CloseForbidden websocket.StatusCode = 4003
	CloseReplaced  websocket.StatusCode = 4009
)

// Defaults.
const (
	DefaultCommandTimeout = 30 * time.Second
	defaultPingInterval   = 25 * time.Second
	defaultPongTimeout    = 10 * time.Second
	// MaxAgentMessage bounds one agent message, on both ends of the
	// connection: an append_log of 10,000 entries is large, but bounded by
	// the REST body limit's order.
	MaxAgentMessage = 64 << 20
)

// Errors of Command, mapped to HTTP by the REST layer.
var (
	ErrNoAgent      = errors.New("no active sandbox for this task run")
	ErrAgentGone    = errors.New("agent server is not reachable")
	ErrAgentTimeout = errors.New("agent server request timed out")
	ErrBadSandbox   = errors.New("invalid sandbox URL")
)

// Config configures a Proxy.
type Config struct {
	Tokens         *tokens.Tokens
	Runs           Runs
	Store          RunLookup
	Logger         *slog.Logger
	CommandTimeout time.Duration // 0: DefaultCommandTimeout
	PingInterval   time.Duration
	PongTimeout    time.Duration
	// Sandboxes forwards commands to HTTP sandboxes (state.sandbox_url);
	// nil: none.
	Sandboxes *SandboxClient
	// Relay reaches the agents held by other nodes (redisrelay); nil: this
	// node is the only one, and holds every agent it can reach.
	Relay Relay
	// FollowWait bounds how long a command waits for an agent that is
	// moving between nodes (0: DefaultFollowWait); DrainGrace how long a
	// draining node waits for the answers to commands in flight before it
	// sends an agent on (0: DefaultDrainGrace). Tests shrink them.
	FollowWait time.Duration
	DrainGrace time.Duration
	// StopGrace bounds how long an agent asked to stop (StopRun) may stay
	// connected before its node closes it (0: DefaultStopGrace).
	StopGrace time.Duration
	// Queue keeps the user messages that wait for a busy agent (see
	// queue.go); nil: Store's, which must then implement it.
	Queue Queue
}

// Proxy holds this node's agent sessions and routes commands to them.
type Proxy struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	agents   map[string]*session // run id -> its current agent
	accepted atomic.Uint64       // numbers connections in the order they were accepted
	relay    Relay               // nil: one node
	conns    sync.WaitGroup      // ServeAgent calls in progress
	sending  sync.WaitGroup      // sendOn calls in progress
	closed   bool                // Close has begun: agents are sent on (under mu)
}

// Close ends every agent connection (1012 service restart: agents
// reconnect at once, to another node or after the restart) and waits until
// each has recorded its disconnection; an agent that connects meanwhile is
// sent on the same way. A connection takes no new command from then on
// (commands wait for the agent on its next node) and closes once the
// commands already written to it are answered, or after DrainGrace. Call
// it after the HTTP server stopped accepting, and before the relay and the
// store close; calling it again waits for the first call's work.
func (p *Proxy) Close() {
	p.mu.Lock()
	first := !p.closed
	p.closed = true
	if first {
		for _, s := range p.agents {
			p.sending.Add(1)
			go func() {
				defer p.sending.Done()
				p.sendOn(s)
			}()
		}
	}
	p.mu.Unlock()
	p.sending.Wait()
	p.conns.Wait()
}

// claimRefresh is how often a node refreshes its claim on the runs whose
// agents it holds; the relay's presence TTL is three times longer.
const claimRefresh = 10 * time.Second

// New builds a proxy on its tokens, run service and store (all required).
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Tokens == nil:
		return nil, errors.New("proxy: Config.Tokens is required")
	case cfg.Runs == nil:
		return nil, errors.New("proxy: Config.Runs is required")
	case cfg.Store == nil:
		return nil, errors.New("proxy: Config.Store is required")
	}
	if cfg.Queue == nil {
		q, ok := cfg.Store.(Queue)
		if !ok {
			return nil, errors.New("proxy: Config.Queue is required when Config.Store keeps no queue")
		}
		cfg.Queue = q
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = defaultPingInterval
	}
	if cfg.PongTimeout <= 0 {
		cfg.PongTimeout = defaultPongTimeout
	}
	if cfg.FollowWait <= 0 {
		cfg.FollowWait = DefaultFollowWait
	}
	if cfg.DrainGrace <= 0 {
		cfg.DrainGrace = DefaultDrainGrace
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Proxy{cfg: cfg, log: cfg.Logger, agents: map[string]*session{}, relay: cfg.Relay}, nil
}

// Start hands the proxy to its relay (if any) as the handler of the
// commands and evictions other nodes send here. Call it once, before
// serving.
func (p *Proxy) Start(ctx context.Context) error {
	if p.relay == nil {
		return nil
	}
	if err := p.relay.Start(ctx, p); err != nil {
		return fmt.Errorf("proxy: start relay: %w", err)
	}
	return nil
}

// session is one agent connection.
type session struct {
	run  *store.Run
	ws   *websocket.Conn
	rpc  *jsonrpc2.Conn
	n    uint64 // order of acceptance on this node: the newer connection wins
	mu   sync.Mutex
	last int64 // highest batch seq accepted on this run through this node
	// Commands written to the agent and not yet answered (under mu);
	// leaving is made when the node sends the agent on, and closed (idle
	// set) once inflight is 0.
	inflight int
	leaving  chan struct{}
	idle     bool

	evicted atomic.Bool // replaced by a connection on another node

	// The steering queue (queue.go): qmu serialises this session's
	// decisions to queue or write a user_message and its deliverer's
	// takes; turns counts user_messages written and not yet answered
	// (under qmu); kick wakes the deliverer.
	qmu   sync.Mutex
	turns int
	kick  chan struct{}

	// stop is closed (once) when the agent was asked to stop (StopRun):
	// its run is recorded cancelled when the connection ends.
	stop     chan struct{}
	stopOnce sync.Once
}

// stopAsked reports whether the agent was asked to stop.
func (s *session) stopAsked() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *session) ref() store.RunRef {
	return store.RunRef{ProjectID: s.run.ProjectID, TaskID: s.run.TaskID, RunID: s.run.ID}
}

// agentToken returns the token of an agent connection request.
func agentToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// ServeAgent serves GET /agent/connect: one JSON-RPC 2.0 session with the
// agent of the token's run, until the connection ends. A newer connection
// for the same run replaces this one (close 4009).
func (p *Proxy) ServeAgent(w http.ResponseWriter, r *http.Request) {
	claims, err := p.cfg.Tokens.Verify(agentToken(r), tokens.AudienceAgent)
	if err != nil {
		refuse(w, r, http.StatusUnauthorized, CloseBadToken, "Invalid agent token.")
		return
	}
	run, err := p.cfg.Store.RunByID(r.Context(), claims.RunID)
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrBusy) {
		// The store is down, not the token bad: a 503 before any upgrade,
		// which the agent retries, where 403 (or close 4003) would stop it
		// for good.
		p.log.Warn("agent refused for now: store unavailable", "run_id", claims.RunID, "err", err)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]any{"type": "server_error", "code": "unavailable",
			"detail": "The store is unavailable at the moment; retry later.", "attr": nil})
		return
	}
	if err != nil || run.ProjectID != claims.TeamID || run.TaskID != claims.TaskID {
		refuse(w, r, http.StatusForbidden, CloseForbidden, "Agent token is not valid for a live run.")
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	// The connection lives as long as the key that minted its token.
	revoked := make(chan struct{})
	stopWatch := p.cfg.Tokens.Revocations().Watch(claims.KeyID, func() { close(revoked) })
	defer stopWatch()
	// Counted under mu, so that Close waits for every connection it did
	// not refuse (and no Add races its Wait).
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.conns.Add(1)
	}
	p.mu.Unlock()
	if closed {
		ws.Close(websocket.StatusServiceRestart, "service restart")
		return
	}
	defer p.conns.Done()
	defer ws.CloseNow()
	ws.SetReadLimit(MaxAgentMessage)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	s := &session{run: run, ws: ws, n: p.accepted.Add(1), stop: make(chan struct{}), kick: make(chan struct{}, 1)}
	// The agent's requests wait until the session is registered and
	// agent_connected is on the log: its first batch must follow that entry,
	// and a command must find the session it answers through.
	registered := make(chan struct{})
	handle := p.handler(s)
	gated := func(ctx context.Context, c *jsonrpc2.Conn, req *jsonrpc2.Request) (any, error) {
		select {
		case <-registered:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return handle(ctx, c, req)
	}
	stream := wsrpc.NewObjectStream(ctx, ws, nil, p.cfg.CommandTimeout)
	s.rpc = jsonrpc2.NewConn(ctx, stream, jsonrpc2.HandlerWithError(gated), jsonrpc2.SetLogger(wsrpc.DiscardLogger{}))
	defer s.rpc.Close()

	// Two connections of one run may reach this point in either order; the
	// one accepted later is the newer and stays, whichever registers last.
	p.mu.Lock()
	old := p.agents[run.ID]
	superseded := old != nil && old.n > s.n
	closed = p.closed // Close did not see this session: send it on here
	if !superseded && !closed {
		p.agents[run.ID] = s
	}
	p.mu.Unlock()
	if closed {
		ws.Close(websocket.StatusServiceRestart, "service restart")
		return
	}
	if superseded {
		ws.Close(CloseReplaced, "replaced by a newer agent connection")
		p.log.Info("agent connection superseded before it started", "run_id", run.ID)
		return
	}
	if old != nil {
		old.ws.Close(CloseReplaced, "replaced by a newer agent connection")
	}
	p.claim(ctx, run.ID)
	p.event(ctx, s, "agent_connected")
	close(registered)
	p.log.Info("agent connected", "run_id", run.ID)
	// The deliverer hands the agent what waits in the run's queue (also
	// what waited while it was away); it ends with the connection.
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		p.deliverQueue(ctx, s)
	}()
	defer func() { cancel(); <-delivered }()

	pings := time.NewTicker(p.cfg.PingInterval)
	defer pings.Stop()
	refresh := time.NewTicker(claimRefresh)
	defer refresh.Stop()
	stop := s.stop             // nil once the agent was asked to stop
	var grace <-chan time.Time // armed then: the agent's time to leave
	for alive := true; alive; {
		select {
		case <-stop:
			stop = nil
			p.askToClose(ctx, s)
			t := time.NewTimer(p.cfg.StopGrace)
			defer t.Stop()
			grace = t.C
		case <-grace:
			p.closeStopped(s)
			alive = false
		case <-refresh.C:
			p.claim(ctx, run.ID)
		case <-s.rpc.DisconnectNotify():
			alive = false
		case <-ctx.Done():
			alive = false
		case <-revoked:
			p.log.Info("agent token's API key revoked: closing", "run_id", run.ID, "key_id", claims.KeyID)
			ws.Close(CloseBadToken, "API key revoked")
			alive = false
		case <-pings.C:
			pctx, pcancel := context.WithTimeout(ctx, p.cfg.PongTimeout)
			if ws.Ping(pctx) != nil {
				alive = false
			}
			pcancel()
		}
	}
	p.mu.Lock()
	current := p.agents[run.ID] == s
	if current {
		delete(p.agents, run.ID)
	}
	p.mu.Unlock()
	if current {
		if p.relay != nil && s.isLeaving() {
			// Sent on by the drain: the claim stays for FollowWait, so that
			// commands wait for the agent on its next node (whose claim
			// replaces this one) instead of finding no agent at all.
			if err := p.relay.Handoff(context.WithoutCancel(ctx), run.ID, p.cfg.FollowWait); err != nil {
				p.log.Warn("relay handoff failed; the claim expires by itself", "run_id", run.ID, "err", err)
			}
		} else if p.relay != nil {
			if err := p.relay.Release(context.WithoutCancel(ctx), run.ID); err != nil {
				p.log.Warn("relay release failed; the claim expires by itself", "run_id", run.ID, "err", err)
			}
		}
		if !s.evicted.Load() { // the agent lives on, on another node
			p.event(context.WithoutCancel(ctx), s, "agent_disconnected")
		}
	}
	if s.stopAsked() {
		p.stopped(ctx, s)
	}
	p.log.Info("agent disconnected", "run_id", run.ID, "replaced", !current)
}

// event records agent_connected / agent_disconnected on the run's stream.
func (p *Proxy) event(ctx context.Context, s *session, typ string) {
	entry, _ := json.Marshal(map[string]string{"type": typ})
	if _, err := p.cfg.Runs.AppendLog(ctx, s.ref(), []json.RawMessage{entry}, nil); err != nil {
		p.log.Warn("recording agent event failed", "run_id", s.run.ID, "event", typ, "err", err)
	}
}

// refuse answers a refused agent connection: the status on plain HTTP, a
// close code after the upgrade on a WebSocket request. The codes are REST's:
// not_authenticated without a token, authentication_failed for a token that
// does not verify, permission_denied for one that names no live run.
func refuse(w http.ResponseWriter, r *http.Request, status int, code websocket.StatusCode, msg string) {
	apiCode := "permission_denied"
	if status == http.StatusUnauthorized {
		apiCode = "authentication_failed"
		if agentToken(r) == "" {
			apiCode = "not_authenticated"
		}
	}
	if log, ok := r.Context().Value(authFailureKey{}).(AuthFailureLog); ok {
		log(r, status, apiCode)
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]any{"type": "authentication_error", "code": apiCode, "detail": msg, "attr": nil})
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ws.Close(code, msg)
}

// AuthFailureLog records a refused credential (the HTTP server's
// rate-limited authentication log); status and code are those of the
// refusal.
type AuthFailureLog func(r *http.Request, status int, code string)

type authFailureKey struct{}

// WithAuthFailureLog returns a context under which ServeAgent reports each
// refused agent token to log: the server that mounts /agent/connect keeps
// one log of refused credentials for every route.
func WithAuthFailureLog(ctx context.Context, log AuthFailureLog) context.Context {
	return context.WithValue(ctx, authFailureKey{}, log)
}

// appendParams are the params of an agent's append_log.
type appendParams struct {
	runs.AppendLogBody        // entries, decoded with REST's rules
	Seq                *int64 `json:"seq"`
	// Session is the random id the agent process picked at start; with
	// Seq it makes the batch's idempotency key, so a restarted agent
	// numbering its batches from 1 again names new batches.
	Session *string `json:"session"`
}

// maxAgentSession bounds an agent's session id: 128 random bits take 26
// to 32 characters in the usual encodings; 64 leaves room for other
// agents' formats and keeps the key far below the store's key limit.
const maxAgentSession = 64

// validSession reports whether s is 1..maxAgentSession characters of
// [A-Za-z0-9_-]: nothing that could need escaping in a key or a log line.
func validSession(s string) bool {
	if s == "" || len(s) > maxAgentSession {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// batchIdempotency is the idempotency key of an agent batch: the pair
// (session, seq) as "agent:" + session + ":" + seq in the agent
// namespace. A seq without session (agents older than sessions) keeps
// its former key "agent-batch:" + seq, so such an agent's retries across
// an upgrade still replay; no REST key can equal either (REST keys live
// under "rest:"). The request hash covers the entries, so a key reused
// for other entries is refused.
func batchIdempotency(ap appendParams) *store.Idempotency {
	sum := sha256.New()
	for _, e := range ap.Entries {
		sum.Write(e)
		sum.Write([]byte{0})
	}
	if ap.Session == nil {
		return &store.Idempotency{Key: fmt.Sprintf("agent-batch:%d", *ap.Seq), RequestHash: sum.Sum(nil)}
	}
	return &store.Idempotency{Namespace: store.IdemAgent, Key: fmt.Sprintf("%s:%d", *ap.Session, *ap.Seq), RequestHash: sum.Sum(nil)}
}

// AppendResult is append_log's result.
type AppendResult struct {
	LastAcceptedSeq *int64 `json:"last_accepted_seq"` // highest batch seq accepted (null without seqs)
	LastSeq         int64  `json:"last_seq"`          // the run's newest event seq
	Replayed        bool   `json:"replayed"`          // this batch was accepted before: nothing stored
}

func rpcErr(code int64, msg string) *jsonrpc2.Error { return &jsonrpc2.Error{Code: code, Message: msg} }

// handler serves the agent's requests. jsonrpc2 calls it from the
// connection's read loop, so an agent's requests apply in the order sent.
func (p *Proxy) handler(s *session) func(ctx context.Context, c *jsonrpc2.Conn, req *jsonrpc2.Request) (any, error) {
	return func(ctx context.Context, _ *jsonrpc2.Conn, req *jsonrpc2.Request) (any, error) {
		var raw json.RawMessage
		if req.Params != nil {
			raw = *req.Params
		}
		switch req.Method {
		case "append_log":
			var ap appendParams
			if err := runs.DecodeAppendLogInto(raw, &ap); err != nil {
				return nil, storeRPCError(err)
			}
			if ap.Session != nil && (ap.Seq == nil || !validSession(*ap.Session)) {
				return nil, rpcErr(jsonrpc2.CodeInvalidParams, fmt.Sprintf("session must be 1 to %d characters of [A-Za-z0-9_-], sent with seq", maxAgentSession))
			}
			var idem *store.Idempotency
			if ap.Seq != nil {
				idem = batchIdempotency(ap)
			}
			res, err := p.cfg.Runs.AppendLog(ctx, s.ref(), ap.Entries, idem)
			if err != nil {
				return nil, storeRPCError(err)
			}
			out := AppendResult{LastSeq: res.Run.LastSeq, Replayed: res.Replayed}
			if ap.Seq != nil {
				s.mu.Lock()
				s.last = max(s.last, *ap.Seq)
				last := s.last
				s.mu.Unlock()
				out.LastAcceptedSeq = &last
			}
			return out, nil
		case "update":
			patch, err := runs.DecodeRunPatch(raw)
			if err != nil {
				return nil, storeRPCError(err)
			}
			res, err := p.cfg.Runs.UpdateRun(ctx, s.ref(), patch, nil)
			if err != nil {
				return nil, storeRPCError(err)
			}
			return res.Run, nil
		case "set_output":
			output, err := runs.DecodeSetOutput(raw)
			if err != nil {
				return nil, storeRPCError(err)
			}
			res, err := p.cfg.Runs.SetOutput(ctx, s.ref(), output, nil)
			if err != nil {
				return nil, storeRPCError(err)
			}
			return res.Run, nil
		}
		return nil, rpcErr(jsonrpc2.CodeMethodNotFound, "method not found: "+req.Method)
	}
}

// storeRPCError maps a run-service error to a JSON-RPC error; internal
// details never reach the agent.
func storeRPCError(err error) *jsonrpc2.Error {
	var ve *store.ValidationError
	switch {
	case errors.As(err, &ve):
		return rpcErr(jsonrpc2.CodeInvalidParams, ve.Error())
	case errors.Is(err, runs.ErrOutputNotDict):
		return rpcErr(jsonrpc2.CodeInvalidParams, err.Error())
	case errors.Is(err, store.ErrIdempotencyMismatch):
		return rpcErr(jsonrpc2.CodeInvalidParams, "seq was already used for a different batch")
	case errors.Is(err, store.ErrNotFound):
		return rpcErr(-32004, "run not found")
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrBusy):
		return errUnavailable()
	}
	return rpcErr(jsonrpc2.CodeInternalError, "internal error")
}

// Response is what a command returns: the agent's JSON-RPC response.
type Response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      any             `json:"id"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *jsonrpc2.Error `json:"error,omitempty"`
}

// Command sends method(params) to the run's agent and returns its
// response: through the agent's connection when it is on this node, else
// through the relay to the node that holds it, else to the run's HTTP
// sandbox (state.sandbox_url) when it has one. A command for an agent that
// is moving between nodes follows it (see follow.go). Errors: ErrNoAgent,
// ErrAgentGone, ErrAgentTimeout, ErrBadSandbox.
func (p *Proxy) Command(ctx context.Context, run *store.Run, method string, params json.RawMessage, id any) (*Response, error) {
	resp, err := p.command(ctx, run, method, params, id)
	if err == nil && resp != nil {
		// What an agent answers goes to browsers in WebSocket text frames,
		// which must be UTF-8. Bytes that are not can only sit inside JSON
		// strings, so replacing them keeps the result valid JSON.
		resp.Result = validUTF8(resp.Result)
		if resp.Error != nil && resp.Error.Data != nil {
			d := validUTF8(*resp.Error.Data)
			resp.Error.Data = &d
		}
	}
	return resp, err
}

// validUTF8 replaces the bytes of raw JSON that are not UTF-8 with U+FFFD.
func validUTF8(raw json.RawMessage) json.RawMessage {
	if utf8.Valid(raw) {
		return raw
	}
	return bytes.ToValidUTF8(raw, []byte("\uFFFD"))
}

// call writes the command to the agent and waits for its answer.
// ErrAgentMoving: it was not written (the session is leaving, or the
// connection ended before the write); ErrAgentGone: it was written and the
// connection ended without an answer (the outcome is unknown).
func (s *session) call(ctx context.Context, method string, params json.RawMessage, id any) (*Response, error) {
	if len(params) == 0 {
		params = json.RawMessage("{}")
	}
	if !s.begin() {
		return nil, fmt.Errorf("%w: its node is draining", ErrAgentMoving)
	}
	defer s.end()
	waiter, err := s.rpc.DispatchCall(ctx, method, params)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ErrAgentTimeout
		}
		return nil, fmt.Errorf("%w: write: %w", ErrAgentMoving, err)
	}
	var result json.RawMessage
	err = waiter.Wait(ctx, &result)
	var rerr *jsonrpc2.Error
	switch {
	case err == nil:
		if len(result) == 0 {
			result = json.RawMessage("null")
		}
		return &Response{JSONRPC: "2.0", ID: id, Result: result}, nil
	case errors.As(err, &rerr):
		return &Response{JSONRPC: "2.0", ID: id, Error: rerr}, nil
	case ctx.Err() != nil:
		return nil, ErrAgentTimeout
	}
	return nil, fmt.Errorf("%w: %w", ErrAgentGone, err)
}

// sandboxURL is the run's state.sandbox_url, if it is a string.
func sandboxURL(run *store.Run) string {
	var u string
	if raw, ok := run.State["sandbox_url"]; ok {
		json.Unmarshal(raw, &u)
	}
	return u
}

// Connected reports whether the run's agent is connected to this node.
func (p *Proxy) Connected(runID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.agents[runID] != nil
}

// JSON-RPC error codes of a /ws command that did not reach an agent (the
// REST endpoint answers 400, 400, 502 and 504 for them).
const (
	CodeNoAgent      = -32010
	CodeBadSandbox   = -32011
	CodeAgentGone    = -32012
	CodeAgentTimeout = -32013
	// CodeUnavailable: the store cannot be reached or written now (REST's
	// 503; /ws uses the same code, hub.CodeUnavailable); the agent sends
	// the same batch again later, and its seq makes that safe.
	CodeUnavailable = -32014
	// CodeRunEnded: the run is terminal and has no agent (REST 409);
	// CodeQueueFull: store.MaxQueuedUserMessages wait already (REST 429).
	CodeRunEnded  = -32015
	CodeQueueFull = -32016
)

func errUnavailable() *jsonrpc2.Error {
	return rpcErr(CodeUnavailable, "The store is unavailable at the moment; retry later.")
}

// WSCommand is Command for the /ws command method (hub.Commander): the
// agent's result, or its JSON-RPC error, or the error of the relay.
func (p *Proxy) WSCommand(ctx context.Context, run *store.Run, method string, params json.RawMessage) (json.RawMessage, *jsonrpc2.Error) {
	if !utf8.Valid(params) {
		// The agent reads its commands from WebSocket text frames.
		return nil, rpcErr(jsonrpc2.CodeInvalidParams, "params must be valid UTF-8")
	}
	resp, err := p.Command(ctx, run, method, params, nil)
	switch {
	case errors.Is(err, ErrNoAgent):
		return nil, rpcErr(CodeNoAgent, "No active sandbox for this task run")
	case errors.Is(err, ErrRunEnded):
		return nil, rpcErr(CodeRunEnded, "Task run is no longer active")
	case errors.Is(err, store.ErrQueueFull):
		return nil, rpcErr(CodeQueueFull, "Too many queued messages for this task run")
	case errors.Is(err, ErrBadSandbox):
		return nil, rpcErr(CodeBadSandbox, "Invalid sandbox URL")
	case errors.Is(err, ErrAgentTimeout):
		return nil, rpcErr(CodeAgentTimeout, "Agent server request timed out")
	case errors.Is(err, ErrAgentGone):
		return nil, rpcErr(CodeAgentGone, "Agent server is not reachable")
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrBusy):
		return nil, errUnavailable()
	case err != nil:
		p.log.Error("command failed", "run_id", run.ID, "err", err)
		return nil, rpcErr(jsonrpc2.CodeInternalError, "internal error")
	case resp.Error != nil:
		return nil, resp.Error
	}
	return resp.Result, nil
}

// claim records in the relay that this node holds the run's agent, and
// closes the older connection on the node that held it before.
func (p *Proxy) claim(ctx context.Context, runID string) {
	if p.relay == nil {
		return
	}
	prev, err := p.relay.Claim(ctx, runID)
	if err != nil {
		p.log.Warn("relay claim failed; commands from other nodes cannot reach this agent until it succeeds", "run_id", runID, "err", err)
		return
	}
	if prev != "" {
		if err := p.relay.Evict(ctx, prev, runID); err != nil {
			p.log.Warn("relay evict failed", "run_id", runID, "node", prev, "err", err)
		}
	}
}

// LocalCommand runs a relayed command on this node's agent (RelayHandler).
func (p *Proxy) LocalCommand(ctx context.Context, req RelayRequest) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	p.mu.Lock()
	s := p.agents[req.RunID]
	closed := p.closed
	p.mu.Unlock()
	switch {
	case s != nil:
		return p.localCall(ctx, s, req.Method, req.Params, req.ID)
	case closed:
		// Draining: the asking node waits for the agent elsewhere.
		return nil, fmt.Errorf("%w: it left this draining node", ErrAgentMoving)
	}
	return nil, ErrNoAgent
}

// EvictLocal closes this node's connection of the run's agent: a newer one
// connected to another node (RelayHandler).
func (p *Proxy) EvictLocal(runID string) {
	p.mu.Lock()
	s := p.agents[runID]
	p.mu.Unlock()
	if s != nil {
		s.evicted.Store(true)
		go s.ws.Close(CloseReplaced, "replaced by a newer agent connection")
	}
}
