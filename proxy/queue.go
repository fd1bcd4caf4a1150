package proxy

// Steering like PostHog's. An agent is busy from the moment a user_message
// is written to it until it answers that message. A user_message that
// arrives while the agent is busy (or while earlier ones still wait) is
// not written to it: it is appended to the run's queue in the store and
// answered {"queued": true} at once, and the node holding the agent
// delivers the queue, in order, one message each time the agent is idle
// again. To an idle agent with nothing queued, a user_message is written
// at once and its answer returned, as before. A user_message with
// "steer": true is written at once whatever the agent is doing (it steers
// the turn in progress), and counts as a turn of its own until answered.
//
// Only the node holding the agent decides: a command that arrives
// elsewhere is relayed there first (LocalCommand), so the decision and
// the delivery see one agent's state. The queue lives in the store, so it
// survives restarts and follows the agent: the node it reconnects to
// delivers what waits. Delivered at most once: a message is removed from
// the store in the same statement that hands it to the deliverer; it is
// put back only when it was certainly never written (the connection
// ended before the write); one written to an agent that went away
// without answering is not sent again (see follow.go), and is logged.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"runhub/store"
)

// queuePoll is how often the node holding an idle agent looks at its
// queue without being told: messages queued by this node wake it at once;
// this only catches a message queued by another process (the run's start
// queues its first message in the store) while the agent was already
// connected and idle. One indexed count per connected agent every 5 s is
// cheap, and a run's first message waits at most that long.
const queuePoll = 5 * time.Second

// Queue is the store's steering queue (store.Store).
type Queue interface {
	EnqueueUserMessage(ctx context.Context, ref store.RunRef, params json.RawMessage) (int64, error)
	PendingUserMessages(ctx context.Context, runID string) (int, error)
	TakeUserMessage(ctx context.Context, runID string) (*store.QueuedMessage, error)
	RequeueUserMessage(ctx context.Context, m *store.QueuedMessage) error
}

// ErrRunEnded: the run is terminal and no agent is connected: nobody will
// ever act on a command (REST 409, /ws CodeRunEnded).
var ErrRunEnded = errors.New("task run is no longer active")

// queuedResult is the answer to a user_message that was queued.
var queuedResult = json.RawMessage(`{"queued":true}`)

// steered reports whether user_message params ask to bypass the queue.
func steered(params json.RawMessage) bool {
	var p struct {
		Steer bool `json:"steer"`
	}
	json.Unmarshal(params, &p) // validated before: a boolean or absent
	return p.Steer
}

// localCall runs a command on this node's session of the run's agent:
// user_message through the queue rules, the others written at once.
func (p *Proxy) localCall(ctx context.Context, s *session, method string, params json.RawMessage, id any) (*Response, error) {
	if method != "user_message" {
		return s.exec(ctx, method, params, id)
	}
	if !steered(params) {
		queued, err := p.queueIfBusy(ctx, s, params)
		if err != nil || queued {
			if err != nil {
				return nil, err
			}
			return &Response{JSONRPC: "2.0", ID: id, Result: queuedResult}, nil
		}
	} else {
		s.qmu.Lock()
		s.turns++
		s.qmu.Unlock()
	}
	defer p.turnDone(s)
	return s.call(ctx, method, params, id)
}

