// Package agentclient is the reference sandbox agent: the client side of
// GET /agent/connect, as `runhub agent` and the load generator run it.
package agentclient

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/hub/wsrpc"
	"runhub/proxy"
)

// Options configures a reference agent.
type Options struct {
	URL    string // the agent endpoint's ws_url (…/agent/connect)
	Token  string // an agent token for the run
	Logger *slog.Logger
	// Reply is the agent's answer to a user message (default: it repeats
	// the message).
	Reply func(content string) string
	// HTTPClient dials the WebSocket (tests); nil: the default.
	HTTPClient *http.Client
	// MinBackoff and MaxBackoff bound the delay before a reconnect and
	// before a batch the server could not store for now is sent again
	// (0: DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
}

// Backoff bounds of the reference agent. The delay doubles from the first
// to the second on every failure in a row and is drawn uniformly below it
// (full jitter), so many agents cut at once, or failing against one busy
// store, do not come back in step.
const (
	// DefaultMinBackoff: a dropped connection or a busy store is
	// usually fine again within a fraction of a second.
	DefaultMinBackoff = 100 * time.Millisecond
	// DefaultMaxBackoff: an agent waits at most this long to retry,
	// so it catches up soon after a long outage ends, while thousands of
	// agents add little load to a server that is still down.
	DefaultMaxBackoff = 10 * time.Second
)

// RestartJitter bounds the delay before an agent reconnects after its
// node closed the connection with 1012 "service restart" (a drain, a
// deploy): the node asks it to come back at once, through the load
// balancer, to another node. The delay is drawn below it, so that the
// thousands of agents of a draining node do not all land on the others in
// the same millisecond, while none waits long enough for a command to
// notice.
const RestartJitter = 50 * time.Millisecond

// errRestart: the node closed the connection with 1012 (it is draining);
// the agent reconnects at once, keeping its unacknowledged batches.
var errRestart = errors.New("the node is restarting")

// codeRunNotFound is the code the server answers for a run that no
// longer exists (the proxy's storeRPCError).
const codeRunNotFound = -32004

// definitive reports whether a JSON-RPC error refuses a batch for good:
// as sent, it can never be stored (invalid params: a validation error, or
// its seq already used for other entries; the run is gone; the request or
// the method is not understood). Every other error (internal error, the
// server errors -32000..-32099, codes this agent does not know) may pass,
// so the batch is sent again rather than lost.
func definitive(code int64) bool {
	switch code {
	case jsonrpc2.CodeParseError, jsonrpc2.CodeInvalidRequest, jsonrpc2.CodeMethodNotFound,
		jsonrpc2.CodeInvalidParams, codeRunNotFound:
		return true
	}
	return false
}

// jitter draws a delay below backoff (full jitter), at least 1 ms.
func jitter(backoff time.Duration) time.Duration { return rand.N(backoff) + time.Millisecond }

// ErrRefused: the server refused the agent for good (bad token, or a
// newer connection replaced it).
var ErrRefused = errors.New("agent refused by the server")

// Agent is the reference sandbox agent: it keeps a connection to runhub,
// sends its log batches one at a time in order, each acknowledged before
// the next, and after every reconnect re-sends those not yet acknowledged
// (the pair of its session id and the batch seq makes that idempotent);
// it answers user_message, cancel and close. A batch is dropped only when
// the server refuses it for good (logged); any other failure is retried.
type Agent struct {
	opts      Options
	log       *slog.Logger
	sessionID string        // random, per agent: every agent numbers its batches from 1
	wake      chan struct{} // a batch was queued (capacity 1)

	mu      sync.Mutex
	cond    *sync.Cond
	nextSeq int64
	unacked []batch // sent or not, not yet acknowledged, in seq order
	closed  bool    // a close request was answered
	stop    context.CancelFunc
}

type batch struct {
	Entries []json.RawMessage `json:"entries"`
	Seq     int64             `json:"seq"`
	Session string            `json:"session"`
}

