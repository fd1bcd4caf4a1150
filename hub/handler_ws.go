package hub

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/hub/wsrpc"
	"runhub/store"
	"runhub/store/runs"
)

// JSON-RPC error codes of GET /ws beyond the standard ones (-32700 parse
// error, -32600 invalid request, -32601 method not found, -32602 invalid
// params, -32603 internal error), in the server-defined range.
const (
	CodeForbidden            = -32003 // the caller may not follow this run
	CodeNotFound             = -32004 // no such run (or not in a project the caller reaches)
	CodeTooManySubscriptions = -32005 // the connection follows MaxSubscriptions runs already
	CodeTooManyCommands      = -32006 // the connection has MaxCommands commands in flight
	// CodeUnavailable: the store cannot be reached or written now (REST's
	// 503); the same request may be sent again later.
	CodeUnavailable = -32014
)

// storeError is the JSON-RPC error of a failed store lookup: the store
// being down or busy is CodeUnavailable, so the client retries rather than
// giving up as on an internal error; anything else is internal, and its
// detail is not shown.
func storeError(err error) *jsonrpc2.Error {
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrBusy) {
		return rpcError(CodeUnavailable, "The store is unavailable at the moment; retry later.")
	}
	return rpcError(jsonrpc2.CodeInternalError, "internal error")
}

// closeUnauthenticated closes a /ws connection that did not authenticate
// within AuthTimeout (the code of a refused connection token).
const closeUnauthenticated websocket.StatusCode = 4001

type authenticatedKey struct{}

// WithAuthenticated marks the context of a /ws request whose credentials
// (an API key or a connection token) the caller verified before ServeWS.
// A connection without the mark is closed (4001) unless one of its
// requests carries a token the authorizer accepts within AuthTimeout.
func WithAuthenticated(ctx context.Context) context.Context {
	return context.WithValue(ctx, authenticatedKey{}, true)
}

func authenticatedAtUpgrade(ctx context.Context) bool {
	v, _ := ctx.Value(authenticatedKey{}).(bool)
	return v
}

// maxWSMessage bounds one client message on /ws; requests are small.
const maxWSMessage = 1 << 20

// RunAuthorizer resolves a run the caller may follow, given the connection
// token the request carried (if any), and whether the caller may also
// steer it (commands); or fails with store.ErrNotFound or
// store.ErrForbidden.
type RunAuthorizer = func(ctx context.Context, runID, token string) (run *store.Run, write bool, err error)

// Commander relays a command to a run's agent and returns the agent's
// result, or the JSON-RPC error to answer with (the sandbox proxy).
type Commander func(ctx context.Context, run *store.Run, method string, params json.RawMessage) (json.RawMessage, *jsonrpc2.Error)

// muxSession is one /ws connection following any number of runs.
type muxSession struct {
	h         *Hub
	c         *conn
	authorize RunAuthorizer
	mu        sync.Mutex
	subs      map[string]*sub
	// authed: the connection carried credentials, or a request's token
	// was accepted; until then it lives at most AuthTimeout.
	authed atomic.Bool
	// commands holds a slot per command in flight (MaxCommands); running
	// counts their goroutines, which ServeWS waits for.
	commands chan struct{}
	running  sync.WaitGroup
}

