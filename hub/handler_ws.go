package hub

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
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
	// subs are the connection's subscriptions, one per run. A slice,
	// searched: a connection follows a run or a few (a map costs an idle
	// one about 250 bytes), and at MaxSubscriptions a subscribe scans
	// 1,000 run IDs, a few microseconds.
	subs []*sub
	// authed: the connection carried credentials, or a request's token
	// was accepted; until then it lives at most AuthTimeout.
	authed atomic.Bool
	// commands holds a slot per command in flight (MaxCommands); running
	// counts their goroutines, which the reader waits for.
	commands chan struct{}
	running  sync.WaitGroup
	// out writes the replies, one JSON-RPC message per text message,
	// under the connection's write deadline and with no context kept
	// between writes.
	out         *wsWriter
	restartOnce sync.Once
	drain       drainEntry // on the hub's drains while open
	// What the connection's callbacks (methods below) need, in the
	// session rather than in a closure each: an idle connection so costs
	// one allocation where it cost nine.
	ws    *websocket.Conn
	ctx   connContext // ends when the connection closes, or with the hub
	tasks group       // the connection's short-lived goroutines
}

// ServeWS serves the multiplexed JSON-RPC 2.0 endpoint GET /ws:
// subscribe {"run_id", "after"?: seq | "latest"} → {"run_id", "last_seq"};
// unsubscribe {"run_id"}; the server sends event and stream_end
// notifications. A request whose context is not marked WithAuthenticated
// must authenticate with a token in a request within AuthTimeout, else the
// connection is closed (4001). A connection follows at most
// MaxSubscriptions runs and has at most MaxCommands commands in flight.
//
// Like the .../stream WebSocket, the connection outlives its handler, and
// an idle one costs one goroutine: its reader, which handles the requests
// in order (a subscribe's reply goes out before its events). Nothing else
// waits per connection: notifications are written by a goroutine started
// when the connection has something to send, which ends when its queue is
// empty; pings, the auth deadline, revocation and the drain are timers and
// callbacks. (jsonrpc2.Conn would add two goroutines per connection, a
// reader and a watcher of its context, so the reader here decodes and
// answers with jsonrpc2's own message types instead.)
func (h *Hub) ServeWS(w http.ResponseWriter, r *http.Request, authorize RunAuthorizer) {
	ws, gw, err := wsrpc.Accept(w, r)
	if err != nil {
		return
	}
	if !h.hold() {
		closeRestart(ws)
		ws.CloseNow()
		return
	}
	ws.SetReadLimit(maxWSMessage)
	m := &muxSession{h: h, authorize: authorize, ws: ws}
	m.authed.Store(authenticatedAtUpgrade(r.Context()))
	// The connection's life is its own, not the request's (the handler
	// returns now, and what the request holds is freed; what the
	// connection needs of it, the keys that authenticated it, is read
	// below). m.ctx ends when the connection closes, or with the hub; its
	// requests and commands end with it. Reads take a context that never
	// ends: coder/websocket drops the connection when a read's context
	// ends, which would beat the 1012 of a drain; closing the connection
	// is what ends the reader.
	m.out = newWSWriter(ws, gw, h.cfg.WriteTimeout)
	h.drains.add(&m.drain, m.drained)
	m.c = newConn(kindWS, h.cfg.QueueBytes, h.cfg.WriteInterval, m.out.write)
	m.c.mux = true
	m.c.onSlow = m.slowed
	// The writer is a method: starting it (go m.writer()) allocates
	// nothing per wake-up.
	m.c.start = m.startWriter
	if gw.CanTry() {
		m.c.pool, m.c.tryWrite = &h.pool, m.out.tryWrite
	}
	// The connection closes (4001) when a key that authenticated it, or a
	// token it used, is revoked; rest's authorizer notes token keys on ctx.
	rv := h.watchKeys(r.Context(), m.revoked)
	m.ctx.rv = rv
	var authTimer *time.Timer
	if !m.authed.Load() {
		peer := r.RemoteAddr
		authTimer = time.AfterFunc(h.cfg.AuthTimeout, func() {
			if m.authed.Load() || !m.tasks.enter() {
				return
			}
			defer m.tasks.leave()
			h.log.Info("unauthenticated /ws connection closed", "peer", peer, "after", h.cfg.AuthTimeout.String())
			ws.Close(closeUnauthenticated, "not authenticated")
			m.ctx.cancel()
		})
	}
	p := h.startPinger(&m.ctx, ws)
	go m.run(rv, p, authTimer)
}

