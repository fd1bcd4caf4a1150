package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/google/uuid"

	"runhub/store"
)

// The run lifecycle beyond PATCH: start (not_started → queued with a first
// user message), cancel, and resume_in_cloud (a new run continuing an old
// one). Each is one store mutation on the same path as every other.

// MaxPendingMessageBytes bounds start's pending_user_message: it is
// delivered to the agent as a user message, and the contract's bound for
// one log entry (MaxEntryBytes) is the natural bound for one message.
const MaxPendingMessageBytes = MaxEntryBytes

// MaxPendingArtifactIDs bounds start's pending_user_artifact_ids: they name
// artifacts of the run, which are uploaded at most MaxArtifacts per request,
// and one message attaches at most one upload's worth.
const MaxPendingArtifactIDs = MaxArtifacts

// StartBody is a decoded start body.
type StartBody struct {
	Message     *string  // pending_user_message; nil when absent, null or ""
	ArtifactIDs []string // pending_user_artifact_ids
}

// DecodeStart decodes a start body: {"pending_user_message"?: string|null,
// "pending_user_artifact_ids"?: [string]|null}; an empty body is {}.
func DecodeStart(body []byte) (StartBody, error) {
	f, err := ParseObject(body)
	if err != nil {
		return StartBody{}, err
	}
	var sb StartBody
	if _, sb.Message, err = f.str("pending_user_message", true); err != nil {
		return StartBody{}, err
	}
	if sb.Message != nil && *sb.Message == "" {
		sb.Message = nil
	}
	if sb.Message != nil && len(*sb.Message) > MaxPendingMessageBytes {
		return StartBody{}, invalid("pending_user_message", "max_length",
			fmt.Sprintf("Ensure this field has no more than %d bytes.", MaxPendingMessageBytes))
	}
	if sb.ArtifactIDs, err = f.strList("pending_user_artifact_ids"); err != nil {
		return StartBody{}, err
	}
	if len(sb.ArtifactIDs) > MaxPendingArtifactIDs {
		return StartBody{}, invalid("pending_user_artifact_ids", "max_length",
			fmt.Sprintf("Ensure this field has no more than %d elements.", MaxPendingArtifactIDs))
	}
	return sb, nil
}

// StartRun moves a not_started run to queued. A first user message given
// with it (text, artifact ids of the run, or both) becomes the first
// message of the run's steering queue, queued in the same store
// transaction as the status move: the agent is handed it when it connects
// (or, already connected and idle, at its node's next look at the queue),
// as the first user_message it gets. It is not also kept in the run's
// state: PostHog's backend keeps it there only until its own worker
// forwards it to the agent (and then removes it), and no PostHog client
// reads it back; the queue is runhub's forwarder, and a copy left in state
// could be sent a second time by an agent that read it. Every artifact id
// must name an artifact of the run. A run that is not not_started is
// refused (a ValidationError on status), decided under the run's lock.
func (s *Service) StartRun(ctx context.Context, ref store.RunRef, sb StartBody) (*store.Run, error) {
	st := store.StatusQueued
	p := store.RunPatch{Status: &st, RequireStatus: store.StatusNotStarted}
	if len(sb.ArtifactIDs) > 0 {
		run, err := s.Store.GetRun(ctx, ref)
		if err != nil {
			return nil, err
		}
		// Artifacts are only ever appended, so ids found now are still
		// there when the transaction runs.
		if err := artifactsOf(run, sb.ArtifactIDs); err != nil {
			return nil, err
		}
	}
	if sb.Message != nil || len(sb.ArtifactIDs) > 0 {
		params, err := FirstMessageParams(sb)
		if err != nil {
			return nil, err
		}
		p.QueueMessage = params
	}
	res, err := s.UpdateRun(ctx, ref, p, nil)
	if err != nil {
		return nil, err
	}
	return res.Run, nil
}

// FirstMessageParams returns the user_message params start queues for sb:
// {"content"?: string, "artifact_ids"?: [string]}, the shape a user_message
// command takes, checked by the same validation (ValidateCommand).
func FirstMessageParams(sb StartBody) (json.RawMessage, error) {
	var m struct {
		Content     *string  `json:"content,omitempty"`
		ArtifactIDs []string `json:"artifact_ids,omitempty"`
	}
	m.Content, m.ArtifactIDs = sb.Message, sb.ArtifactIDs
	params, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode the first user message: %w", err)
	}
	return ValidateCommand("user_message", params)
}

// artifactsOf checks that every id names an artifact of run.
func artifactsOf(run *store.Run, ids []string) error {
	have := make(map[string]bool, len(run.Artifacts))
	for _, a := range run.Artifacts {
		var e struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(a, &e) == nil {
			have[e.ID] = true
		}
	}
	for _, id := range ids {
		if !have[id] {
			if !utf8.ValidString(id) || len(id) > 64 {
				id = "(invalid id)"
			}
			return invalid("pending_user_artifact_ids", "invalid", fmt.Sprintf("Artifact %q is not an artifact of this run.", id))
		}
	}
	return nil
}

// CancelNow records a run cancelled at once (no agent to stop). A run that
// finished meanwhile keeps its status.
func (s *Service) CancelNow(ctx context.Context, ref store.RunRef) (*store.Run, error) {
	st := store.StatusCancelled
	res, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: &st, OnlyIfNonTerminal: true}, nil)
	if err != nil {
		return nil, err
	}
	return res.Run, nil
}

// ResumeInCloud creates a run that continues prev: queued, in the cloud,
// on prev's branch, with state resume_from_run_id = prev. Its own seqs
// start at 1; its log (Chain) is prev's chain's, then its own.
func (s *Service) ResumeInCloud(ctx context.Context, prev *store.Run) (*store.Run, error) {
	from, _ := json.Marshal(prev.ID)
	return s.CreateRun(ctx, prev.ProjectID, prev.TaskID, store.NewRun{Status: store.StatusQueued, Environment: store.EnvCloud,
		Branch: prev.Branch, State: map[string]json.RawMessage{store.StateResumeFromRunID: from}})
}

// Chain returns the runs whose logs precede run's own, oldest first: the
// run it resumes, that run's, and so on, within run's project and task,
// at most store.MaxResumeChain of them, each once. A link to a run that is
// not there (another task, deleted, never existed) ends the chain.
func (s *Service) Chain(ctx context.Context, run *store.Run) ([]store.RunRef, error) {
	var chain []store.RunRef
	seen := map[string]bool{run.ID: true}
	for cur := run; len(chain) < store.MaxResumeChain; {
		id := store.ResumedFrom(cur)
		if u, err := uuid.Parse(id); err != nil || u.String() != id || seen[id] {
			break // none, not a run id (state is free-form), or a loop
		}
		seen[id] = true
		ref := store.RunRef{ProjectID: run.ProjectID, TaskID: run.TaskID, RunID: id}
		prev, err := s.Store.GetRun(ctx, ref)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		chain = append(chain, ref)
		cur = prev
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, nil
}