// New builds an agent; Run connects it.
func New(opts Options) *Agent {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Reply == nil {
		opts.Reply = func(content string) string { return "You said: " + content }
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	// 130 random bits (26 base32 characters): two agent processes of one
	// run never pick the same session.
	a := &Agent{opts: opts, log: opts.Logger, sessionID: crand.Text(), wake: make(chan struct{}, 1), nextSeq: 1}
	a.cond = sync.NewCond(&a.mu)
	return a
}

// Run keeps the agent connected until ctx ends, the server asks it to
// close (nil), or the server refuses it (ErrRefused).
func (a *Agent) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	a.mu.Lock()
	a.stop = stop
	a.mu.Unlock()
	defer stop()
	defer func() { // wake Append callers: nothing more will be sent
		a.mu.Lock()
		a.cond.Broadcast()
		a.mu.Unlock()
	}()
	a.log.Info("agent starting", "session", a.sessionID)
	backoff := a.opts.MinBackoff
	for {
		start := time.Now()
		err := a.session(ctx)
		a.mu.Lock()
		closed := a.closed
		a.mu.Unlock()
		switch {
		case closed:
			return nil
		case errors.Is(err, ErrRefused):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		}
		moved := errors.Is(err, errRestart)
		if moved || time.Since(start) > 10*time.Second {
			backoff = a.opts.MinBackoff // the connection was up for a while
		}
		d := jitter(backoff)
		if moved {
			d = jitter(RestartJitter)
		}
		a.log.Info("agent disconnected; reconnecting", "in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		if !moved {
			backoff = min(backoff*2, a.opts.MaxBackoff)
		}
	}
}

// session runs one connection: dial, deliver what is unacknowledged and
// what gets queued, serve requests until the connection ends.
func (a *Agent) session(ctx context.Context) error {
	ws, _, err := websocket.Dial(ctx, a.opts.URL, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + a.opts.Token}},
		HTTPClient: a.opts.HTTPClient,
	})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(proxy.MaxAgentMessage)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := &readErrStream{ObjectStream: wsrpc.NewObjectStream(sctx, ws, nil, 30*time.Second)}
	conn := jsonrpc2.NewConn(sctx, stream, jsonrpc2.AsyncHandler(agentHandler{a}), jsonrpc2.SetLogger(wsrpc.DiscardLogger{}))
	defer conn.Close()
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		a.deliver(sctx, conn)
		// It returns when ctx or the connection ends, or when a call got
		// no answer: end this connection, the next one re-sends.
		conn.Close()
	}()
	<-conn.DisconnectNotify()
	<-delivered
	// A permanent refusal is told from a dropped connection by the close
	// code the server sent.
	err = stream.readErr()
	switch websocket.CloseStatus(err) {
	case proxy.CloseBadToken, proxy.CloseForbidden, proxy.CloseReplaced:
		return fmt.Errorf("%w: %v", ErrRefused, err)
	case websocket.StatusServiceRestart:
		return fmt.Errorf("%w: %v", errRestart, err)
	}
	return fmt.Errorf("connection ended: %w", err)
}

// readErrStream keeps the error that ended the read side.
type readErrStream struct {
	jsonrpc2.ObjectStream
	mu  sync.Mutex
	err error
}

func (s *readErrStream) ReadObject(v any) error {
	err := s.ObjectStream.ReadObject(v)
	if err != nil {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}
	return err
}

func (s *readErrStream) readErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// deliver sends the unacknowledged batches on conn strictly in seq order,
// one at a time: a batch goes only once the one before it was acknowledged
// (accepted now or before) or refused for good, so the run's log keeps the
// agent's order across reconnects and retries. A batch the server could not
// store for now is sent again after a jittered, growing delay. deliver
// returns when ctx ends, the connection ends, or a call got no answer (the
// batch is then re-sent on the next connection).
func (a *Agent) deliver(ctx context.Context, conn *jsonrpc2.Conn) {
	backoff := a.opts.MinBackoff
	for {
		a.mu.Lock()
		var b batch
		pending := len(a.unacked) > 0
		if pending {
			b = a.unacked[0]
		}
		a.mu.Unlock()
		if !pending {
			select {
			case <-ctx.Done():
				return
			case <-conn.DisconnectNotify():
				return
			case <-a.wake:
			}
			continue
		}
		params, err := json.Marshal(b)
		if err != nil { // an entry is not JSON: no server can take it
			a.log.Error("append_log batch cannot be encoded; dropping it", "session", a.sessionID, "seq", b.Seq, "entries", len(b.Entries), "err", err)
			a.ack(b.Seq)
			continue
		}
		var res proxy.AppendResult
		err = conn.Call(ctx, "append_log", json.RawMessage(params), &res)
		var rerr *jsonrpc2.Error
		switch {
		case err == nil:
			a.ack(b.Seq)
			backoff = a.opts.MinBackoff
			continue
		case !errors.As(err, &rerr):
			return // no answer: the connection is gone
		case definitive(rerr.Code):
			a.log.Error("append_log refused for good; dropping the batch", "session", a.sessionID, "seq", b.Seq,
				"entries", len(b.Entries), "code", rerr.Code, "err", rerr.Message)
			a.ack(b.Seq)
			backoff = a.opts.MinBackoff
			continue
		}
		d := jitter(backoff)
		a.log.Warn("append_log failed; retrying the batch", "session", a.sessionID, "seq", b.Seq,
			"in", d.Round(time.Millisecond), "code", rerr.Code, "err", rerr.Message)
		select {
		case <-ctx.Done():
			return
		case <-conn.DisconnectNotify():
			return
		case <-time.After(d):
		}
		backoff = min(backoff*2, a.opts.MaxBackoff)
	}
}