// run reads the connection until it closes, then tears it down, in the
// order that lets nothing start again: commands end with ctx; once
// unsubscribed, no wake-up reaches c, and once the callbacks are stopped
// none runs; tasks.close waits for what is running (the connection is
// closed by then, so a writer in the middle of a write fails at once).
func (m *muxSession) run(rv *revocation, p *pinger, authTimer *time.Timer) {
	h := m.h
	defer h.work.Done()
	m.read(&m.ctx, m.ws)
	m.ctx.cancel()
	m.running.Wait()
	m.closeAll()
	h.drains.remove(&m.drain)
	rv.stop()
	p.stop()
	if authTimer != nil {
		authTimer.Stop()
	}
	if h.draining() {
		m.restart()
	}
	m.ws.CloseNow()
	m.tasks.close()
}

// restart tells the client to move, once: whoever calls it while another
// call is under way waits for that one to finish.
func (m *muxSession) restart() {
	m.restartOnce.Do(func() { closeRestart(m.ws) })
}

// drained is the connection's part of the hub's drain.
func (m *muxSession) drained() {
	if m.tasks.enter() {
		defer m.tasks.leave()
		m.restart()
	}
	m.ctx.cancel()
}

// slowed is the connection's queue overflowing.
func (m *muxSession) slowed() {
	m.h.m.slow.Inc()
	m.out.shorten(m.h.cfg.SlowGrace)
}

// revoked closes the connection (4001): a key that authenticated it was
// revoked.
func (m *muxSession) revoked() {
	m.tasks.goDo(func() {
		m.ws.Close(closeRevoked, "API key revoked")
		m.ctx.cancel()
	})
}

// startWriter starts the connection's writer (conn.start).
func (m *muxSession) startWriter() {
	if m.tasks.enter() {
		go m.writer()
	}
}

// writer writes what the connection has queued, then ends; an error
// closes the connection.
func (m *muxSession) writer() {
	defer m.tasks.leave()
	h := m.h
	err := m.out.flush() // what a shared writer left unsent comes first
	if err == nil {
		err = m.c.drain(&m.ctx, h)
	}
	if err != nil {
		h.logEnd(&m.ctx, "", "ws-mux", err)
		switch {
		case errors.Is(err, errSlowConsumer):
			m.ws.Close(closeSlowConsumer, "slow consumer")
		case h.draining():
			m.restart()
		}
		m.ws.CloseNow()
		m.ctx.cancel()
	}
}

// read is the connection's reader: it handles requests in order until the
// connection closes. Responses from the client are ignored, as jsonrpc2
// does with responses to no call (the hub makes no calls to clients).
//
// Each message is decoded and handled in a goroutine of its own, which the
// reader waits for (so requests are still handled one at a time, in
// order): a subscribe runs deep (the authorizer, the store), and the
// stack it grows would otherwise stay with the idle reader for the
// connection's life.
func (m *muxSession) read(ctx context.Context, ws *websocket.Conn) {
	for {
		typ, b, err := ws.Read(context.Background())
		if err != nil {
			return
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			m.message(ctx, typ, b)
		}()
		<-done
	}
}

// message handles one client message: a malformed one gets its error
// reply (wsrpc.DecodeMessage) and the connection goes on.
func (m *muxSession) message(ctx context.Context, typ websocket.MessageType, b []byte) {
	var msg muxMessage
	if reply := wsrpc.DecodeMessage(typ, b, &msg); reply != nil {
		m.out.writeMessage(reply)
		return
	}
	if msg.req != nil {
		m.Handle(ctx, msg.req)
	}
}

// muxMessage is one JSON-RPC message from a /ws client: a request
// (req set) or a response. What is neither, or both, fails to decode, and
// the stream answers it with -32600, as jsonrpc2 tells the two apart.
type muxMessage struct {
	req *jsonrpc2.Request
}

