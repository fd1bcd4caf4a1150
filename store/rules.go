package store

import (
	"encoding/json"
	"fmt"
	"time"
)

// The domain rules of run mutations. They live here, as pure functions of
// a loaded run, so that every backend applies the same rules: a backend
// loads the run's row, calls one of these, then writes the row and appends
// the returned events in one transaction. The functions number the events
// they return from r.LastSeq+1 and advance r.LastSeq (and r.LogCount for
// stored log entries), so the seqs a backend writes are the ones the rules
// chose; the backend's transaction is what makes them gap-free.

// ArtifactEventType is the event type of an artifact event (its Kind is
// KindArtifact).
const ArtifactEventType = "artifact"

// NewRunFrom builds the run that a create stores, with the create defaults
// (status not_started, environment cloud, an empty state, no artifacts,
// completed_at set when created in a terminal status), and its first
// task_run_state event, numbered 1. id is the new run's id, chosen by the
// caller; now is the creation time.
func NewRunFrom(id string, project int64, task string, nr NewRun, now time.Time) (*Run, []Event) {
	r := &Run{
		ID: id, TaskID: task, ProjectID: project, Stage: nr.Stage, Branch: nr.Branch, Status: nr.Status,
		Environment: nr.Environment, ErrorMessage: nr.ErrorMessage, Output: nr.Output, State: nr.State,
		Artifacts: []json.RawMessage{}, CreatedAt: now, UpdatedAt: now,
	}
	if r.Status == "" {
		r.Status = StatusNotStarted
	}
	if r.Environment == "" {
		r.Environment = EnvCloud
	}
	if r.State == nil {
		r.State = map[string]json.RawMessage{}
	}
	if IsTerminal(r.Status) {
		r.CompletedAt = &now
	}
	return r, []Event{nextEvent(r, KindRunState, KindRunState, RunStateData(r))}
}

// ApplyPatch applies a validated PATCH to r at now and returns its
// task_run_state event. The rules: every given field replaces the stored
// one; "output": null clears the output, then given output keys are merged
// shallowly into it (creating it when it was null); state keys are merged
// shallowly, then StateRemoveKeys are deleted; a status change into a
// terminal status sets completed_at unless it is already set (a terminal
// run moving to another terminal status keeps its first completion time).
// updated_at becomes now.
//
// A finished run stays finished: a PATCH that would move a terminal run to
// a non-terminal status is refused (RunFinishedError, a ValidationError), and
// with OnlyIfNonTerminal a PATCH of a terminal run changes nothing and
// returns no event (a late update from an agent must not rewrite a run
// that was cancelled meanwhile). A finished run is continued by a new run
// (resume_in_cloud), so its log and completed_at stay the record of what
// happened. With RequireStatus set, the PATCH applies only to a run in
// that status (RunNotInStatusError otherwise): it is how start moves a
// not_started run only, decided under the run's lock. On an error r is
// left as it was.
func ApplyPatch(r *Run, p RunPatch, now time.Time) ([]Event, error) {
	if p.RequireStatus != "" && r.Status != p.RequireStatus {
		return nil, RunNotInStatusError(r.Status, p.RequireStatus)
	}
	if IsTerminal(r.Status) {
		if p.OnlyIfNonTerminal {
			return nil, nil
		}
		if p.Status != nil && !IsTerminal(*p.Status) {
			return nil, RunFinishedError(r.Status, *p.Status)
		}
	}
	if p.Status != nil {
		r.Status = *p.Status
		switch {
		case !IsTerminal(r.Status):
			r.CompletedAt = nil
		case r.CompletedAt == nil:
			r.CompletedAt = &now
		}
	}
	if p.Stage != nil {
		r.Stage = *p.Stage
	}
	if p.Branch != nil {
		r.Branch = *p.Branch
	}
	if p.ErrorMessage != nil {
		r.ErrorMessage = *p.ErrorMessage
	}
	if p.Environment != nil {
		r.Environment = *p.Environment
	}
	if p.ClearOutput {
		r.Output = nil
	}
	if p.Output != nil {
		if r.Output == nil {
			r.Output = make(map[string]json.RawMessage, len(p.Output))
		}
		for k, v := range p.Output {
			r.Output[k] = v
		}
	}
	if r.State == nil {
		r.State = map[string]json.RawMessage{}
	}
	for k, v := range p.State {
		r.State[k] = v
	}
	for _, k := range p.StateRemoveKeys {
		delete(r.State, k)
	}
	return stateChanged(r, now), nil
}

