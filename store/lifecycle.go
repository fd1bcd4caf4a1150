package store

import "encoding/json"

// Keys of a run's state that the run lifecycle writes, named as PostHog's
// backend names them so that its agent finds them where it looks.
const (
	// StatePendingUserMessage and StatePendingUserArtifactIDs hold the
	// first user message of a run started with one (POST .../start/):
	// the agent sends it as its first turn.
	StatePendingUserMessage     = "pending_user_message"
	StatePendingUserArtifactIDs = "pending_user_artifact_ids"
	// StateResumeFromRunID names the run a run continues
	// (POST .../resume_in_cloud/): its log precedes the new run's own.
	StateResumeFromRunID = "resume_from_run_id"
)

// MaxResumeChain bounds how many earlier runs a run's log reaches back
// through resume_from_run_id. Each link is one store read before the log
// starts, and a conversation resumed a hundred times is far beyond what
// people do; state is writable by any task:write key, so the bound (with
// the check that a run appears once) is also what keeps a forged chain
// from looping.
const MaxResumeChain = 100

// ResumedFrom returns the id of the run r continues, "" when none.
func ResumedFrom(r *Run) string {
	var id string
	if raw, ok := r.State[StateResumeFromRunID]; ok {
		json.Unmarshal(raw, &id) // not a string: no chain
	}
	return id
}