// queueIfBusy queues params when the agent is busy or messages wait
// (queued true); otherwise it counts a turn begun, which the caller ends
// with turnDone after writing the message.
func (p *Proxy) queueIfBusy(ctx context.Context, s *session, params json.RawMessage) (queued bool, err error) {
	// Its node drains: the command follows the agent to its next node,
	// which decides there. Told at once, before any wait for the lock or
	// the store: a draining node must answer its relayed commands before
	// its relay closes. (Leaving is never undone, so the check holds.)
	if s.isLeaving() {
		return false, fmt.Errorf("%w: its node is draining", ErrAgentMoving)
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.isLeaving() {
		return false, fmt.Errorf("%w: its node is draining", ErrAgentMoving)
	}
	busy := s.turns > 0
	if !busy {
		n, err := p.cfg.Queue.PendingUserMessages(ctx, s.run.ID)
		if err != nil {
			return false, fmt.Errorf("queue: %w", err)
		}
		busy = n > 0
	}
	if !busy {
		s.turns++
		return false, nil
	}
	if _, err := p.cfg.Queue.EnqueueUserMessage(ctx, s.ref(), params); err != nil {
		return false, fmt.Errorf("queue: %w", err)
	}
	s.wake()
	return true, nil
}

// Idle reports whether the run's agent is connected to this node and has
// answered every user_message written to it: a user_message sent now is
// written at once rather than queued (unless messages wait in the store).
func (p *Proxy) Idle(runID string) bool {
	p.mu.Lock()
	s := p.agents[runID]
	p.mu.Unlock()
	if s == nil {
		return false
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return s.turns == 0
}

// turnDone ends a turn; the agent idle again is handed the next message.
func (p *Proxy) turnDone(s *session) {
	s.qmu.Lock()
	s.turns--
	idle := s.turns == 0
	s.qmu.Unlock()
	if idle {
		s.wake()
	}
}

// wake tells the session's deliverer to look at the queue.
func (s *session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// deliverQueue is the session's deliverer: whenever the agent is idle it
// takes the run's oldest queued message and writes it, until the queue is
// empty, the session leaves its node or ctx (the connection) ends. It is
// owned by ServeAgent, which waits for it.
func (p *Proxy) deliverQueue(ctx context.Context, s *session) {
	poll := time.NewTicker(queuePoll)
	defer poll.Stop()
	for {
		for p.deliverNext(ctx, s) {
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-poll.C:
		}
	}
}

// deliverNext writes the next queued message if the agent is idle, and
// waits for its answer; false when there was nothing to do.
func (p *Proxy) deliverNext(ctx context.Context, s *session) bool {
	// A read first: most looks find the queue empty, and a take is a
	// write (the store's write lock) that would hold up the agent's own
	// log appends for nothing.
	if n, err := p.cfg.Queue.PendingUserMessages(ctx, s.run.ID); err != nil || n == 0 {
		if err != nil && ctx.Err() == nil {
			p.log.Warn("looking at the user message queue failed; retried at the next turn", "run_id", s.run.ID, "err", err)
		}
		return false
	}
	s.qmu.Lock()
	if s.turns > 0 || s.isLeaving() || ctx.Err() != nil {
		s.qmu.Unlock()
		return false
	}
	m, err := p.cfg.Queue.TakeUserMessage(ctx, s.run.ID)
	if err != nil {
		s.qmu.Unlock()
		if !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			p.log.Warn("taking a queued user message failed; retried at the next turn", "run_id", s.run.ID, "err", err)
		}
		return false
	}
	s.turns++
	s.qmu.Unlock()
	defer p.turnDone(s)

	cctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	resp, err := s.call(cctx, "user_message", m.Params, nil)
	switch {
	case errors.Is(err, ErrAgentMoving):
		// Never written: first in line again, for this agent's next
		// connection (here or on another node).
		if rerr := p.cfg.Queue.RequeueUserMessage(context.WithoutCancel(ctx), m); rerr != nil {
			p.log.Error("queued user message lost: it could not be put back", "run_id", s.run.ID, "queue_id", m.ID, "err", rerr)
		}
		return false
	case err != nil:
		// Written, no answer: the agent may have acted on it; not sent
		// again (user_message is not idempotent).
		p.log.Warn("queued user message delivered without an answer", "run_id", s.run.ID, "queue_id", m.ID, "err", err)
		return ctx.Err() == nil
	case resp.Error != nil:
		p.log.Warn("agent refused a queued user message", "run_id", s.run.ID, "queue_id", m.ID, "code", resp.Error.Code, "message", resp.Error.Message)
	default:
		p.log.Debug("queued user message delivered", "run_id", s.run.ID, "queue_id", m.ID)
	}
	return true
}
