package store

import "encoding/json"

// StateResumeFromRunID is the key of a run's state that names the run it
// continues (POST .../resume_in_cloud/), named as PostHog's backend names
// it: that run's log precedes the new run's own.
const StateResumeFromRunID = "resume_from_run_id"

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
