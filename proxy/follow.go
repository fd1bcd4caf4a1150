package proxy

// Commands follow their agent. An agent leaves a node when the node drains
// (close 1012: the agent reconnects at once, through the load balancer, to
// another node) or dies (kill -9: the agent's connection drops and it
// reconnects after its backoff, while the dead node's claim in the relay
// lives on until its TTL). A command sent meanwhile is not refused: Command
// waits, for at most FollowWait (or the request's deadline, whichever comes
// first), until the agent is connected somewhere again, and delivers it
// there.
//
// Delivered at most once. A command is sent again elsewhere only when it
// was certainly never written to an agent: the session was leaving before
// the write (ErrAgentMoving), the write itself failed (a WebSocket frame
// cut short is never read as a message), the relay found nobody listening
// on the owner's channel (a dead or stopped node), or the owner node no
// longer holds the agent. A command that was written to an agent which
// then went away without answering has an unknown outcome: the agent may
// have acted on it (user_message is not idempotent: the agent would answer
// the same message twice), and the JSON-RPC id the proxy gave it belongs
// to the dead connection, so the agent on its next connection cannot tell
// a resend from a new command. Such a command is answered ErrAgentGone
// (REST 502 "Agent server is not reachable", /ws -32012), never sent
// again and never dropped in silence. A draining node keeps an agent's
// connection open for up to DrainGrace while commands written to it are
// in flight, so that a drain does not turn their answers into that
// unknown outcome.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/coder/websocket"

	"runhub/store"
)

// Following an agent that moves.
const (
	// DefaultFollowWait bounds how long a command waits for its agent to
	// reconnect after the agent left its node. An agent told to move
	// (1012) is back within agentclient.RestartJitter plus a dial; one
	// whose node was killed reconnects after its backoff (100 ms, doubling)
	// once the load balancer's health checks (about a second) send it
	// elsewhere. The multi-node system test wants commands to reach such
	// an agent again within 10 s, so a command waits that long and no
	// longer: an agent not back by then is answered ErrAgentGone.
	DefaultFollowWait = 10 * time.Second
	// DefaultDrainGrace bounds how long a draining node keeps an agent's
	// connection open while commands written to it wait for their
	// answers. Agents answer commands at once (PostHog's user_message is
	// queued and answered {"queued": true}); a few seconds covers a slow
	// one while the commands that arrive meanwhile, which wait for the
	// agent on its next node, still find it well within DefaultFollowWait.
	DefaultDrainGrace = 3 * time.Second
	// followPoll is how often a waiting command looks for its agent again:
	// at the pace an agent told to move comes back (RestartJitter, 50 ms),
	// so a command is delivered soon after, while each waiting command
	// costs Redis at most 20 lookups a second for FollowWait.
	followPoll = 50 * time.Millisecond
)

// ErrAgentMoving reports that a command was not written to any agent
// because the run's agent is leaving or has left the node that was asked
// (it drains, it died, or its claim is stale): the command may be sent
// again once the agent is connected elsewhere. Command never returns it;
// it travels between the proxy and its relay.
var ErrAgentMoving = errors.New("agent is moving to another node")

// command delivers a command to the run's agent wherever it is connected,
// following it while it moves (see the comment at the top of this file).
func (p *Proxy) command(ctx context.Context, run *store.Run, method string, params json.RawMessage, id any) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommandTimeout)
	defer cancel()
	var follow <-chan time.Time // armed at the first miss
	for {
		resp, err := p.deliver(ctx, run, method, params, id)
		if !errors.Is(err, ErrAgentMoving) {
			return resp, err
		}
		if follow == nil {
			t := time.NewTimer(p.cfg.FollowWait)
			defer t.Stop()
			follow = t.C
			p.log.Info("command waits for the agent to reconnect", "run_id", run.ID, "method", method, "reason", err)
		}
		select {
		case <-ctx.Done():
			return nil, ErrAgentTimeout
		case <-follow:
			p.log.Warn("command not delivered: the agent did not reconnect in time", "run_id", run.ID, "method", method,
				"waited", p.cfg.FollowWait, "reason", err)
			return nil, fmt.Errorf("%w: not back within %s: %w", ErrAgentGone, p.cfg.FollowWait, err)
		case <-time.After(followPoll):
		}
	}
}

