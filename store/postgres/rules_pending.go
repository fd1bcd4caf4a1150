package postgres

// The run domain rules as store/sqlite applies them today, waiting to move
// into package store as pure functions (issue 11, "Domain rules out of the
// backend"). They are kept together in this one file, under the names
// they are to have there (store.NewRunFrom, store.ApplyPatch,
// store.ReplaceOutput, store.AppendEntries, store.AddArtifactEntries,
// store.RunStateData, store.ArtifactData, store.IdempotencyTTL,
// store.EncodeRunSnapshot, store.DecodeRunSnapshot), so that replacing
// them is a rename and a deletion of this file. Each function numbers the
// events it returns from r.LastSeq+1 and advances r.LastSeq: the seqs the
// backend writes are the ones the rules chose, and the backend's row lock
// is what makes them gap-free.

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"

	"runhub/store"
)

// idempotencyTTL is how long an applied Idempotency-Key is remembered: the
// contract promises at least 24 h; twice that covers clients that retry
// across a day boundary (store/sqlite's IdempotencyTTL).
const idempotencyTTL = 48 * time.Hour

// artifactEventType is the event type of an artifact event.
const artifactEventType = "artifact"

// newRunFrom builds the run a create stores, with the create defaults, and
// its first task_run_state event.
func newRunFrom(id string, project int64, task string, nr store.NewRun, now time.Time) (*store.Run, []store.Event) {
	r := &store.Run{
		ID: id, TaskID: task, ProjectID: project, Stage: nr.Stage, Branch: nr.Branch, Status: nr.Status,
		Environment: nr.Environment, ErrorMessage: nr.ErrorMessage, Output: nr.Output, State: nr.State,
		Artifacts: []json.RawMessage{}, CreatedAt: now, UpdatedAt: now,
	}
	if r.Status == "" {
		r.Status = store.StatusNotStarted
	}
	if r.Environment == "" {
		r.Environment = store.EnvCloud
	}
	if r.State == nil {
		r.State = map[string]json.RawMessage{}
	}
	if store.IsTerminal(r.Status) {
		r.CompletedAt = &now
	}
	return r, []store.Event{nextEvent(r, store.KindRunState, store.KindRunState, runStateData(r))}
}

// applyPatch applies a validated PATCH at now: shallow merges of output and
// state, key removal, and the completed_at rules.
func applyPatch(r *store.Run, p store.RunPatch, now time.Time) []store.Event {
	if p.Status != nil {
		r.Status = *p.Status
		switch {
		case !store.IsTerminal(r.Status):
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
	for k, v := range p.State {
		r.State[k] = v
	}
	for _, k := range p.StateRemoveKeys {
		delete(r.State, k)
	}
	return stateChanged(r, now)
}

// replaceOutput is set_output: the output becomes output as a whole.
func replaceOutput(r *store.Run, output map[string]json.RawMessage, now time.Time) []store.Event {
	r.Output = output
	return stateChanged(r, now)
}

func stateChanged(r *store.Run, now time.Time) []store.Event {
	r.UpdatedAt = now
	return []store.Event{nextEvent(r, store.KindRunState, store.KindRunState, runStateData(r))}
}

// logAppend is what appendEntries makes of one append: every entry in
// request order for publishing (ephemeral ones with seq 0), the ones to
// store, numbered, and their parsed timestamps.
type logAppend struct {
	Events []store.Event
	Stored []store.Event
	Times  []*time.Time
}

// appendEntries numbers an append's stored entries from r.LastSeq+1 and
// advances r.LastSeq and r.LogCount; updated_at does not change.
func appendEntries(r *store.Run, entries []store.LogEntry) logAppend {
	out := logAppend{Events: make([]store.Event, 0, len(entries)), Stored: make([]store.Event, 0, len(entries))}
	for i := range entries {
		e := &entries[i]
		if e.Ephemeral() {
			out.Events = append(out.Events, store.Event{RunID: r.ID, Kind: store.KindChunk, Type: e.Type, Data: e.Data})
			continue
		}
		ev := nextEvent(r, store.KindLog, e.Type, e.Data)
		out.Events = append(out.Events, ev)
		out.Stored = append(out.Stored, ev)
		out.Times = append(out.Times, e.Time)
	}
	r.LogCount += int64(len(out.Stored))
	return out
}

// addArtifactEntries appends manifest entries at now and returns one
// artifact event per entry.
func addArtifactEntries(r *store.Run, entries []json.RawMessage, now time.Time) ([]store.Event, error) {
	data := make([]json.RawMessage, len(entries))
	for i, e := range entries {
		d, err := artifactData(e)
		if err != nil {
			return nil, err
		}
		data[i] = d
	}
	events := make([]store.Event, len(entries))
	for i := range data {
		events[i] = nextEvent(r, store.KindArtifact, artifactEventType, data[i])
	}
	r.Artifacts = append(r.Artifacts, entries...)
	r.UpdatedAt = now
	return events, nil
}

func nextEvent(r *store.Run, kind, typ string, data json.RawMessage) store.Event {
	r.LastSeq++
	return store.Event{RunID: r.ID, Seq: r.LastSeq, Kind: kind, Type: typ, Data: data}
}

// runStateData is the body of r's task_run_state event.
func runStateData(r *store.Run) json.RawMessage {
	var completed *string
	if r.CompletedAt != nil {
		c := store.FormatTime(*r.CompletedAt)
		completed = &c
	}
	var output any
	if r.Output != nil {
		output = r.Output
	}
	b, _ := json.Marshal(struct {
		Type         string  `json:"type"`
		RunID        string  `json:"run_id"`
		TaskID       string  `json:"task_id"`
		Status       string  `json:"status"`
		Stage        *string `json:"stage"`
		Output       any     `json:"output"`
		Branch       *string `json:"branch"`
		ErrorMessage *string `json:"error_message"`
		UpdatedAt    string  `json:"updated_at"`
		CompletedAt  *string `json:"completed_at"`
	}{store.KindRunState, r.ID, r.TaskID, r.Status, r.Stage, output, r.Branch, r.ErrorMessage, store.FormatTime(r.UpdatedAt), completed})
	return b
}

// artifactData is the body of one manifest entry's artifact event:
// {"artifact": entry, "type": "artifact"}.
func artifactData(entry json.RawMessage) (json.RawMessage, error) {
	b, err := json.Marshal(map[string]json.RawMessage{"type": json.RawMessage(`"artifact"`), "artifact": entry})
	if err != nil {
		return nil, fmt.Errorf("artifact event: %w", err)
	}
	return b, nil
}

// encodeRunSnapshot is the recorded form of r after an idempotent
// mutation, and decodeRunSnapshot reads it back for a replay.
func encodeRunSnapshot(r *store.Run) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode run snapshot: %w", err)
	}
	return b, nil
}

func decodeRunSnapshot(b []byte) (*store.Run, error) {
	var r store.Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode run snapshot: %w", err)
	}
	return &r, nil
}

// slugPrefix is the first three letters of the project name, upper-cased
// (PostHog's convention), or "TSK" when the name has fewer.
func slugPrefix(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() == 3 {
			break
		}
		if r < unicode.MaxASCII && unicode.IsLetter(r) {
			b.WriteRune(unicode.ToUpper(r))
		}
	}
	if b.Len() < 3 {
		return "TSK"
	}
	return b.String()
}