// ServeWS serves the multiplexed JSON-RPC 2.0 endpoint GET /ws:
// subscribe {"run_id", "after"?: seq | "latest"} → {"run_id", "last_seq"};
// unsubscribe {"run_id"}; the server sends event and stream_end
// notifications. A request whose context is not marked WithAuthenticated
// must authenticate with a token in a request within AuthTimeout, else the
// connection is closed (4001). A connection follows at most
// MaxSubscriptions runs and has at most MaxCommands commands in flight.
func (h *Hub) ServeWS(w http.ResponseWriter, r *http.Request, authorize RunAuthorizer) {
	ws, gw, err := wsrpc.Accept(w, r)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	if !h.hold() {
		closeRestart(ws)
		return
	}
	defer h.work.Done()
	ws.SetReadLimit(maxWSMessage)
	m := &muxSession{h: h, authorize: authorize, subs: map[string]*sub{}, commands: make(chan struct{}, h.cfg.MaxCommands)}
	m.authed.Store(authenticatedAtUpgrade(r.Context()))
	ctx, cancel := context.WithCancel(r.Context())
	defer m.running.Wait() // after cancel: commands end with ctx
	defer cancel()
	defer context.AfterFunc(h.ctx, cancel)() // Hub.Close ends it too
	ww := newWSWriter(ws, gw, h.cfg.WriteTimeout)
	defer ww.stop()
	// restart tells the client to move, once: whoever calls it while
	// another call is under way waits for that one to finish.
	restart := sync.OnceFunc(func() { closeRestart(ws) })
	defer context.AfterFunc(ctx, func() {
		if h.draining() {
			restart() // the handler's CloseNow waits for it
		} else {
			ws.CloseNow()
		}
	})()
	m.c = newConn(kindWS, h.cfg.QueueBytes, h.cfg.WriteInterval, ww.write)
	m.c.mux = true
	m.c.onSlow = func() { h.m.slow.Inc(); ww.shorten(h.cfg.SlowGrace) }
	defer m.closeAll()
	// The connection closes (4001) when a key that authenticated it, or a
	// token it used, is revoked; rest's authorizer notes token keys on ctx.
	revoked := make(chan struct{})
	rv := h.watchKeys(r.Context(), func() { close(revoked) })
	defer rv.stop()
	ctx = context.WithValue(ctx, revocationKey{}, rv)
	// The stream reads with a context of its own: coder/websocket drops
	// the connection when a read's context ends, which would beat the 1012
	// of a drain; ctx's end closes the connection (just above, and through
	// jsonrpc2), which ends the read.
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer rcancel()
	// At a drain, the 1012 must be out before rcancel drops the
	// connection: jsonrpc2 closes the stream (restart) in a goroutine of
	// its own when ctx ends, and its Close does not wait for that one.
	defer func() {
		if h.draining() {
			restart()
		}
	}()
	stream := drainingStream{wsrpc.NewObjectStream(rctx, ws, gw, h.cfg.WriteTimeout), h, restart}
	rpc := jsonrpc2.NewConn(ctx, stream, m, jsonrpc2.SetLogger(wsrpc.DiscardLogger{}))
	defer rpc.Close()
	p := h.startPinger(ctx, ws)
	defer p.stop()
	var authDeadline <-chan time.Time
	if !m.authed.Load() {
		t := time.NewTimer(h.cfg.AuthTimeout)
		defer t.Stop()
		authDeadline = t.C
	}
	for {
		if err := m.c.flush(ctx, h); err != nil {
			h.logEnd(ctx, "", "ws-mux", err)
			if errors.Is(err, errSlowConsumer) {
				ws.Close(closeSlowConsumer, "slow consumer")
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-rpc.DisconnectNotify():
			return
		case <-revoked:
			ws.Close(closeRevoked, "API key revoked")
			return
		case <-m.c.signal:
		case <-authDeadline:
			authDeadline = nil
			if !m.authed.Load() {
				h.log.Info("unauthenticated /ws connection closed", "peer", r.RemoteAddr, "after", h.cfg.AuthTimeout.String())
				ws.Close(closeUnauthenticated, "not authenticated")
				return
			}
		}
	}
}

// drainingStream is the connection's JSON-RPC stream, whose close (by
// jsonrpc2, when the connection's context ends) says 1012 "service
// restart" rather than 1000 once the hub drains: whichever of the drain
// and the request's cancellation closes the connection first, the client
// is told to reconnect.
type drainingStream struct {
	jsonrpc2.ObjectStream
	h       *Hub
	restart func() // closes with 1012, once
}

func (s drainingStream) Close() error {
	if s.h.draining() {
		s.restart()
		return nil
	}
	return s.ObjectStream.Close()
}

func (m *muxSession) closeAll() {
	m.mu.Lock()
	subs := m.subs
	m.subs = map[string]*sub{}
	m.mu.Unlock()
	for _, s := range subs {
		m.h.unsubscribe(s)
	}
}

func rpcError(code int64, msg string) *jsonrpc2.Error {
	return &jsonrpc2.Error{Code: code, Message: msg}
}

// Handle runs in jsonrpc2's read loop, so requests of one connection are
// handled in order (a subscribe's reply goes out before its events).
func (m *muxSession) Handle(ctx context.Context, rc *jsonrpc2.Conn, req *jsonrpc2.Request) {
	if req.Method == "command" && !req.Notif {
		// A command waits for an agent (up to the command timeout): it
		// must not hold up the connection's other requests.
		select {
		case m.commands <- struct{}{}:
		default:
			rc.ReplyWithError(ctx, req.ID, rpcError(CodeTooManyCommands, "too many commands in flight"))
			return
		}
		m.running.Add(1)
		go func() {
			defer m.running.Done()
			defer func() { <-m.commands }()
			result, rerr := m.command(ctx, req)
			if rerr != nil {
				rc.ReplyWithError(ctx, req.ID, rerr)
				return
			}
			rc.Reply(ctx, req.ID, result)
		}()
		return
	}
	result, rerr := m.handle(ctx, req)
	if req.Notif {
		return
	}
	if rerr != nil {
		rc.ReplyWithError(ctx, req.ID, rerr)
		return
	}
	rc.Reply(ctx, req.ID, result)
	if s, ok := result.(*subscribed); ok {
		m.c.needCatchUp(s.sub)
	}
}

// subscribed is the reply to subscribe; the subscription starts sending
// only after the reply is written.
type subscribed struct {
	RunID   string `json:"run_id"`
	LastSeq int64  `json:"last_seq"`
	sub     *sub
}

func (m *muxSession) handle(ctx context.Context, req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	var p struct {
		RunID string          `json:"run_id"`
		After json.RawMessage `json:"after"`
		Token string          `json:"token"`
	}
	if req.Method == "command" {
		return m.command(ctx, req)
	}
	if req.Method == "history" {
		return m.history(ctx, req)
	}
	if req.Method == "subscribe" || req.Method == "unsubscribe" {
		if req.Params == nil || json.Unmarshal(*req.Params, &p) != nil {
			return nil, rpcError(jsonrpc2.CodeInvalidParams, "params must be an object with run_id")
		}
		id, rerr := runIDParam(p.RunID)
		if rerr != nil {
			return nil, rerr
		}
		p.RunID = id
	}
	switch req.Method {
	case "subscribe":
		if m.full(p.RunID) {
			return nil, rpcError(CodeTooManySubscriptions, "too many subscriptions")
		}
		run, _, rerr := m.resolve(ctx, p.RunID, p.Token)
		if rerr != nil {
			return nil, rerr
		}
		after := int64(0)
		if len(p.After) > 0 && string(p.After) != "null" {
			if string(p.After) == `"latest"` {
				after = run.LastSeq
			} else if json.Unmarshal(p.After, &after) != nil || after < 0 {
				return nil, rpcError(jsonrpc2.CodeInvalidParams, `after must be a non-negative seq or "latest"`)
			}
		}
		m.mu.Lock()
		old := m.subs[run.ID]
		delete(m.subs, run.ID)
		m.mu.Unlock()
		if old != nil {
			m.h.unsubscribe(old)
		}
		s := m.h.register(ctx, m.c, run.ID, after, run.LastSeq, run.Status)
		m.mu.Lock()
		m.subs[run.ID] = s
		m.mu.Unlock()
		return &subscribed{RunID: run.ID, LastSeq: run.LastSeq, sub: s}, nil
	case "unsubscribe":
		m.mu.Lock()
		s := m.subs[p.RunID]
		delete(m.subs, p.RunID)
		m.mu.Unlock()
		if s != nil {
			m.h.unsubscribe(s)
		}
		return map[string]any{"run_id": p.RunID, "unsubscribed": s != nil}, nil
	}
	return nil, rpcError(jsonrpc2.CodeMethodNotFound, "method not found: "+req.Method)
}

// full reports whether subscribing to runID would exceed MaxSubscriptions
// (subscribing again to a run the connection follows replaces its
// subscription). Subscriptions whose stream ended (stream_end was sent)
// make room first: a task board whose runs completed may follow new ones
// without unsubscribing. Handle runs one request at a time, so nothing
// else subscribes in between.
func (m *muxSession) full(runID string) bool {
	m.mu.Lock()
	_, again := m.subs[runID]
	n := len(m.subs)
	m.mu.Unlock()
	if again || n < m.h.cfg.MaxSubscriptions {
		return false
	}
	var ended []*sub
	m.mu.Lock()
	for id, s := range m.subs {
		s.run.mu.Lock()
		done := s.ended
		s.run.mu.Unlock()
		if done {
			ended = append(ended, s)
			delete(m.subs, id)
		}
	}
	n = len(m.subs)
	m.mu.Unlock()
	for _, s := range ended {
		m.h.unsubscribe(s)
	}
	return n >= m.h.cfg.MaxSubscriptions
}

// runIDParam checks a run_id param and returns its canonical form.
func runIDParam(v string) (string, *jsonrpc2.Error) {
	id, err := uuid.Parse(v)
	if err != nil || len(v) != 36 {
		return "", rpcError(jsonrpc2.CodeInvalidParams, "run_id must be a UUID")
	}
	return id.String(), nil
}

// resolve authorises the caller for a run (and tells whether it may
// write), answering the JSON-RPC error every method gives for a run that
// does not exist, one it may not follow, or a failed lookup.
func (m *muxSession) resolve(ctx context.Context, runID, token string) (*store.Run, bool, *jsonrpc2.Error) {
	run, write, err := m.authorize(ctx, runID, token)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, false, rpcError(CodeNotFound, "run not found")
	case errors.Is(err, store.ErrForbidden):
		return nil, false, rpcError(CodeForbidden, "not allowed to follow this run")
	case err != nil:
		return nil, false, storeError(err)
	}
	m.authed.Store(true) // the caller proved it may follow a run
	return run, write, nil
}