// deliver makes one attempt: the agent's connection on this node, else
// the node the relay names, else the run's HTTP sandbox. ErrAgentMoving:
// nothing was written; the agent is expected elsewhere soon.
func (p *Proxy) deliver(ctx context.Context, run *store.Run, method string, params json.RawMessage, id any) (*Response, error) {
	p.mu.Lock()
	s := p.agents[run.ID]
	closed := p.closed
	p.mu.Unlock()
	if s != nil {
		resp, err := p.localCall(ctx, s, method, params, id)
		if errors.Is(err, ErrAgentMoving) && closed && p.relay == nil {
			// One node, shutting down: the agent comes back only after
			// the restart, too late for this command.
			return nil, fmt.Errorf("%w: this node is shutting down", ErrAgentGone)
		}
		return resp, err
	}
	if p.relay != nil {
		owner, err := p.relay.Owner(ctx, run.ID)
		switch {
		case err != nil:
			p.log.Warn("relay lookup failed", "run_id", run.ID, "err", err)
		case owner != "" && owner != p.relay.NodeID():
			resp, err := p.relay.Request(ctx, owner, RelayRequest{RunID: run.ID, Method: method, Params: params, ID: id})
			if errors.Is(err, ErrNoAgent) {
				// The claim named a node that no longer holds the agent:
				// it just left (look again: it is elsewhere now, or gone).
				return nil, fmt.Errorf("%w: node %s does not hold it", ErrAgentMoving, owner)
			}
			return resp, err
		case owner != "" && closed:
			// This draining node's own claim, kept while its agent moves.
			return nil, fmt.Errorf("%w: it left this draining node", ErrAgentMoving)
		}
	} else if closed {
		// One node, shutting down: the agent comes back only after the
		// restart, too late for this command.
		return nil, fmt.Errorf("%w: this node is shutting down", ErrAgentGone)
	}
	if store.IsTerminal(run.Status) && method != methodStopRun {
		// No agent anywhere, and the run is over: no agent will come to
		// act on the command.
		return nil, ErrRunEnded
	}
	if url := sandboxURL(run); url != "" && method != methodStopRun { // StopRun sends an HTTP sandbox cancel itself
		if p.cfg.Sandboxes == nil {
			return nil, ErrBadSandbox // no host is allowed
		}
		return p.cfg.Sandboxes.forward(ctx, p.cfg.Tokens, run, url, method, params, id)
	}
	return nil, ErrNoAgent
}

// begin counts a command about to be written to the agent; false: the
// session is leaving (its node drains) and takes no new command.
func (s *session) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaving != nil {
		return false
	}
	s.inflight++
	return true
}

// end uncounts a command begun; the last one out of a leaving session
// lets it close.
func (s *session) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	if s.inflight == 0 && s.leaving != nil && !s.idle {
		s.idle = true
		close(s.leaving)
	}
}

// leave stops the session taking commands; the channel is closed once no
// command written to it waits for an answer.
func (s *session) leave() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaving == nil {
		s.leaving = make(chan struct{})
		if s.inflight == 0 {
			s.idle = true
			close(s.leaving)
		}
	}
	return s.leaving
}

// isLeaving reports whether the session's node sent the agent on.
func (s *session) isLeaving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaving != nil
}

// sendOn closes the session with 1012 once the commands written to it are
// answered, or DrainGrace has passed, or the connection ended by itself.
func (p *Proxy) sendOn(s *session) {
	idle := s.leave()
	t := time.NewTimer(p.cfg.DrainGrace)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
		p.log.Warn("agent sent on with commands unanswered: they end as not reachable", "run_id", s.run.ID)
	case <-s.rpc.DisconnectNotify():
	}
	s.ws.Close(websocket.StatusServiceRestart, "service restart")
}