func (m *muxMessage) UnmarshalJSON(b []byte) error {
	var kind struct {
		Method *string          `json:"method"`
		Result json.RawMessage  `json:"result"`
		Error  *json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(b, &kind); err != nil {
		return err
	}
	isReq := kind.Method != nil
	isResp := len(kind.Result) > 0 || (kind.Error != nil && string(*kind.Error) != "null")
	if isReq == isResp {
		return errors.New("not a JSON-RPC request or response")
	}
	if !isReq {
		return nil
	}
	m.req = new(jsonrpc2.Request)
	return json.Unmarshal(b, m.req)
}

// group owns a connection's short-lived goroutines (a writer, a close): it
// starts them until close, which then waits for those running.
type group struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// enter reports whether the caller may run (and must then call leave).
func (g *group) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *group) leave() { g.wg.Done() }

// goDo runs f in a goroutine of the group, unless it is closed.
func (g *group) goDo(f func()) {
	if !g.enter() {
		return
	}
	go func() {
		defer g.leave()
		f()
	}()
}

func (g *group) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

func (m *muxSession) closeAll() {
	m.mu.Lock()
	subs := m.subs
	m.subs = nil
	m.mu.Unlock()
	for _, s := range subs {
		m.h.unsubscribe(s)
	}
}

func rpcError(code int64, msg string) *jsonrpc2.Error {
	return &jsonrpc2.Error{Code: code, Message: msg}
}

// Handle runs in the connection's reader, so requests of one connection
// are handled in order (a subscribe's reply goes out before its events).
func (m *muxSession) Handle(ctx context.Context, req *jsonrpc2.Request) {
	if req.Method == "command" && !req.Notif {
		// A command waits for an agent (up to the command timeout): it
		// must not hold up the connection's other requests. The slots
		// are made at the first command: most connections send none.
		if m.commands == nil {
			m.commands = make(chan struct{}, m.h.cfg.MaxCommands)
		}
		select {
		case m.commands <- struct{}{}:
		default:
			m.reply(req.ID, nil, rpcError(CodeTooManyCommands, "too many commands in flight"))
			return
		}
		m.running.Add(1)
		go func() {
			defer m.running.Done()
			defer func() { <-m.commands }()
			result, rerr := m.command(ctx, req)
			m.reply(req.ID, result, rerr)
		}()
		return
	}
	result, rerr := m.handle(ctx, req)
	if req.Notif {
		return
	}
	if m.reply(req.ID, result, rerr) != nil || rerr != nil {
		return
	}
	if s, ok := result.(*subscribed); ok {
		m.c.needCatchUp(s.sub)
	}
}

// reply answers request id with result, or with rerr if it is set, in
// jsonrpc2's encoding of a response.
func (m *muxSession) reply(id jsonrpc2.ID, result any, rerr *jsonrpc2.Error) error {
	resp := &jsonrpc2.Response{ID: id, Error: rerr}
	if rerr == nil {
		if err := resp.SetResult(result); err != nil {
			return err
		}
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	return m.out.writeMessage(b)
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
		if old := m.take(run.ID); old != nil {
			m.h.unsubscribe(old)
		}
		s := m.h.register(ctx, m.c, run.ID, after, run.LastSeq, run.Status)
		m.mu.Lock()
		m.subs = append(m.subs, s)
		m.mu.Unlock()
		return &subscribed{RunID: run.ID, LastSeq: run.LastSeq, sub: s}, nil
	case "unsubscribe":
		s := m.take(p.RunID)
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
	again := m.index(runID) >= 0
	n := len(m.subs)
	m.mu.Unlock()
	if again || n < m.h.cfg.MaxSubscriptions {
		return false
	}
	var ended []*sub
	m.mu.Lock()
	m.subs = slices.DeleteFunc(m.subs, func(s *sub) bool {
		s.run.mu.Lock()
		done := s.ended
		s.run.mu.Unlock()
		if done {
			ended = append(ended, s)
		}
		return done
	})
	n = len(m.subs)
	m.mu.Unlock()
	for _, s := range ended {
		m.h.unsubscribe(s)
	}
	return n >= m.h.cfg.MaxSubscriptions
}

// take removes and returns the connection's subscription to runID, if any.
func (m *muxSession) take(runID string) *sub {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := m.index(runID)
	if i < 0 {
		return nil
	}
	s := m.subs[i]
	m.subs = slices.Delete(m.subs, i, i+1)
	return s
}

// index is the place of the connection's subscription to runID in subs,
// or -1. Called with m.mu held.
func (m *muxSession) index(runID string) int {
	return slices.IndexFunc(m.subs, func(s *sub) bool { return s.run.id == runID })
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
