package proxy

import (
	"context"
	"encoding/json"
	"time"
)

// Relay carries commands between nodes (the Redis relay; nil on a single
// node): which node holds a run's agent, and a request to that node with
// its reply. It is built before the proxy and given to it in Config;
// Proxy.Start hands the proxy to it as the handler of the requests other
// nodes relay here.
type Relay interface {
	// Start registers h as the one handler of relayed messages and begins
	// serving them until the relay is closed; called once, by Proxy.Start.
	Start(ctx context.Context, h RelayHandler) error
	// NodeID names this node.
	NodeID() string
	// Claim records that this node holds the run's agent (called again to
	// refresh it); it returns the node that held it before, if another.
	Claim(ctx context.Context, runID string) (previous string, err error)
	// Release drops the claim if it is still this node's.
	Release(ctx context.Context, runID string) error
	// Handoff keeps the claim, if it is still this node's, for at most
	// ttl: the node sent the agent on (it drains), and commands that find
	// the claim wait for the agent's next node to replace it.
	Handoff(ctx context.Context, runID string, ttl time.Duration) error
	// Owner is the node holding the run's agent, or "".
	Owner(ctx context.Context, runID string) (string, error)
	// Request sends a command to node and waits for its reply
	// (ErrAgentMoving when nobody there listens, or the node answers that
	// the agent left it, so the command was not delivered; ErrAgentTimeout
	// when ctx ends first).
	Request(ctx context.Context, node string, req RelayRequest) (*Response, error)
	// Evict asks node to close its connection of the run's agent (a newer
	// one connected elsewhere).
	Evict(ctx context.Context, node, runID string) error
}

// RelayRequest is a command relayed to the node that holds the agent.
type RelayRequest struct {
	RunID  string          `json:"run_id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	ID     any             `json:"id"`
}

// RelayHandler is what a node does with relayed messages (the Proxy).
type RelayHandler interface {
	// LocalCommand runs a command on this node's agent of the run.
	LocalCommand(ctx context.Context, req RelayRequest) (*Response, error)
	// EvictLocal closes this node's connection of the run's agent (4009).
	EvictLocal(runID string)
}
