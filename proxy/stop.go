package proxy

// Stopping a run's agent (POST .../cancel/). The node that holds the
// agent's connection asks it to stop: cancel (end the turn in progress;
// its answer is the answer to the request), then close (end the session,
// after which an agent exits; not waited for), and from then on watches
// the connection: when it ends, or StopGrace after the agent was
// asked if it has not ended by then (the node closes it), the node records
// the run cancelled. The request travels to that node like any command, as
// an internal method no client can send (runs.CommandMethods does not list
// it), so the node that records the cancellation is the one that sees the
// agent go.

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/coder/websocket"

	"runhub/store"
)

// methodStopRun is the relay method of StopRun. It is never written to an
// agent: the node holding the agent turns it into cancel and close.
const methodStopRun = "runhub/stop_run"

// DefaultStopGrace bounds how long an agent asked to stop may keep its
// connection before its node closes it and records the run cancelled. An
// agent that honours close ends its session at once; one that does not
// should not keep a cancelled run open for long, and 10 s leaves a turn in
// progress time to flush its last log entries.
const DefaultStopGrace = 10 * time.Second

// cancelWriteTimeout bounds the write of the cancelled status after the
// agent's connection ended: the request that asked for the stop is long
// answered, so the write has only its own bound.
const cancelWriteTimeout = 10 * time.Second

// StopRun asks the run's agent to stop. stopping is true when an agent
// connected to some node was asked: the run becomes cancelled when its
// connection ends (at most StopGrace later). It is false when no agent is
// connected on any node: the caller cancels the run itself. A run with an
// HTTP sandbox (state.sandbox_url) and no connected agent is sent cancel,
// best effort, and counts as not connected. Errors: ErrAgentTimeout, and
// the store's.
func (p *Proxy) StopRun(ctx context.Context, run *store.Run) (stopping bool, err error) {
	_, err = p.command(ctx, run, methodStopRun, nil, nil)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrAgentGone):
		// It went away while being asked: nobody is left to stop.
		return false, nil
	case !errors.Is(err, ErrNoAgent):
		return false, err
	}
	if sandboxURL(run) != "" {
		if _, err := p.command(ctx, run, "cancel", nil, nil); err != nil {
			p.log.Warn("cancel not delivered to the run's HTTP sandbox", "run_id", run.ID, "err", err)
		}
	}
	return false, nil
}

// exec runs a command on this session: methodStopRun is the stop sequence,
// anything else goes to the agent as it is.
func (s *session) exec(ctx context.Context, method string, params json.RawMessage, id any) (*Response, error) {
	if method != methodStopRun {
		return s.call(ctx, method, params, id)
	}
	resp, err := s.call(ctx, "cancel", nil, id)
	if err != nil {
		return nil, err
	}
	s.stopOnce.Do(func() { close(s.stop) }) // the session's loop sends close
	return resp, nil
}

// askToClose writes close to an agent asked to stop, without waiting for
// the answer: an agent may end its connection instead of answering, or
// never answer at all, and the request that asked for the stop must not
// wait for either (StopGrace and the end of the connection settle it).
// It is called from the session's own loop.
func (p *Proxy) askToClose(ctx context.Context, s *session) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	if _, err := s.rpc.DispatchCall(ctx, "close", json.RawMessage("{}")); err != nil {
		p.log.Info("close not written to an agent asked to stop", "run_id", s.run.ID, "err", err)
	}
}

// stopped records the run cancelled after its agent, asked to stop, left
// (unless it already finished: a terminal status is kept).
func (p *Proxy) stopped(ctx context.Context, s *session) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelWriteTimeout)
	defer cancel()
	st := store.StatusCancelled
	res, err := p.cfg.Runs.UpdateRun(ctx, s.ref(), store.RunPatch{Status: &st, OnlyIfNonTerminal: true}, nil)
	if err != nil {
		p.log.Error("recording a stopped run cancelled failed", "run_id", s.run.ID, "err", err)
		return
	}
	if len(res.Events) > 0 {
		p.log.Info("run cancelled: its agent stopped", "run_id", s.run.ID)
	} else {
		p.log.Info("agent stopped; its run had finished already", "run_id", s.run.ID, "status", res.Run.Status)
	}
}

// closeStopped closes the connection of an agent that did not leave within
// StopGrace of being asked to stop.
func (p *Proxy) closeStopped(s *session) {
	p.log.Warn("agent asked to stop is still connected: closing it", "run_id", s.run.ID, "grace", p.cfg.StopGrace)
	s.ws.Close(websocket.StatusNormalClosure, "run cancelled")
}