// RunFinishedError is the refusal of a PATCH that would move a finished run
// (status from) back to the non-terminal status to.
func RunFinishedError(from, to string) *ValidationError {
	return &ValidationError{Attr: "status", Code: "invalid_transition", Detail: fmt.Sprintf(
		"The run has finished (%s) and cannot move back to %s; resume it with resume_in_cloud, which starts a new run.", from, to)}
}

// RunNotInStatusError is the refusal of a change that needs the run in
// status want while it is in status got.
func RunNotInStatusError(got, want string) *ValidationError {
	return &ValidationError{Attr: "status", Code: "invalid_state", Detail: fmt.Sprintf(
		"The run is %s; this needs a run that is %s.", got, want)}
}

// ReplaceOutput is set_output: the run's output becomes output as a whole
// (nil stores JSON null) at now; it returns the task_run_state event.
func ReplaceOutput(r *Run, output map[string]json.RawMessage, now time.Time) []Event {
	r.Output = output
	return stateChanged(r, now)
}

// stateChanged stamps r as updated at now and returns its numbered
// task_run_state event.
func stateChanged(r *Run, now time.Time) []Event {
	r.UpdatedAt = now
	return []Event{nextEvent(r, KindRunState, KindRunState, RunStateData(r))}
}

// LogAppend is what AppendEntries makes of one append.
type LogAppend struct {
	// Events holds every entry in request order, for publishing: stored
	// entries numbered, ephemeral ones (agent_message_chunk) with seq 0.
	Events []Event
	// Stored holds the entries to store, numbered and in order. When no
	// entry is ephemeral (the common append) it is Events itself, one
	// slice less per append: neither may be modified.
	Stored []Event
	// Times[i] is Stored[i]'s parsed timestamp, nil when it had none.
	Times []*time.Time
}

// AppendEntries numbers an append's entries from r.LastSeq+1, in request
// order, leaving ephemeral entries out of the log (they are published, never
// stored), and advances r.LastSeq and r.LogCount by the stored ones. An
// append does not change updated_at: a log line is not a change of the run.
func AppendEntries(r *Run, entries []LogEntry) LogAppend {
	ephemeral := 0
	for i := range entries {
		if entries[i].Ephemeral() {
			ephemeral++
		}
	}
	out := LogAppend{Events: make([]Event, 0, len(entries)), Times: make([]*time.Time, 0, len(entries)-ephemeral)}
	if ephemeral > 0 {
		out.Stored = make([]Event, 0, len(entries)-ephemeral)
	}
	for i := range entries {
		e := &entries[i]
		if e.Ephemeral() {
			out.Events = append(out.Events, Event{RunID: r.ID, Kind: KindChunk, Type: e.Type, Data: e.Data})
			continue
		}
		ev := nextEvent(r, KindLog, e.Type, e.Data)
		out.Events = append(out.Events, ev)
		if ephemeral > 0 {
			out.Stored = append(out.Stored, ev)
		}
		out.Times = append(out.Times, e.Time)
	}
	if ephemeral == 0 {
		out.Stored = out.Events
	}
	r.LogCount += int64(len(out.Stored))
	return out
}

