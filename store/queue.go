package store

import (
	"encoding/json"
	"errors"
	"time"
)

// MaxQueuedUserMessages bounds the user messages waiting for one run's
// agent. A person steering a run sends a few while a turn runs; a client
// looping on a busy agent must not grow the table (and the backlog the
// agent is handed on reconnect) without end. Beyond it, enqueueing fails
// with ErrQueueFull (429).
const MaxQueuedUserMessages = 100

// ErrQueueFull: the run already has MaxQueuedUserMessages waiting.
var ErrQueueFull = errors.New("too many queued user messages for this run")

// QueuedMessage is a user_message waiting for the run's agent: it arrived
// while the agent was busy with an earlier one (PostHog's steering
// queue), or was queued before any agent connected (a run's first
// message). The queue lives in the store so that it survives restarts and
// follows the agent to whichever node holds it.
type QueuedMessage struct {
	ID        int64 // ascending in arrival order, across nodes
	RunID     string
	Params    json.RawMessage // the user_message params, as validated
	CreatedAt time.Time
}
