package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// IdempotencyTTL is how long an applied Idempotency-Key is remembered: the
// contract promises at least 24 h; twice that covers clients that retry
// across a day boundary. A backend forgets a run's keys recorded before
// IdempotencyCutoff(now) when it records a new one.
const IdempotencyTTL = 48 * time.Hour

// IdempotencyCutoff is the recording time before which a run's keys may be
// forgotten at now.
func IdempotencyCutoff(now time.Time) time.Time { return now.Add(-IdempotencyTTL) }

// RunSnapshot is what a backend records with an applied Idempotency-Key,
// and what a replay of the key answers: the run as the first response
// showed it. It holds every field the REST run object renders (log_url
// excepted: it is derived from the request) plus last_seq and log_count,
// which an agent's append reply carries.
//
// The encoding is a stored format, independent of Run's own JSON tags: the
// names and the time format (RFC 3339 with nanoseconds, as time.Time
// marshals) are exactly those of the store.Run JSON that earlier versions
// recorded, so keys recorded before this type existed replay unchanged.
// Change it only by adding fields.
type RunSnapshot struct {
	ID           string                     `json:"id"`
	TaskID       string                     `json:"task"`
	ProjectID    int64                      `json:"team"`
	Stage        *string                    `json:"stage"`
	Branch       *string                    `json:"branch"`
	Status       string                     `json:"status"`
	Environment  string                     `json:"environment"`
	ErrorMessage *string                    `json:"error_message"`
	Output       map[string]json.RawMessage `json:"output"`
	State        map[string]json.RawMessage `json:"state"`
	Artifacts    []json.RawMessage          `json:"artifacts"`
	CreatedAt    time.Time                  `json:"created_at"`
	UpdatedAt    time.Time                  `json:"updated_at"`
	CompletedAt  *time.Time                 `json:"completed_at"`
	LastSeq      int64                      `json:"last_seq"`
	LogCount     int64                      `json:"log_count"`
}

// EncodeRunSnapshot is the recorded form of r after an idempotent mutation.
func EncodeRunSnapshot(r *Run) ([]byte, error) {
	b, err := json.Marshal(RunSnapshot{
		ID: r.ID, TaskID: r.TaskID, ProjectID: r.ProjectID, Stage: r.Stage, Branch: r.Branch, Status: r.Status,
		Environment: r.Environment, ErrorMessage: r.ErrorMessage, Output: r.Output, State: r.State, Artifacts: r.Artifacts,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, CompletedAt: r.CompletedAt, LastSeq: r.LastSeq, LogCount: r.LogCount,
	})
	if err != nil {
		return nil, fmt.Errorf("encode run snapshot: %w", err)
	}
	return b, nil
}

// DecodeRunSnapshot reads a recorded snapshot back into the run a replay
// answers.
func DecodeRunSnapshot(b []byte) (*Run, error) {
	var s RunSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode run snapshot: %w", err)
	}
	return &Run{
		ID: s.ID, TaskID: s.TaskID, ProjectID: s.ProjectID, Stage: s.Stage, Branch: s.Branch, Status: s.Status,
		Environment: s.Environment, ErrorMessage: s.ErrorMessage, Output: s.Output, State: s.State, Artifacts: s.Artifacts,
		CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, CompletedAt: s.CompletedAt, LastSeq: s.LastSeq, LogCount: s.LogCount,
	}, nil
}

// Replay is the answer to a request whose key was recorded with hash and
// snapshot: the run as the first response showed it, or
// ErrIdempotencyMismatch when the key was recorded for another request.
func (k *Idempotency) Replay(hash, snapshot []byte) (*MutationResult, error) {
	if !bytes.Equal(hash, k.RequestHash) {
		return nil, ErrIdempotencyMismatch
	}
	prev, err := DecodeRunSnapshot(snapshot)
	if err != nil {
		return nil, err
	}
	return &MutationResult{Run: prev, Replayed: true}, nil
}