// AddArtifactEntries appends manifest entries to r's artifacts at now and
// returns one numbered artifact event per entry, in order. An entry whose
// "id" is already in the manifest (or earlier in entries) is left out:
// ids are unique in a manifest, so two finalizes of one upload racing on
// two nodes add it once (this runs under the run's lock). It fails, and
// leaves r as it was, when an entry is not valid JSON.
func AddArtifactEntries(r *Run, entries []json.RawMessage, now time.Time) ([]Event, error) {
	entries = newArtifactIDs(r.Artifacts, entries)
	if len(entries) == 0 {
		return nil, nil
	}
	data := make([]json.RawMessage, len(entries))
	for i, e := range entries {
		d, err := ArtifactData(e)
		if err != nil {
			return nil, err
		}
		data[i] = d
	}
	events := make([]Event, len(entries))
	for i := range data {
		events[i] = nextEvent(r, KindArtifact, ArtifactEventType, data[i])
	}
	r.Artifacts = append(r.Artifacts, entries...)
	r.UpdatedAt = now
	return events, nil
}

// newArtifactIDs is entries without those whose id is in manifest or
// repeats an earlier one; entries without an id are all kept.
func newArtifactIDs(manifest, entries []json.RawMessage) []json.RawMessage {
	var e struct {
		ID string `json:"id"`
	}
	seen := make(map[string]bool, len(manifest)+len(entries))
	for _, m := range manifest {
		e.ID = ""
		if json.Unmarshal(m, &e) == nil && e.ID != "" {
			seen[e.ID] = true
		}
	}
	out := make([]json.RawMessage, 0, len(entries))
	for _, m := range entries {
		e.ID = ""
		if json.Unmarshal(m, &e) == nil && e.ID != "" {
			if seen[e.ID] {
				continue
			}
			seen[e.ID] = true
		}
		out = append(out, m)
	}
	return out
}

// nextEvent numbers an event of r with its next seq.
func nextEvent(r *Run, kind, typ string, data json.RawMessage) Event {
	r.LastSeq++
	return Event{RunID: r.ID, Seq: r.LastSeq, Kind: kind, Type: typ, Data: data}
}

// runStateBody is the task_run_state event as clients receive it. Its
// field order is part of the stored log (events are kept byte for byte).
type runStateBody struct {
	Type         string                     `json:"type"`
	RunID        string                     `json:"run_id"`
	TaskID       string                     `json:"task_id"`
	Status       string                     `json:"status"`
	Stage        *string                    `json:"stage"`
	Output       map[string]json.RawMessage `json:"output"` // nil is JSON null
	Branch       *string                    `json:"branch"`
	ErrorMessage *string                    `json:"error_message"`
	UpdatedAt    string                     `json:"updated_at"`
	CompletedAt  *string                    `json:"completed_at"`
}

// RunStateData is the body of r's task_run_state event: the fields a
// watcher of the run needs to redraw it, times in the contract's format.
func RunStateData(r *Run) json.RawMessage {
	var completed *string
	if r.CompletedAt != nil {
		c := FormatTime(*r.CompletedAt)
		completed = &c
	}
	// Only an output value that is not valid JSON could fail the marshal,
	// and outputs are validated before they reach a run and stored as
	// valid JSON.
	b, _ := json.Marshal(runStateBody{KindRunState, r.ID, r.TaskID, r.Status, r.Stage, r.Output, r.Branch,
		r.ErrorMessage, FormatTime(r.UpdatedAt), completed})
	return b
}

// artifactBody is the artifact event as clients receive it; its field
// order is part of the stored log.
type artifactBody struct {
	Artifact json.RawMessage `json:"artifact"`
	Type     string          `json:"type"`
}

// ArtifactData is the body of the artifact event of one manifest entry:
// {"artifact": entry, "type": "artifact"}, entry compacted. It fails when
// entry is not valid JSON.
func ArtifactData(entry json.RawMessage) (json.RawMessage, error) {
	b, err := json.Marshal(artifactBody{entry, ArtifactEventType})
	if err != nil {
		return nil, fmt.Errorf("artifact event: %w", err)
	}
	return b, nil
}