func (a *Agent) ack(seq int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, u := range a.unacked {
		if u.Seq == seq {
			a.unacked = append(a.unacked[:i], a.unacked[i+1:]...)
			break
		}
	}
	a.cond.Broadcast()
}

// Append queues entries as the next batch and waits until the server has
// acknowledged it (or ctx ends; the batch then stays queued and is sent
// in its turn, after a reconnect if need be).
func (a *Agent) Append(ctx context.Context, entries ...json.RawMessage) error {
	a.mu.Lock()
	b := batch{Entries: entries, Seq: a.nextSeq, Session: a.sessionID}
	a.nextSeq++
	a.unacked = append(a.unacked, b)
	a.mu.Unlock()
	select { // wake the delivery of the current connection, if any
	case a.wake <- struct{}{}:
	default:
	}
	stop := context.AfterFunc(ctx, func() { a.mu.Lock(); a.cond.Broadcast(); a.mu.Unlock() })
	defer stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.has(b.Seq) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.cond.Wait()
	}
	return nil
}

func (a *Agent) has(seq int64) bool {
	for _, u := range a.unacked {
		if u.Seq == seq {
			return true
		}
	}
	return false
}

// Unacked reports how many batches wait for an acknowledgement.
func (a *Agent) Unacked() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.unacked)
}

// agentHandler answers the hub's requests (each in its own goroutine:
// answering a user message appends to the log, a call of its own).
type agentHandler struct{ a *Agent }

// messageEntry is an ACP session/update notification carrying agent text,
// the shape agents put in the log.
func messageEntry(text string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"type": "notification",
		"notification": map[string]any{"jsonrpc": "2.0", "method": "session/update", "params": map[string]any{
			"update": map[string]any{"sessionUpdate": "agent_message", "content": map[string]string{"type": "text", "text": text}},
		}},
	})
	return b
}

func (h agentHandler) Handle(ctx context.Context, conn *jsonrpc2.Conn, req *jsonrpc2.Request) {
	if req.Notif {
		return
	}
	var result any
	switch req.Method {
	case "user_message":
		var p struct {
			Content string `json:"content"`
		}
		if req.Params == nil || json.Unmarshal(*req.Params, &p) != nil || p.Content == "" {
			conn.ReplyWithError(ctx, req.ID, &jsonrpc2.Error{Code: jsonrpc2.CodeInvalidParams, Message: "content must be a non-empty string"})
			return
		}
		reply := h.a.opts.Reply(p.Content)
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := h.a.Append(actx, messageEntry(reply))
		cancel()
		if err != nil {
			conn.ReplyWithError(ctx, req.ID, &jsonrpc2.Error{Code: jsonrpc2.CodeInternalError, Message: "could not record the answer"})
			return
		}
		result = map[string]any{"stopReason": "end_turn", "assistant_message": reply}
	case "cancel":
		result = map[string]bool{"cancelled": true}
	case "close":
		h.a.mu.Lock()
		h.a.closed = true
		stop := h.a.stop
		h.a.mu.Unlock()
		conn.Reply(ctx, req.ID, map[string]bool{"closed": true})
		if stop != nil {
			stop()
		}
		return
	default:
		conn.ReplyWithError(ctx, req.ID, &jsonrpc2.Error{Code: jsonrpc2.CodeMethodNotFound, Message: "method not found: " + req.Method})
		return
	}
	conn.Reply(ctx, req.ID, result)
}