// command relays {"run_id", "method", "params"?, "token"?} to the run's
// agent; it needs write access to the run.
func (m *muxSession) command(ctx context.Context, req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	if m.h.commands == nil {
		return nil, rpcError(jsonrpc2.CodeMethodNotFound, "method not found: command")
	}
	var p struct {
		RunID  string          `json:"run_id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
		Token  string          `json:"token"`
	}
	if req.Params == nil || json.Unmarshal(*req.Params, &p) != nil {
		return nil, rpcError(jsonrpc2.CodeInvalidParams, "params must be an object with run_id and method")
	}
	id, rerr := runIDParam(p.RunID)
	if rerr != nil {
		return nil, rerr
	}
	// The rules of REST's command body, shared.
	params, err := runs.ValidateCommand(p.Method, p.Params)
	if err != nil {
		msg := err.Error()
		if ve := (*store.ValidationError)(nil); errors.As(err, &ve) {
			msg = ve.Detail
		}
		return nil, rpcError(jsonrpc2.CodeInvalidParams, msg)
	}
	run, write, rerr := m.resolve(ctx, id, p.Token)
	if rerr != nil {
		return nil, rerr
	}
	if !write {
		return nil, rpcError(CodeForbidden, "commands need write access to the run")
	}
	result, rerr := m.h.commands(ctx, run, p.Method, params)
	if rerr != nil {
		return nil, rerr
	}
	return result, nil
}

// maxHistory bounds the events one history request returns.
const maxHistory = 1000

// historyBytes caps the event bytes of one history reply, read as such from
// the store: 1,000 events of up to 1 MiB would otherwise be a GiB in one
// reply. It is session_logs' page cap, for the same reason.
const historyBytes = store.ReadPageBytes

// historyEvent is one stored event in a history reply.
type historyEvent struct {
	Seq   int64           `json:"seq"`
	Event json.RawMessage `json:"event"`
}

// history answers {"run_id", "before", "limit"?, "token"?} with the stored
// events whose seq is below before, the newest limit (default 500, at most
// 1,000) of them, in seq order: how a viewer loads older lines. A reply
// also stops at historyBytes of events (keeping the newest, and at least
// one), so it may hold fewer than limit events: the client asks again with
// before = the first seq it got, until that seq is 1.
func (m *muxSession) history(ctx context.Context, req *jsonrpc2.Request) (any, *jsonrpc2.Error) {
	var p struct {
		RunID  string `json:"run_id"`
		Before int64  `json:"before"`
		Limit  int64  `json:"limit"`
		Token  string `json:"token"`
	}
	if req.Params == nil || json.Unmarshal(*req.Params, &p) != nil || p.Before < 1 || p.Limit < 0 || p.Limit > maxHistory {
		return nil, rpcError(jsonrpc2.CodeInvalidParams, "params must be {run_id, before: seq >= 1, limit?: 1..1000}")
	}
	id, rerr := runIDParam(p.RunID)
	if rerr != nil {
		return nil, rerr
	}
	if p.Limit == 0 {
		p.Limit = 500
	}
	run, _, rerr := m.resolve(ctx, id, p.Token)
	if rerr != nil {
		return nil, rerr
	}
	out := []historyEvent{}
	if p.Before > 1 {
		evs, err := m.h.src.EventsBefore(ctx, run.ID, p.Before, int(p.Limit), historyBytes)
		if err != nil {
			return nil, storeError(err)
		}
		for _, ev := range evs {
			out = append(out, historyEvent{Seq: ev.Seq, Event: ev.Data})
		}
	}
	return map[string]any{"run_id": run.ID, "events": out}, nil
}
