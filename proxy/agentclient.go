package proxy

import (
	"context"
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

	"runhub/hub"
)

// AgentOptions configures a reference agent.
type AgentOptions struct {
	URL    string // the agent endpoint's ws_url (…/agent/connect)
	Token  string // an agent token for the run
	Logger *slog.Logger
	// Reply is the agent's answer to a user message (default: it repeats
	// the message).
	Reply func(content string) string
	// HTTPClient dials the WebSocket (tests); nil: the default.
	HTTPClient *http.Client
	// MinBackoff and MaxBackoff bound the reconnect delay (0: 100 ms, 10 s).
	MinBackoff, MaxBackoff time.Duration
}

// ErrAgentRefused: the server refused the agent for good (bad token, or a
// newer connection replaced it).
var ErrAgentRefused = errors.New("agent refused by the server")

// Agent is the reference sandbox agent: it keeps a connection to runhub,
// re-sends the log batches not yet acknowledged after every reconnect (the
// server's batch seq makes that idempotent), and answers user_message,
// cancel and close.
type Agent struct {
	opts AgentOptions
	log  *slog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	conn    *jsonrpc2.Conn // nil while disconnected
	nextSeq int64
	unacked []batch // sent or not, not yet acknowledged, in seq order
	closed  bool    // a close request was answered
	stop    context.CancelFunc
}

type batch struct {
	Entries []json.RawMessage `json:"entries"`
	Seq     int64             `json:"seq"`
}

// NewAgent builds an agent; Run connects it.
func NewAgent(opts AgentOptions) *Agent {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Reply == nil {
		opts.Reply = func(content string) string { return "You said: " + content }
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	a := &Agent{opts: opts, log: opts.Logger, nextSeq: 1}
	a.cond = sync.NewCond(&a.mu)
	return a
}

// Run keeps the agent connected until ctx ends, the server asks it to
// close (nil), or the server refuses it (ErrAgentRefused).
func (a *Agent) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	a.mu.Lock()
	a.stop = stop
	a.mu.Unlock()
	defer stop()
	defer func() { // wake Append callers: nothing more will be sent
		a.mu.Lock()
		a.conn = nil
		a.cond.Broadcast()
		a.mu.Unlock()
	}()
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
		case errors.Is(err, ErrAgentRefused):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if time.Since(start) > 10*time.Second {
			backoff = a.opts.MinBackoff // the connection was up for a while
		}
		// Full jitter: many agents cut at once do not come back at once.
		d := rand.N(backoff) + time.Millisecond
		a.log.Info("agent disconnected; reconnecting", "in", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		backoff = min(backoff*2, a.opts.MaxBackoff)
	}
}

// session runs one connection: dial, re-send what is unacknowledged, serve
// requests until the connection ends.
func (a *Agent) session(ctx context.Context) error {
	ws, _, err := websocket.Dial(ctx, a.opts.URL, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + a.opts.Token}},
		HTTPClient: a.opts.HTTPClient,
	})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(maxAgentMessage)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := &readErrStream{ObjectStream: hub.NewObjectStream(sctx, ws, 30*time.Second)}
	conn := jsonrpc2.NewConn(sctx, stream, jsonrpc2.AsyncHandler(agentHandler{a}), jsonrpc2.SetLogger(discard{}))
	defer conn.Close()
	a.mu.Lock()
	a.conn = conn
	pending := append([]batch(nil), a.unacked...)
	a.cond.Broadcast()
	a.mu.Unlock()
	for _, b := range pending {
		go a.send(sctx, conn, b)
	}
	<-conn.DisconnectNotify()
	a.mu.Lock()
	if a.conn == conn {
		a.conn = nil
	}
	a.mu.Unlock()
	// A permanent refusal is told from a dropped connection by the close
	// code the server sent.
	err = stream.readErr()
	switch websocket.CloseStatus(err) {
	case CloseBadToken, CloseForbidden, CloseReplaced:
		return fmt.Errorf("%w: %v", ErrAgentRefused, err)
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

// send delivers one batch on conn and drops it from unacked when the
// server acknowledges it (accepted now or before).
func (a *Agent) send(ctx context.Context, conn *jsonrpc2.Conn, b batch) {
	var res AppendResult
	if err := conn.Call(ctx, "append_log", b, &res); err != nil {
		var rerr *jsonrpc2.Error
		if errors.As(err, &rerr) {
			a.log.Warn("append_log refused; dropping the batch", "seq", b.Seq, "err", rerr)
			a.ack(b.Seq)
		}
		return // not acknowledged: re-sent after the next reconnect
	}
	a.ack(b.Seq)
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
// after the next reconnect).
func (a *Agent) Append(ctx context.Context, entries ...json.RawMessage) error {
	a.mu.Lock()
	b := batch{Entries: entries, Seq: a.nextSeq}
	a.nextSeq++
	a.unacked = append(a.unacked, b)
	conn := a.conn
	a.mu.Unlock()
	if conn != nil {
		go a.send(ctx, conn, b)
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
