// Package storetest is the conformance suite that every store.Store
// implementation (store/sqlite, store/postgres) must pass.
//
// Run checks the contract of store.Store as the rest of runhub relies on it:
//   - projects and API keys: creation, lookup by hash, revocation (a revoked
//     key is no longer found), listing;
//   - tasks: per-project task numbers 1, 2, ..., slugs, newest-first listing
//     with total and limit/offset, PATCH, soft delete, isolation between
//     projects, latest_run;
//   - runs: defaults, the task_run_state event of every create, PATCH and
//     set_output, shallow merges of output and state, state key removal,
//     the completed_at rules, newest-first listing, isolation by project and
//     task;
//   - the event log: per-run seq 1, 2, 3, ... shared by log entries and state
//     events with no gap, ephemeral agent_message_chunk entries returned as
//     events with Seq 0 and never stored, log_count, Events(after, limit);
//   - idempotency: a repeated key with the same request hash is replayed with
//     the first snapshot and stores nothing; with another hash it is refused
//     with store.ErrIdempotencyMismatch;
//   - QueryLog filters and counts (session_logs) and StreamLog order;
//   - concurrency: concurrent appends to one run never lose, duplicate or
//     interleave entries, and readers never observe a gap in the seq order.
//   - the sequenced ingest: the sender's seq per run, duplicates never
//     stored twice (also by racing senders), gaps, completion.
//
// The suite is backend-agnostic: JSON values are compared by meaning, not by
// bytes, so a backend that normalises JSON (PostgreSQL jsonb) passes too.
package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"runhub/store"
)

// Run runs the whole suite. open must return a new, empty store for each
// call and arrange (with t.Cleanup) for it to be closed.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"ProjectsAndKeys", testProjectsAndKeys},
		{"ProjectSlackChannels", testProjectSlackChannels},
		{"Tasks", testTasks},
		{"TaskFilters", testTaskFilters},
		{"Runs", testRuns},
		{"AppendLog", testAppendLog},
		{"Idempotency", testIdempotency},
		{"Events", testEvents},
		{"QueryLog", testQueryLog},
		{"BoundedReads", testBoundedReads},
		{"StreamLog", testStreamLog},
		{"Concurrency", testConcurrency},
		{"ManyRuns", testManyRuns},
		{"Revocation", testRevocation},
		{"Bootstrap", testBootstrap},
		{"Ingest", testIngest},
		{"UserMessageQueue", testUserMessageQueue},
		{"PatchQueuesMessage", testPatchQueuesMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			if err := s.Ping(t.Context()); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			tc.fn(t, s)
		})
	}
}

// parseNow is the receive time given to ParseLogEntry by the suite.
var parseNow = time.Date(2026, 11, 28, 21, 4, 5, 123456000, time.UTC)

// ---------------------------------------------------------------------------
// helpers

func noErr(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: unexpected error: %v", what, err)
	}
}

func wantErr(t testing.TB, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error = %v, want %v", what, err, want)
	}
}

func sum(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func ptr[T any](v T) *T { return &v }

// raw builds a map of raw JSON values from literal JSON texts.
func raw(kv ...string) map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = json.RawMessage(kv[i+1])
	}
	return m
}

// jsonText renders v as JSON ("null" for a nil map).
func jsonText(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return string(b)
}

// sameJSON reports whether two JSON texts have the same meaning.
func sameJSON(t testing.TB, a, b string) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal([]byte(a), &va); err != nil {
		t.Fatalf("invalid JSON %q: %v", a, err)
	}
	if err := json.Unmarshal([]byte(b), &vb); err != nil {
		t.Fatalf("invalid JSON %q: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func checkJSON(t testing.TB, what string, got any, want string) {
	t.Helper()
	var g string
	switch v := got.(type) {
	case json.RawMessage:
		g = string(v)
	case []byte:
		g = string(v)
	case string:
		g = v
	default:
		g = jsonText(t, got)
	}
	if !sameJSON(t, g, want) {
		t.Errorf("%s = %s, want %s", what, g, want)
	}
}

// checkWireTime checks that a timestamp can be rendered exactly in the wire
// format: set, UTC, microsecond precision.
func checkWireTime(t testing.TB, what string, tm time.Time) {
	t.Helper()
	if tm.IsZero() {
		t.Errorf("%s is zero", what)
	}
	if tm.Location() != time.UTC {
		t.Errorf("%s location = %v, want UTC", what, tm.Location())
	}
	if !tm.Equal(tm.Truncate(time.Microsecond)) {
		t.Errorf("%s = %v has sub-microsecond precision", what, tm)
	}
}

func sameTimePtr(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

func entries(t testing.TB, raws ...string) []store.LogEntry {
	t.Helper()
	out := make([]store.LogEntry, len(raws))
	for i, r := range raws {
		e, err := store.ParseLogEntry([]byte(r), parseNow)
		noErr(t, err, "ParseLogEntry "+r)
		out[i] = e
	}
	return out
}

// logLine is a realistic stored entry numbered n.
func logLine(n int) string {
	return fmt.Sprintf(`{"type":"notification","timestamp":"2026-01-01T00:00:00.000001Z","n":%d,`+
		`"notification":{"jsonrpc":"2.0","method":"_posthog/console","params":{"level":"info","message":"line %d"}}}`, n, n)
}

// chunkLine is an ephemeral agent_message_chunk entry.
const chunkLine = `{"type":"notification","timestamp":"2026-01-01T00:00:00Z","notification":{"jsonrpc":"2.0",` +
	`"method":"session/update","params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"Hel"}}}}}`

// numberOf returns the "n" field of an entry, or -1.
func numberOf(t testing.TB, data []byte) int {
	t.Helper()
	var v struct {
		N *int `json:"n"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("entry %s is not JSON: %v", data, err)
	}
	if v.N == nil {
		return -1
	}
	return *v.N
}

func seqsOf(evs []store.Event) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

func seqRange(from, to int64) []int64 {
	out := []int64{}
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// allEvents reads every event of the run, in pages.
func allEvents(t testing.TB, s store.Store, runID string) []store.Event {
	t.Helper()
	var out []store.Event
	after := int64(0)
	for {
		page, err := s.Events(context.Background(), runID, after, 1000)
		noErr(t, err, "Events")
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Seq
	}
}

// stateEvent decodes a task_run_state event body.
type stateEvent struct {
	Type         string          `json:"type"`
	RunID        string          `json:"run_id"`
	TaskID       string          `json:"task_id"`
	Status       string          `json:"status"`
	Stage        *string         `json:"stage"`
	Output       json.RawMessage `json:"output"`
	Branch       *string         `json:"branch"`
	ErrorMessage *string         `json:"error_message"`
	UpdatedAt    string          `json:"updated_at"`
	CompletedAt  *string         `json:"completed_at"`
}

// checkStateEvent checks that ev is the task_run_state event of run r.
func checkStateEvent(t testing.TB, ev store.Event, r *store.Run) {
	t.Helper()
	if ev.Kind != store.KindRunState || ev.Type != store.KindRunState {
		t.Fatalf("event kind/type = %q/%q, want %q", ev.Kind, ev.Type, store.KindRunState)
	}
	if ev.RunID != r.ID {
		t.Errorf("event run id = %q, want %q", ev.RunID, r.ID)
	}
	keys := map[string]json.RawMessage{}
	if err := json.Unmarshal(ev.Data, &keys); err != nil {
		t.Fatalf("state event %s: %v", ev.Data, err)
	}
	for _, k := range []string{"type", "run_id", "task_id", "status", "stage", "output", "branch", "error_message", "updated_at", "completed_at"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("state event %s lacks key %q", ev.Data, k)
		}
	}
	var se stateEvent
	if err := json.Unmarshal(ev.Data, &se); err != nil {
		t.Fatalf("state event %s: %v", ev.Data, err)
	}
	if se.Type != store.KindRunState || se.RunID != r.ID || se.TaskID != r.TaskID || se.Status != r.Status {
		t.Errorf("state event %s does not describe run %s/%s status %s", ev.Data, r.TaskID, r.ID, r.Status)
	}
	if !reflect.DeepEqual(se.Stage, r.Stage) || !reflect.DeepEqual(se.Branch, r.Branch) || !reflect.DeepEqual(se.ErrorMessage, r.ErrorMessage) {
		t.Errorf("state event %s: stage/branch/error_message differ from run", ev.Data)
	}
	if se.UpdatedAt != store.FormatTime(r.UpdatedAt) {
		t.Errorf("state event updated_at = %s, want %s", se.UpdatedAt, store.FormatTime(r.UpdatedAt))
	}
	switch {
	case r.CompletedAt == nil && se.CompletedAt != nil:
		t.Errorf("state event completed_at = %s, want null", *se.CompletedAt)
	case r.CompletedAt != nil && (se.CompletedAt == nil || *se.CompletedAt != store.FormatTime(*r.CompletedAt)):
		t.Errorf("state event completed_at = %v, want %s", se.CompletedAt, store.FormatTime(*r.CompletedAt))
	}
	checkJSON(t, "state event output", se.Output, jsonText(t, r.Output))
}

// fixture is a project with one task and one run.
type fixture struct {
	s       store.Store
	project *store.Project
	task    *store.Task
	run     *store.Run
}

func (f *fixture) ref() store.RunRef {
	return store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: f.run.ID}
}

func newFixture(t testing.TB, s store.Store) *fixture {
	t.Helper()
	ctx := context.Background()
	p, err := s.CreateProject(ctx, "Fixture")
	noErr(t, err, "CreateProject")
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "fixture task", OriginProduct: "user_created"})
	noErr(t, err, "CreateTask")
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	noErr(t, err, "CreateRun")
	return &fixture{s: s, project: p, task: task, run: res.Run}
}

// newRun adds another run to the fixture's task.
func (f *fixture) newRun(t testing.TB) store.RunRef {
	t.Helper()
	res, err := f.s.CreateRun(context.Background(), f.project.ID, f.task.ID, store.NewRun{})
	noErr(t, err, "CreateRun")
	return store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID}
}

const unknownUUID = "00000000-0000-4000-8000-000000000000"

// ---------------------------------------------------------------------------
// projects and keys

func testProjectsAndKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	p1, err := s.CreateProject(ctx, "Acme")
	noErr(t, err, "CreateProject")
	p2, err := s.CreateProject(ctx, "Beta")
	noErr(t, err, "CreateProject")
	if p1.ID <= 0 || p2.ID <= 0 || p1.ID == p2.ID {
		t.Fatalf("project ids %d, %d: want distinct positive ids", p1.ID, p2.ID)
	}

	t.Run("projects", func(t *testing.T) {
		for _, want := range []*store.Project{p1, p2} {
			got, err := s.GetProject(ctx, want.ID)
			noErr(t, err, "GetProject")
			if got.ID != want.ID || got.Name != want.Name || !got.CreatedAt.Equal(want.CreatedAt) {
				t.Errorf("GetProject(%d) = %+v, want %+v", want.ID, got, want)
			}
			checkWireTime(t, "project created_at", got.CreatedAt)
		}
		_, err := s.GetProject(ctx, p1.ID+p2.ID+1000)
		wantErr(t, err, store.ErrNotFound, "GetProject(unknown)")
		list, err := s.ListProjects(ctx)
		noErr(t, err, "ListProjects")
		var ids []int64
		for _, p := range list {
			if p.ID == p1.ID || p.ID == p2.ID {
				ids = append(ids, p.ID)
			}
		}
		if !slices.Equal(ids, []int64{p1.ID, p2.ID}) {
			t.Errorf("ListProjects ids = %v, want %d then %d", ids, p1.ID, p2.ID)
		}
	})

	keys := []struct {
		name string
		in   store.NewAPIKey
	}{
		{"read one project", store.NewAPIKey{Label: "ci", Prefix: "phx_aaaa", Hash: sum("secret-a"),
			Scopes: []string{store.ScopeRead}, Projects: []int64{p1.ID}}},
		{"read write two projects", store.NewAPIKey{Label: "agent", Prefix: "phx_bbbb", Hash: sum("secret-b"),
			Scopes: []string{store.ScopeRead, store.ScopeWrite}, Projects: []int64{p1.ID, p2.ID}}},
		{"all projects", store.NewAPIKey{Label: "bootstrap", Prefix: "phx_cccc", Hash: sum("secret-c"),
			Scopes: []string{store.ScopeAll}, AllProjects: true}},
	}
	created := make([]*store.APIKey, len(keys))
	for i, tc := range keys {
		t.Run("key/"+tc.name, func(t *testing.T) {
			k, err := s.CreateAPIKey(ctx, tc.in)
			noErr(t, err, "CreateAPIKey")
			created[i] = k
			got, err := s.APIKeyByHash(ctx, tc.in.Hash)
			noErr(t, err, "APIKeyByHash")
			if got.ID != k.ID || got.Label != tc.in.Label || got.Prefix != tc.in.Prefix || got.AllProjects != tc.in.AllProjects {
				t.Errorf("APIKeyByHash = %+v, want the key created from %+v", got, tc.in)
			}
			if !slices.Equal(got.Scopes, tc.in.Scopes) {
				t.Errorf("scopes = %v, want %v", got.Scopes, tc.in.Scopes)
			}
			if len(got.Projects) != len(tc.in.Projects) || (len(tc.in.Projects) > 0 && !slices.Equal(got.Projects, tc.in.Projects)) {
				t.Errorf("projects = %v, want %v", got.Projects, tc.in.Projects)
			}
			if got.RevokedAt != nil {
				t.Errorf("new key revoked_at = %v, want nil", got.RevokedAt)
			}
			if !got.CreatedAt.Equal(k.CreatedAt) {
				t.Errorf("created_at = %v, want %v", got.CreatedAt, k.CreatedAt)
			}
			checkWireTime(t, "key created_at", got.CreatedAt)
		})
	}
	if t.Failed() {
		return
	}

	t.Run("unknown hash", func(t *testing.T) {
		_, err := s.APIKeyByHash(ctx, sum("never issued"))
		wantErr(t, err, store.ErrNotFound, "APIKeyByHash(unknown)")
	})

	t.Run("list", func(t *testing.T) {
		list, err := s.ListAPIKeys(ctx)
		noErr(t, err, "ListAPIKeys")
		var ids []int64
		for _, k := range list {
			ids = append(ids, k.ID)
		}
		want := []int64{created[0].ID, created[1].ID, created[2].ID}
		if !slices.Equal(ids, want) {
			t.Errorf("ListAPIKeys ids = %v, want %v", ids, want)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		noErr(t, s.RevokeAPIKey(ctx, created[0].ID), "RevokeAPIKey")
		_, err := s.APIKeyByHash(ctx, keys[0].in.Hash)
		wantErr(t, err, store.ErrNotFound, "APIKeyByHash(revoked)")
		for _, i := range []int{1, 2} {
			if _, err := s.APIKeyByHash(ctx, keys[i].in.Hash); err != nil {
				t.Errorf("APIKeyByHash(%s) after revoking another key: %v", keys[i].name, err)
			}
		}
		noErr(t, s.RevokeAPIKey(ctx, created[0].ID), "RevokeAPIKey twice")
		wantErr(t, s.RevokeAPIKey(ctx, created[2].ID+1000), store.ErrNotFound, "RevokeAPIKey(unknown)")
		list, err := s.ListAPIKeys(ctx)
		noErr(t, err, "ListAPIKeys")
		for _, k := range list {
			if revoked := k.ID == created[0].ID; revoked != (k.RevokedAt != nil) {
				t.Errorf("key %d revoked_at = %v, want revoked=%v", k.ID, k.RevokedAt, revoked)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// tasks

func testTasks(t *testing.T, s store.Store) {
	ctx := t.Context()
	pa, err := s.CreateProject(ctx, "Acme")
	noErr(t, err, "CreateProject")
	pb, err := s.CreateProject(ctx, "Beta")
	noErr(t, err, "CreateProject")
	repo := "posthog/posthog"
	schema := json.RawMessage(`{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}`)
	inputs := []store.NewTask{
		{Title: "First", Description: "fix the flaky test", OriginProduct: "user_created"},
		{Title: "Second", OriginProduct: "error_tracking", Repository: &repo, JSONSchema: schema},
		{Title: "Third", OriginProduct: "slack"},
	}
	var tasks []*store.Task
	for i, in := range inputs {
		task, err := s.CreateTask(ctx, pa.ID, in)
		noErr(t, err, "CreateTask")
		tasks = append(tasks, task)
		if want := int64(i + 1); task.Number != want {
			t.Errorf("task %d number = %d, want %d", i, task.Number, want)
		}
		if want := fmt.Sprintf("ACM-%d", i+1); task.Slug != want {
			t.Errorf("task %d slug = %q, want %q", i, task.Slug, want)
		}
		if len(task.ID) != 36 || task.ProjectID != pa.ID || task.LatestRun != nil {
			t.Errorf("CreateTask = %+v: want a UUID id, project %d, no latest run", task, pa.ID)
		}
		checkWireTime(t, "task created_at", task.CreatedAt)
		if !task.UpdatedAt.Equal(task.CreatedAt) {
			t.Errorf("new task updated_at %v != created_at %v", task.UpdatedAt, task.CreatedAt)
		}
	}
	other, err := s.CreateTask(ctx, pb.ID, store.NewTask{Title: "Other project", OriginProduct: "user_created"})
	noErr(t, err, "CreateTask")
	if other.Number != 1 || other.Slug != "BET-1" {
		t.Errorf("first task of project B: number %d slug %q, want 1 and BET-1", other.Number, other.Slug)
	}
	_, err = s.CreateTask(ctx, pa.ID+pb.ID+1000, store.NewTask{Title: "x", OriginProduct: "user_created"})
	wantErr(t, err, store.ErrNotFound, "CreateTask(unknown project)")

	t.Run("get", func(t *testing.T) {
		for i, in := range inputs {
			got, err := s.GetTask(ctx, pa.ID, tasks[i].ID)
			noErr(t, err, "GetTask")
			if got.ID != tasks[i].ID || got.Number != tasks[i].Number || got.Slug != tasks[i].Slug || got.Title != in.Title ||
				got.Description != in.Description || got.OriginProduct != in.OriginProduct || !reflect.DeepEqual(got.Repository, in.Repository) ||
				!got.CreatedAt.Equal(tasks[i].CreatedAt) || !got.UpdatedAt.Equal(tasks[i].UpdatedAt) {
				t.Errorf("GetTask = %+v, want %+v", got, tasks[i])
			}
			if (got.JSONSchema == nil) != (in.JSONSchema == nil) || (in.JSONSchema != nil && !sameJSON(t, string(got.JSONSchema), string(in.JSONSchema))) {
				t.Errorf("json_schema = %s, want %s", got.JSONSchema, in.JSONSchema)
			}
		}
		notFound := []struct {
			name    string
			project int64
			id      string
		}{
			{"other project", pb.ID, tasks[0].ID},
			{"task of other project", pa.ID, other.ID},
			{"unknown id", pa.ID, unknownUUID},
			{"malformed id", pa.ID, "not-a-uuid"},
			{"unknown project", pa.ID + pb.ID + 1000, tasks[0].ID},
		}
		for _, tc := range notFound {
			_, err := s.GetTask(ctx, tc.project, tc.id)
			wantErr(t, err, store.ErrNotFound, "GetTask("+tc.name+")")
		}
	})

	t.Run("list", func(t *testing.T) {
		cases := []struct {
			project       int64
			limit, offset int
			want          []int64 // task numbers
			total         int64
		}{
			{pa.ID, 100, 0, []int64{3, 2, 1}, 3},
			{pa.ID, 2, 0, []int64{3, 2}, 3},
			{pa.ID, 2, 1, []int64{2, 1}, 3},
			{pa.ID, 2, 2, []int64{1}, 3},
			{pa.ID, 1, 3, []int64{}, 3},
			{pb.ID, 100, 0, []int64{1}, 1},
			{pa.ID + pb.ID + 1000, 100, 0, []int64{}, 0},
		}
		for _, tc := range cases {
			t.Run(fmt.Sprintf("project=%d/limit=%d/offset=%d", tc.project, tc.limit, tc.offset), func(t *testing.T) {
				list, total, err := s.ListTasks(ctx, tc.project, store.TaskQuery{Limit: tc.limit, Offset: tc.offset})
				noErr(t, err, "ListTasks")
				got := []int64{}
				for _, task := range list {
					got = append(got, task.Number)
					if task.ProjectID != tc.project {
						t.Errorf("listed task %s of project %d", task.ID, task.ProjectID)
					}
				}
				if !slices.Equal(got, tc.want) || total != tc.total {
					t.Errorf("ListTasks = %v total %d, want %v total %d", got, total, tc.want, tc.total)
				}
			})
		}
	})

	t.Run("update", func(t *testing.T) {
		before := tasks[1]
		var nilRepo *string
		var nilSchema json.RawMessage
		got, err := s.UpdateTask(ctx, pa.ID, before.ID, store.TaskPatch{
			Title: ptr("Second, renamed"), Repository: &nilRepo, JSONSchema: &nilSchema,
		})
		noErr(t, err, "UpdateTask")
		if got.Title != "Second, renamed" || got.Repository != nil || got.JSONSchema != nil {
			t.Errorf("UpdateTask = %+v: title, repository and json_schema not applied", got)
		}
		if got.Number != before.Number || got.Slug != before.Slug || got.OriginProduct != before.OriginProduct ||
			got.Description != before.Description || !got.CreatedAt.Equal(before.CreatedAt) {
			t.Errorf("UpdateTask changed untouched fields: %+v, before %+v", got, before)
		}
		if got.UpdatedAt.Before(before.UpdatedAt) {
			t.Errorf("updated_at went back: %v < %v", got.UpdatedAt, before.UpdatedAt)
		}
		checkWireTime(t, "task updated_at", got.UpdatedAt)
		again, err := s.GetTask(ctx, pa.ID, before.ID)
		noErr(t, err, "GetTask")
		if again.Title != got.Title || again.Repository != nil || again.JSONSchema != nil || !again.UpdatedAt.Equal(got.UpdatedAt) {
			t.Errorf("GetTask after update = %+v, want %+v", again, got)
		}
		got, err = s.UpdateTask(ctx, pa.ID, before.ID, store.TaskPatch{Description: ptr("now described"), OriginProduct: ptr("support_queue"),
			Repository: ptr(&repo), JSONSchema: &schema})
		noErr(t, err, "UpdateTask")
		if got.Title != "Second, renamed" || got.Description != "now described" || got.OriginProduct != "support_queue" ||
			got.Repository == nil || *got.Repository != repo || !sameJSON(t, string(got.JSONSchema), string(schema)) {
			t.Errorf("second UpdateTask = %+v", got)
		}
		_, err = s.UpdateTask(ctx, pb.ID, before.ID, store.TaskPatch{Title: ptr("x")})
		wantErr(t, err, store.ErrNotFound, "UpdateTask(other project)")
		_, err = s.UpdateTask(ctx, pa.ID, unknownUUID, store.TaskPatch{Title: ptr("x")})
		wantErr(t, err, store.ErrNotFound, "UpdateTask(unknown)")
	})

	t.Run("latest_run", func(t *testing.T) {
		task := tasks[0]
		got, err := s.GetTask(ctx, pa.ID, task.ID)
		noErr(t, err, "GetTask")
		if got.LatestRun != nil {
			t.Fatalf("latest_run of a task without runs = %+v, want nil", got.LatestRun)
		}
		r1, err := s.CreateRun(ctx, pa.ID, task.ID, store.NewRun{})
		noErr(t, err, "CreateRun")
		r2, err := s.CreateRun(ctx, pa.ID, task.ID, store.NewRun{Status: store.StatusQueued})
		noErr(t, err, "CreateRun")
		got, err = s.GetTask(ctx, pa.ID, task.ID)
		noErr(t, err, "GetTask")
		if got.LatestRun == nil || got.LatestRun.ID != r2.Run.ID || got.LatestRun.Status != store.StatusQueued {
			t.Errorf("latest_run = %+v, want run %s (queued)", got.LatestRun, r2.Run.ID)
		}
		// Updating the older run does not make it the latest.
		_, err = s.UpdateRun(ctx, store.RunRef{ProjectID: pa.ID, TaskID: task.ID, RunID: r1.Run.ID},
			store.RunPatch{Status: ptr(store.StatusInProgress)}, nil)
		noErr(t, err, "UpdateRun")
		list, _, err := s.ListTasks(ctx, pa.ID, store.TaskQuery{Limit: 100})
		noErr(t, err, "ListTasks")
		for _, lt := range list {
			switch lt.ID {
			case task.ID:
				if lt.LatestRun == nil || lt.LatestRun.ID != r2.Run.ID {
					t.Errorf("listed latest_run = %+v, want %s", lt.LatestRun, r2.Run.ID)
				}
			default:
				if lt.LatestRun != nil {
					t.Errorf("task %d without runs lists latest_run %s", lt.Number, lt.LatestRun.ID)
				}
			}
		}
		upd, err := s.UpdateTask(ctx, pa.ID, task.ID, store.TaskPatch{Title: ptr("First again")})
		noErr(t, err, "UpdateTask")
		if upd.LatestRun == nil || upd.LatestRun.ID != r2.Run.ID {
			t.Errorf("UpdateTask latest_run = %+v, want %s", upd.LatestRun, r2.Run.ID)
		}
	})

	t.Run("delete", func(t *testing.T) {
		task := tasks[2]
		run, err := s.CreateRun(ctx, pa.ID, task.ID, store.NewRun{})
		noErr(t, err, "CreateRun")
		ref := store.RunRef{ProjectID: pa.ID, TaskID: task.ID, RunID: run.Run.ID}
		wantErr(t, s.DeleteTask(ctx, pb.ID, task.ID), store.ErrNotFound, "DeleteTask(other project)")
		noErr(t, s.DeleteTask(ctx, pa.ID, task.ID), "DeleteTask")

		checks := []struct {
			name string
			err  error
		}{
			{"DeleteTask again", s.DeleteTask(ctx, pa.ID, task.ID)},
			{"GetTask", second(s.GetTask(ctx, pa.ID, task.ID))},
			{"UpdateTask", second(s.UpdateTask(ctx, pa.ID, task.ID, store.TaskPatch{Title: ptr("x")}))},
			{"CreateRun", second(s.CreateRun(ctx, pa.ID, task.ID, store.NewRun{}))},
			{"GetRun", second(s.GetRun(ctx, ref))},
			{"ListRuns", third(s.ListRuns(ctx, pa.ID, task.ID, 100, 0))},
			{"UpdateRun", second(s.UpdateRun(ctx, ref, store.RunPatch{Stage: ptr(ptr("x"))}, nil))},
			{"SetOutput", second(s.SetOutput(ctx, ref, raw("a", "1"), nil))},
			{"AppendLog", second(s.AppendLog(ctx, ref, entries(t, logLine(1)), nil))},
			{"QueryLog", second(s.QueryLog(ctx, ref, store.LogQuery{Limit: 10}))},
			{"StreamLog", s.StreamLog(ctx, ref, func([]byte) error { return nil })},
		}
		for _, c := range checks {
			wantErr(t, c.err, store.ErrNotFound, c.name+" on a deleted task")
		}
		list, total, err := s.ListTasks(ctx, pa.ID, store.TaskQuery{Limit: 100})
		noErr(t, err, "ListTasks")
		if total != 2 || len(list) != 2 {
			t.Errorf("ListTasks after delete: %d tasks, total %d; want 2, 2", len(list), total)
		}
		if _, err := s.GetTask(ctx, pb.ID, other.ID); err != nil {
			t.Errorf("task of project B after deleting in A: %v", err)
		}
		next, err := s.CreateTask(ctx, pa.ID, store.NewTask{Title: "Fourth", OriginProduct: "user_created"})
		noErr(t, err, "CreateTask")
		if next.Number != 4 {
			t.Errorf("task number after a deletion = %d, want 4 (numbers are never reused)", next.Number)
		}
	})
}

func second[T any](_ T, err error) error        { return err }
func third[T, U any](_ T, _ U, err error) error { return err }

// ---------------------------------------------------------------------------
// runs

func testRuns(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)

	t.Run("create defaults", func(t *testing.T) {
		res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{})
		noErr(t, err, "CreateRun")
		r := res.Run
		if len(r.ID) != 36 || r.TaskID != f.task.ID || r.ProjectID != f.project.ID {
			t.Errorf("run ids: %+v", r)
		}
		if r.Status != store.StatusNotStarted || r.Environment != store.EnvCloud || r.Stage != nil || r.Branch != nil ||
			r.ErrorMessage != nil || r.Output != nil || r.State == nil || len(r.State) != 0 || len(r.Artifacts) != 0 || r.CompletedAt != nil {
			t.Errorf("defaults of a new run: %+v", r)
		}
		if r.LastSeq != 1 || r.LogCount != 0 || res.Replayed {
			t.Errorf("new run last_seq %d log_count %d replayed %v; want 1, 0, false", r.LastSeq, r.LogCount, res.Replayed)
		}
		checkWireTime(t, "run created_at", r.CreatedAt)
		if !r.UpdatedAt.Equal(r.CreatedAt) {
			t.Errorf("new run updated_at %v != created_at %v", r.UpdatedAt, r.CreatedAt)
		}
		if len(res.Events) != 1 || res.Events[0].Seq != 1 {
			t.Fatalf("CreateRun events = %v, want one event with seq 1", seqsOf(res.Events))
		}
		checkStateEvent(t, res.Events[0], r)
		stored := allEvents(t, s, r.ID)
		if len(stored) != 1 || stored[0].Seq != 1 || !sameJSON(t, string(stored[0].Data), string(res.Events[0].Data)) {
			t.Errorf("stored events = %+v, want the creation event", stored)
		}
		got, err := s.GetRun(ctx, store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: r.ID})
		noErr(t, err, "GetRun")
		if jsonText(t, got) != jsonText(t, r) {
			t.Errorf("GetRun = %s\nwant      %s", jsonText(t, got), jsonText(t, r))
		}
	})

	t.Run("create with fields", func(t *testing.T) {
		cases := []struct {
			name          string
			in            store.NewRun
			wantCompleted bool
		}{
			{"every field", store.NewRun{Stage: ptr("build"), Branch: ptr("feature/x"), Status: store.StatusQueued, Environment: store.EnvLocal,
				ErrorMessage: ptr("none yet"), Output: raw("pr_url", `"https://github.com/o/r/pull/1"`),
				State: raw("sandbox_url", `"http://sandbox:8080"`, "slack_thread", `{"channel":"C1","thread_ts":"1.2"}`)}, false},
			{"in progress", store.NewRun{Status: store.StatusInProgress}, false},
			{"completed", store.NewRun{Status: store.StatusCompleted}, true},
			{"failed", store.NewRun{Status: store.StatusFailed, ErrorMessage: ptr("boom")}, true},
			{"cancelled", store.NewRun{Status: store.StatusCancelled}, true},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, tc.in)
				noErr(t, err, "CreateRun")
				got, err := s.GetRun(ctx, store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID})
				noErr(t, err, "GetRun")
				for _, r := range []*store.Run{res.Run, got} {
					if r.Status != tc.in.Status || !reflect.DeepEqual(r.Stage, tc.in.Stage) || !reflect.DeepEqual(r.Branch, tc.in.Branch) ||
						!reflect.DeepEqual(r.ErrorMessage, tc.in.ErrorMessage) {
						t.Errorf("run = %+v, want fields of %+v", r, tc.in)
					}
					if want := cmpOr(tc.in.Environment, store.EnvCloud); r.Environment != want {
						t.Errorf("environment = %q, want %q", r.Environment, want)
					}
					checkJSON(t, "output", r.Output, jsonText(t, tc.in.Output))
					checkJSON(t, "state", r.State, jsonText(t, cmpOrMap(tc.in.State)))
					if (r.CompletedAt != nil) != tc.wantCompleted {
						t.Errorf("completed_at = %v, want set=%v", r.CompletedAt, tc.wantCompleted)
					} else if r.CompletedAt != nil {
						checkWireTime(t, "completed_at", *r.CompletedAt)
						if r.CompletedAt.Before(r.CreatedAt) {
							t.Errorf("completed_at %v before created_at %v", r.CompletedAt, r.CreatedAt)
						}
					}
				}
				checkStateEvent(t, res.Events[0], got)
			})
		}
	})

	t.Run("not found", func(t *testing.T) {
		otherTask, err := s.CreateTask(ctx, f.project.ID, store.NewTask{Title: "sibling", OriginProduct: "user_created"})
		noErr(t, err, "CreateTask")
		otherProject, err := s.CreateProject(ctx, "Elsewhere")
		noErr(t, err, "CreateProject")
		foreign := newFixture(t, s)
		refs := []struct {
			name string
			ref  store.RunRef
		}{
			{"other project", store.RunRef{ProjectID: otherProject.ID, TaskID: f.task.ID, RunID: f.run.ID}},
			{"other task of the project", store.RunRef{ProjectID: f.project.ID, TaskID: otherTask.ID, RunID: f.run.ID}},
			{"unknown task", store.RunRef{ProjectID: f.project.ID, TaskID: unknownUUID, RunID: f.run.ID}},
			{"unknown run", store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: unknownUUID}},
			{"run of another project's task", store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: foreign.run.ID}},
			{"foreign task and run", store.RunRef{ProjectID: f.project.ID, TaskID: foreign.task.ID, RunID: foreign.run.ID}},
			{"malformed run id", store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: "nope"}},
		}
		for _, tc := range refs {
			t.Run(tc.name, func(t *testing.T) {
				ref := tc.ref
				ops := []struct {
					name string
					err  error
				}{
					{"GetRun", second(s.GetRun(ctx, ref))},
					{"UpdateRun", second(s.UpdateRun(ctx, ref, store.RunPatch{Status: ptr(store.StatusFailed)}, nil))},
					{"SetOutput", second(s.SetOutput(ctx, ref, raw("a", "1"), nil))},
					{"AppendLog", second(s.AppendLog(ctx, ref, entries(t, logLine(1)), nil))},
					{"QueryLog", second(s.QueryLog(ctx, ref, store.LogQuery{Limit: 10}))},
					{"StreamLog", s.StreamLog(ctx, ref, func([]byte) error { return nil })},
				}
				for _, op := range ops {
					wantErr(t, op.err, store.ErrNotFound, op.name)
				}
			})
		}
		// Nothing above may have touched the real runs.
		for _, fx := range []*fixture{f, foreign} {
			got, err := s.GetRun(ctx, fx.ref())
			noErr(t, err, "GetRun")
			if got.LastSeq != 1 || got.Status != store.StatusNotStarted || got.Output != nil {
				t.Errorf("run %s changed by refused requests: %+v", got.ID, got)
			}
		}
		_, err = s.CreateRun(ctx, otherProject.ID, f.task.ID, store.NewRun{})
		wantErr(t, err, store.ErrNotFound, "CreateRun(task of another project)")
		_, err = s.CreateRun(ctx, f.project.ID, unknownUUID, store.NewRun{})
		wantErr(t, err, store.ErrNotFound, "CreateRun(unknown task)")
		_, _, err = s.ListRuns(ctx, otherProject.ID, f.task.ID, 100, 0)
		wantErr(t, err, store.ErrNotFound, "ListRuns(task of another project)")
		_, err = s.Events(ctx, unknownUUID, 0, 10)
		wantErr(t, err, store.ErrNotFound, "Events(unknown run)")
	})

	t.Run("patch merges output and state", func(t *testing.T) {
		res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{State: raw("init", "true")})
		noErr(t, err, "CreateRun")
		ref := store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID}
		prev := res.Run
		steps := []struct {
			name       string
			patch      store.RunPatch
			wantOutput string
			wantState  string
		}{
			{"output into null", store.RunPatch{Output: raw("a", "1")}, `{"a":1}`, `{"init":true}`},
			{"output adds a key", store.RunPatch{Output: raw("b", `"x"`)}, `{"a":1,"b":"x"}`, `{"init":true}`},
			{"output replaces a key shallowly", store.RunPatch{Output: raw("a", `{"n":2}`)}, `{"a":{"n":2},"b":"x"}`, `{"init":true}`},
			{"output nested objects are not merged", store.RunPatch{Output: raw("a", `{"m":3}`)}, `{"a":{"m":3},"b":"x"}`, `{"init":true}`},
			{"state adds a key", store.RunPatch{State: raw("k", "[1,2]")}, `{"a":{"m":3},"b":"x"}`, `{"init":true,"k":[1,2]}`},
			{"state replaces a key", store.RunPatch{State: raw("init", "false")}, `{"a":{"m":3},"b":"x"}`, `{"init":false,"k":[1,2]}`},
			{"state null value is kept", store.RunPatch{State: raw("nil", "null")}, `{"a":{"m":3},"b":"x"}`, `{"init":false,"k":[1,2],"nil":null}`},
			{"state remove keys", store.RunPatch{StateRemoveKeys: []string{"init", "absent", "nil"}}, `{"a":{"m":3},"b":"x"}`, `{"k":[1,2]}`},
			{"state merge and remove", store.RunPatch{State: raw("z", "1"), StateRemoveKeys: []string{"k"}}, `{"a":{"m":3},"b":"x"}`, `{"z":1}`},
			{"clear output", store.RunPatch{ClearOutput: true}, `null`, `{"z":1}`},
			{"output after clear", store.RunPatch{Output: raw("c", "true")}, `{"c":true}`, `{"z":1}`},
			{"empty patch", store.RunPatch{}, `{"c":true}`, `{"z":1}`},
			{"remove every state key", store.RunPatch{StateRemoveKeys: []string{"z"}}, `{"c":true}`, `{}`},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				res, err := s.UpdateRun(ctx, ref, st.patch, nil)
				noErr(t, err, "UpdateRun")
				got, err := s.GetRun(ctx, ref)
				noErr(t, err, "GetRun")
				for _, r := range []*store.Run{res.Run, got} {
					checkJSON(t, "output", r.Output, st.wantOutput)
					checkJSON(t, "state", r.State, st.wantState)
					if r.State == nil {
						t.Errorf("state is nil, want an object")
					}
				}
				if len(res.Events) != 1 || res.Events[0].Seq != prev.LastSeq+1 || res.Run.LastSeq != prev.LastSeq+1 {
					t.Fatalf("UpdateRun events %v last_seq %d, want one event with seq %d", seqsOf(res.Events), res.Run.LastSeq, prev.LastSeq+1)
				}
				checkStateEvent(t, res.Events[0], got)
				if got.UpdatedAt.Before(prev.UpdatedAt) || !got.CreatedAt.Equal(prev.CreatedAt) || got.Status != prev.Status {
					t.Errorf("UpdateRun touched created_at/status or moved updated_at back: %+v", got)
				}
				prev = got
			})
		}
	})

	t.Run("patch scalar fields", func(t *testing.T) {
		res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{Stage: ptr("plan"), Branch: ptr("main")})
		noErr(t, err, "CreateRun")
		ref := store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID}
		var null *string
		type fields struct {
			stage, branch, errMsg *string
			env                   string
		}
		steps := []struct {
			name  string
			patch store.RunPatch
			want  fields
		}{
			{"stage", store.RunPatch{Stage: ptr(ptr("build"))}, fields{ptr("build"), ptr("main"), nil, store.EnvCloud}},
			{"branch and error", store.RunPatch{Branch: ptr(ptr("fix/1")), ErrorMessage: ptr(ptr("exit 1"))}, fields{ptr("build"), ptr("fix/1"), ptr("exit 1"), store.EnvCloud}},
			{"environment", store.RunPatch{Environment: ptr(store.EnvLocal)}, fields{ptr("build"), ptr("fix/1"), ptr("exit 1"), store.EnvLocal}},
			{"clear stage", store.RunPatch{Stage: &null}, fields{nil, ptr("fix/1"), ptr("exit 1"), store.EnvLocal}},
			{"clear branch and error", store.RunPatch{Branch: &null, ErrorMessage: &null}, fields{nil, nil, nil, store.EnvLocal}},
			{"empty strings", store.RunPatch{Stage: ptr(ptr("")), Branch: ptr(ptr(""))}, fields{ptr(""), ptr(""), nil, store.EnvLocal}},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				res, err := s.UpdateRun(ctx, ref, st.patch, nil)
				noErr(t, err, "UpdateRun")
				got, err := s.GetRun(ctx, ref)
				noErr(t, err, "GetRun")
				for _, r := range []*store.Run{res.Run, got} {
					if !reflect.DeepEqual(r.Stage, st.want.stage) || !reflect.DeepEqual(r.Branch, st.want.branch) ||
						!reflect.DeepEqual(r.ErrorMessage, st.want.errMsg) || r.Environment != st.want.env {
						t.Errorf("run stage %v branch %v error %v env %q; want %v %v %v %q", deref(r.Stage), deref(r.Branch), deref(r.ErrorMessage),
							r.Environment, deref(st.want.stage), deref(st.want.branch), deref(st.want.errMsg), st.want.env)
					}
				}
				checkStateEvent(t, res.Events[0], got)
			})
		}
	})

	t.Run("completed_at", func(t *testing.T) {
		res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{})
		noErr(t, err, "CreateRun")
		ref := store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID}
		const (
			unset = "unset" // completed_at is null
			fresh = "fresh" // completed_at is set now, not before the previous value
			kept  = "kept"  // completed_at is the previous value
		)
		steps := []struct {
			status *string
			want   string
		}{
			{ptr(store.StatusQueued), unset},
			{ptr(store.StatusInProgress), unset},
			{ptr(store.StatusCompleted), fresh},
			{ptr(store.StatusFailed), kept}, // terminal to terminal: set only if unset
			{nil, kept},                     // a PATCH without status
			{ptr(store.StatusCancelled), kept},
			{ptr(store.StatusCancelled), kept},
			{ptr(store.StatusCompleted), kept},
		}
		var prev *time.Time
		lastSet := res.Run.CreatedAt
		for i, st := range steps {
			name := fmt.Sprintf("%d:%s", i, deref(st.status))
			t.Run(name, func(t *testing.T) {
				res, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: st.status, Stage: ptr(ptr(name))}, nil)
				noErr(t, err, "UpdateRun")
				got, err := s.GetRun(ctx, ref)
				noErr(t, err, "GetRun")
				if !sameTimePtr(res.Run.CompletedAt, got.CompletedAt) {
					t.Errorf("returned completed_at %v, stored %v", res.Run.CompletedAt, got.CompletedAt)
				}
				c := got.CompletedAt
				switch st.want {
				case unset:
					if c != nil {
						t.Errorf("completed_at = %v, want null", c)
					}
				case kept:
					if !sameTimePtr(c, prev) {
						t.Errorf("completed_at = %v, want unchanged %v", c, prev)
					}
				case fresh:
					if c == nil || c.Before(lastSet) || c.After(got.UpdatedAt) {
						t.Errorf("completed_at = %v, want a new time in [%v, %v]", c, lastSet, got.UpdatedAt)
					} else {
						checkWireTime(t, "completed_at", *c)
						lastSet = *c
					}
				}
				checkStateEvent(t, res.Events[0], got)
				prev = c
			})
		}
		// A finished run never moves back: the PATCH is refused and the
		// run, its completed_at and its log stay as they were.
		before, err := s.GetRun(ctx, ref)
		noErr(t, err, "GetRun")
		for _, st := range []string{store.StatusQueued, store.StatusInProgress, store.StatusNotStarted} {
			_, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: ptr(st), Stage: ptr(ptr("reopened"))}, nil)
			var ve *store.ValidationError
			if !errors.As(err, &ve) || ve.Attr != "status" {
				t.Errorf("reopening to %s: err %v, want a status ValidationError", st, err)
			}
		}
		// only_if_non_terminal: a late PATCH of a finished run changes nothing.
		late, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: ptr(store.StatusFailed), Stage: ptr(ptr("late")), OnlyIfNonTerminal: true}, nil)
		noErr(t, err, "UpdateRun only_if_non_terminal")
		if len(late.Events) != 0 || late.Run.Status != before.Status {
			t.Errorf("only_if_non_terminal on a finished run: status %s, %d events; want unchanged, none", late.Run.Status, len(late.Events))
		}
		after, err := s.GetRun(ctx, ref)
		noErr(t, err, "GetRun")
		if after.Status != before.Status || deref(after.Stage) != deref(before.Stage) || !sameTimePtr(after.CompletedAt, before.CompletedAt) ||
			!after.UpdatedAt.Equal(before.UpdatedAt) || after.LastSeq != before.LastSeq {
			t.Errorf("finished run changed: %+v, was %+v", after, before)
		}
		// On a live run only_if_non_terminal is no obstacle; RequireStatus is.
		live, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{})
		noErr(t, err, "CreateRun")
		lref := store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: live.Run.ID}
		_, err = s.UpdateRun(ctx, lref, store.RunPatch{Status: ptr(store.StatusInProgress), RequireStatus: store.StatusQueued}, nil)
		if ve := (*store.ValidationError)(nil); !errors.As(err, &ve) {
			t.Errorf("RequireStatus queued on a not_started run: err %v, want a ValidationError", err)
		}
		res2, err := s.UpdateRun(ctx, lref, store.RunPatch{Status: ptr(store.StatusQueued), RequireStatus: store.StatusNotStarted, OnlyIfNonTerminal: true}, nil)
		noErr(t, err, "UpdateRun RequireStatus")
		if res2.Run.Status != store.StatusQueued || len(res2.Events) != 1 || res2.Run.LastSeq != 2 {
			t.Errorf("start-like PATCH: status %s, %d events, last_seq %d; want queued, 1, 2", res2.Run.Status, len(res2.Events), res2.Run.LastSeq)
		}
	})

	t.Run("relays", func(t *testing.T) {
		base := time.Now().UTC().Truncate(time.Millisecond)
		for i, id := range []string{"r-late", "r-due", "r-due2"} {
			next := base.Add(time.Duration(i-1) * time.Minute) // late in a minute; the others due
			if id == "r-late" {
				next = base.Add(time.Hour)
			}
			noErr(t, s.CreateRelay(ctx, store.Relay{ID: id, RunID: "run", Channel: "C1", ThreadTS: "1.2", Text: "hi " + id, NextAt: next}), "CreateRelay")
		}
		due, err := s.DueRelays(ctx, base.Add(time.Minute), 10)
		noErr(t, err, "DueRelays")
		if len(due) != 2 || due[0].ID != "r-due" || due[1].ID != "r-due2" || due[0].Status != store.RelayPending || due[0].Text != "hi r-due" || due[0].Channel != "C1" || due[0].ThreadTS != "1.2" {
			t.Fatalf("due %+v", due)
		}
		r := due[0]
		r.Attempts, r.LastError, r.NextAt = 2, "HTTP 500", base.Add(2*time.Hour)
		noErr(t, s.UpdateRelay(ctx, r), "UpdateRelay")
		got, err := s.GetRelay(ctx, "r-due")
		noErr(t, err, "GetRelay")
		if got.Attempts != 2 || got.LastError != "HTTP 500" || !got.NextAt.Equal(r.NextAt) {
			t.Fatalf("after update %+v", got)
		}
		r.Status = store.RelaySent
		noErr(t, s.UpdateRelay(ctx, r), "UpdateRelay")
		due, _ = s.DueRelays(ctx, base.Add(3*time.Hour), 10)
		if len(due) != 2 || due[0].ID == "r-due" || due[1].ID == "r-due" {
			t.Fatalf("a sent relay is still due: %+v", due)
		}
		if _, err := s.GetRelay(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown relay: %v", err)
		}
		if err := s.UpdateRelay(ctx, store.Relay{ID: "nope"}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("update unknown relay: %v", err)
		}
	})

	t.Run("add artifacts", func(t *testing.T) {
		res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{})
		noErr(t, err, "CreateRun")
		ref := store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID}
		a := []json.RawMessage{json.RawMessage(`{"id":"a","storage_path":"p/a"}`), json.RawMessage(`{"id":"b","storage_path":"p/b"}`)}
		out, err := s.AddArtifacts(ctx, ref, a)
		noErr(t, err, "AddArtifacts")
		if len(out.Events) != 2 || out.Events[0].Seq != 2 || out.Events[1].Seq != 3 || out.Events[0].Kind != store.KindArtifact {
			t.Fatalf("events %+v", out.Events)
		}
		checkJSON(t, "event", map[string]json.RawMessage{"e": out.Events[1].Data}, `{"e":{"type":"artifact","artifact":{"id":"b","storage_path":"p/b"}}}`)
		_, err = s.AddArtifacts(ctx, ref, []json.RawMessage{json.RawMessage(`{"id":"c"}`)})
		noErr(t, err, "AddArtifacts")
		got, err := s.GetRun(ctx, ref)
		noErr(t, err, "GetRun")
		if len(got.Artifacts) != 3 || string(got.Artifacts[2]) != `{"id":"c"}` || got.LastSeq != 4 {
			t.Fatalf("manifest %s, last_seq %d", got.Artifacts, got.LastSeq)
		}
		// Ids are unique in a manifest: an entry whose id is there already
		// is left out, with no event and no seq.
		out, err = s.AddArtifacts(ctx, ref, []json.RawMessage{json.RawMessage(`{"id":"b","storage_path":"p/b2"}`), json.RawMessage(`{"id":"d"}`)})
		noErr(t, err, "AddArtifacts")
		if len(out.Events) != 1 || out.Events[0].Seq != 5 || len(out.Run.Artifacts) != 4 || string(out.Run.Artifacts[3]) != `{"id":"d"}` {
			t.Fatalf("known id: events %+v, manifest %s", out.Events, out.Run.Artifacts)
		}
		out, err = s.AddArtifacts(ctx, ref, []json.RawMessage{json.RawMessage(`{"id":"a"}`)})
		noErr(t, err, "AddArtifacts")
		if got, err := s.GetRun(ctx, ref); err != nil || len(out.Events) != 0 || len(got.Artifacts) != 4 || got.LastSeq != 5 {
			t.Fatalf("only known ids: events %+v, run %+v, %v", out.Events, got, err)
		}
		if _, err := s.AddArtifacts(ctx, store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: "00000000-0000-4000-8000-000000000000"}, a); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown run: %v", err)
		}
	})

	t.Run("set_output replaces", func(t *testing.T) {
		res, err := s.CreateRun(ctx, f.project.ID, f.task.ID, store.NewRun{State: raw("s", "1")})
		noErr(t, err, "CreateRun")
		ref := store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: res.Run.ID}
		_, err = s.UpdateRun(ctx, ref, store.RunPatch{Output: raw("a", "1", "b", "2")}, nil)
		noErr(t, err, "UpdateRun")
		steps := []struct {
			output map[string]json.RawMessage
			want   string
		}{
			{raw("c", `{"deep":[1,2,3]}`), `{"c":{"deep":[1,2,3]}}`},
			{raw("d", `"x"`, "e", "null"), `{"d":"x","e":null}`},
			{map[string]json.RawMessage{}, `{}`},
			{raw("f", "1.5"), `{"f":1.5}`},
		}
		seq := int64(2) // create, then the PATCH above
		for i, st := range steps {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				res, err := s.SetOutput(ctx, ref, st.output, nil)
				noErr(t, err, "SetOutput")
				got, err := s.GetRun(ctx, ref)
				noErr(t, err, "GetRun")
				for _, r := range []*store.Run{res.Run, got} {
					checkJSON(t, "output", r.Output, st.want)
					checkJSON(t, "state", r.State, `{"s":1}`)
				}
				seq++
				if len(res.Events) != 1 || res.Events[0].Seq != seq || got.LastSeq != seq {
					t.Fatalf("SetOutput events %v last_seq %d, want one event with seq %d", seqsOf(res.Events), got.LastSeq, seq)
				}
				checkStateEvent(t, res.Events[0], got)
			})
		}
	})

	t.Run("list", func(t *testing.T) {
		task, err := s.CreateTask(ctx, f.project.ID, store.NewTask{Title: "listed", OriginProduct: "user_created"})
		noErr(t, err, "CreateTask")
		var ids []string
		for i := range 4 {
			res, err := s.CreateRun(ctx, f.project.ID, task.ID, store.NewRun{Stage: ptr(fmt.Sprint(i))})
			noErr(t, err, "CreateRun")
			ids = append(ids, res.Run.ID)
		}
		// Updating the oldest run does not reorder the list.
		_, err = s.UpdateRun(ctx, store.RunRef{ProjectID: f.project.ID, TaskID: task.ID, RunID: ids[0]}, store.RunPatch{Status: ptr(store.StatusFailed)}, nil)
		noErr(t, err, "UpdateRun")
		newest := []string{ids[3], ids[2], ids[1], ids[0]}
		cases := []struct {
			limit, offset int
			want          []string
		}{
			{100, 0, newest},
			{1, 0, newest[:1]},
			{2, 1, newest[1:3]},
			{2, 3, newest[3:]},
			{5, 4, []string{}},
		}
		for _, tc := range cases {
			list, total, err := s.ListRuns(ctx, f.project.ID, task.ID, tc.limit, tc.offset)
			noErr(t, err, "ListRuns")
			got := []string{}
			for _, r := range list {
				got = append(got, r.ID)
				if r.TaskID != task.ID || r.ProjectID != f.project.ID || r.State == nil {
					t.Errorf("listed run %+v", r)
				}
			}
			if !slices.Equal(got, tc.want) || total != 4 {
				t.Errorf("ListRuns(limit=%d, offset=%d) = %v total %d, want %v total 4", tc.limit, tc.offset, got, total, tc.want)
			}
		}
		list, _, err := s.ListRuns(ctx, f.project.ID, task.ID, 100, 0)
		noErr(t, err, "ListRuns")
		if list[3].Status != store.StatusFailed || list[3].CompletedAt == nil || list[3].LastSeq != 2 {
			t.Errorf("listed run is not the stored row: %+v", list[3])
		}
	})
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func cmpOrMap(m map[string]json.RawMessage) map[string]json.RawMessage {
	if m == nil {
		return map[string]json.RawMessage{}
	}
	return m
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// ---------------------------------------------------------------------------
// append_log

func testAppendLog(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	ref := f.ref()

	steps := []struct {
		name         string
		entries      []string // raw entries; chunkLine is ephemeral
		patch        bool     // a PATCH instead of an append
		wantSeqs     []int64  // of the returned events, 0 for ephemeral
		wantLastSeq  int64
		wantLogCount int64
	}{
		{"three entries", []string{logLine(1), logLine(2), logLine(3)}, false, []int64{2, 3, 4}, 4, 3},
		{"a state change shares the numbering", nil, true, []int64{5}, 5, 3},
		{"ephemeral entry in the middle", []string{logLine(4), chunkLine, logLine(5)}, false, []int64{6, 0, 7}, 7, 5},
		{"only ephemeral entries", []string{chunkLine, chunkLine}, false, []int64{0, 0}, 7, 5},
		{"one entry", []string{logLine(6)}, false, []int64{8}, 8, 6},
		{"empty append", []string{}, false, []int64{}, 8, 6},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var res *store.MutationResult
			var err error
			var in []store.LogEntry
			if st.patch {
				res, err = s.UpdateRun(ctx, ref, store.RunPatch{Stage: ptr(ptr("coding"))}, nil)
			} else {
				in = entries(t, st.entries...)
				res, err = s.AppendLog(ctx, ref, in, nil)
			}
			noErr(t, err, "mutation")
			if got := seqsOf(res.Events); !slices.Equal(got, st.wantSeqs) {
				t.Fatalf("event seqs = %v, want %v", got, st.wantSeqs)
			}
			if res.Replayed || res.Run.LastSeq != st.wantLastSeq || res.Run.LogCount != st.wantLogCount {
				t.Errorf("run last_seq %d log_count %d replayed %v, want %d %d false", res.Run.LastSeq, res.Run.LogCount, res.Replayed,
					st.wantLastSeq, st.wantLogCount)
			}
			for i, ev := range res.Events {
				if ev.RunID != f.run.ID {
					t.Errorf("event %d run id %q, want %q", i, ev.RunID, f.run.ID)
				}
				if st.patch {
					continue
				}
				wantKind := store.KindLog
				if in[i].Ephemeral() {
					wantKind = store.KindChunk
				}
				if ev.Kind != wantKind || ev.Type != in[i].Type || !sameJSON(t, string(ev.Data), string(in[i].Data)) {
					t.Errorf("event %d = {kind %q type %q data %s}, want {kind %q type %q data %s}", i, ev.Kind, ev.Type, ev.Data,
						wantKind, in[i].Type, in[i].Data)
				}
			}
			got, err := s.GetRun(ctx, ref)
			noErr(t, err, "GetRun")
			if got.LastSeq != st.wantLastSeq || got.LogCount != st.wantLogCount {
				t.Errorf("stored run last_seq %d log_count %d, want %d %d", got.LastSeq, got.LogCount, st.wantLastSeq, st.wantLogCount)
			}
		})
	}

	t.Run("stored events", func(t *testing.T) {
		evs := allEvents(t, s, f.run.ID)
		if got := seqsOf(evs); !slices.Equal(got, seqRange(1, 8)) {
			t.Fatalf("stored seqs = %v, want 1..8", got)
		}
		wantKinds := []string{store.KindRunState, store.KindLog, store.KindLog, store.KindLog, store.KindRunState, store.KindLog, store.KindLog, store.KindLog}
		var ns []int
		for i, ev := range evs {
			if ev.Kind != wantKinds[i] {
				t.Errorf("event %d kind %q, want %q", ev.Seq, ev.Kind, wantKinds[i])
			}
			if ev.Kind == store.KindLog {
				ns = append(ns, numberOf(t, ev.Data))
				if ev.Type != "_posthog/console" {
					t.Errorf("event %d type %q, want _posthog/console", ev.Seq, ev.Type)
				}
			}
		}
		if !slices.Equal(ns, []int{1, 2, 3, 4, 5, 6}) {
			t.Errorf("stored entries %v, want 1..6 in order", ns)
		}
		page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 100})
		noErr(t, err, "QueryLog")
		if page.Total != 6 || page.Matching != 6 || len(page.Entries) != 6 {
			t.Errorf("QueryLog total %d matching %d entries %d, want 6 6 6", page.Total, page.Matching, len(page.Entries))
		}
	})

	t.Run("runs have separate numbering", func(t *testing.T) {
		other := f.newRun(t)
		res, err := s.AppendLog(ctx, other, entries(t, logLine(1), logLine(2)), nil)
		noErr(t, err, "AppendLog")
		if got := seqsOf(res.Events); !slices.Equal(got, []int64{2, 3}) {
			t.Errorf("seqs of another run = %v, want [2 3]", got)
		}
		if got := seqsOf(allEvents(t, s, f.run.ID)); !slices.Equal(got, seqRange(1, 8)) {
			t.Errorf("first run's seqs changed to %v", got)
		}
	})
}

// ---------------------------------------------------------------------------
// idempotency

func testIdempotency(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	kinds := []struct {
		name  string
		apply func(t *testing.T, ref store.RunRef, idem *store.Idempotency, i int) (*store.MutationResult, error)
	}{
		{"append_log", func(t *testing.T, ref store.RunRef, idem *store.Idempotency, i int) (*store.MutationResult, error) {
			return s.AppendLog(ctx, ref, entries(t, logLine(i), logLine(i+1000)), idem)
		}},
		{"update", func(t *testing.T, ref store.RunRef, idem *store.Idempotency, i int) (*store.MutationResult, error) {
			return s.UpdateRun(ctx, ref, store.RunPatch{State: raw("i", fmt.Sprint(i)), Status: ptr(store.StatusInProgress)}, idem)
		}},
		{"set_output", func(t *testing.T, ref store.RunRef, idem *store.Idempotency, i int) (*store.MutationResult, error) {
			return s.SetOutput(ctx, ref, raw("i", fmt.Sprint(i)), idem)
		}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ref := f.newRun(t)
			key := &store.Idempotency{Key: "req-1", RequestHash: sum("body-1")}

			first, err := k.apply(t, ref, key, 1)
			noErr(t, err, "first request")
			if first.Replayed || len(first.Events) == 0 {
				t.Fatalf("first request: replayed %v, %d events; want applied with events", first.Replayed, len(first.Events))
			}
			stored := len(allEvents(t, s, ref.RunID))

			steps := []struct {
				name       string
				idem       *store.Idempotency
				i          int
				wantErr    error
				wantReplay bool
			}{
				{"same key and request", key, 1, nil, true},
				{"same key and request again", key, 1, nil, true},
				{"same key, other request", &store.Idempotency{Key: "req-1", RequestHash: sum("body-2")}, 2, store.ErrIdempotencyMismatch, false},
				{"no key", nil, 3, nil, false},
				{"replay after the run moved on", key, 1, nil, true},
				{"other key, same request body", &store.Idempotency{Key: "req-2", RequestHash: sum("body-1")}, 4, nil, false},
				{"other key replayed", &store.Idempotency{Key: "req-2", RequestHash: sum("body-1")}, 4, nil, true},
				{"same key in another namespace", &store.Idempotency{Namespace: store.IdemAgent, Key: "req-1", RequestHash: sum("body-2")}, 5, nil, false},
			}
			for _, st := range steps {
				before := allEvents(t, s, ref.RunID)
				res, err := k.apply(t, ref, st.idem, st.i)
				after := allEvents(t, s, ref.RunID)
				if st.wantErr != nil {
					wantErr(t, err, st.wantErr, st.name)
					if len(after) != len(before) {
						t.Errorf("%s: stored %d events, want none", st.name, len(after)-len(before))
					}
					continue
				}
				noErr(t, err, st.name)
				if res.Replayed != st.wantReplay {
					t.Fatalf("%s: replayed = %v, want %v", st.name, res.Replayed, st.wantReplay)
				}
				if !st.wantReplay {
					if len(after) == len(before) {
						t.Errorf("%s: stored nothing", st.name)
					}
					continue
				}
				if len(res.Events) != 0 || len(after) != len(before) {
					t.Errorf("%s: replay returned %d events and stored %d, want none", st.name, len(res.Events), len(after)-len(before))
				}
				if st.idem == key {
					if got, want := jsonText(t, res.Run), jsonText(t, first.Run); !sameJSON(t, got, want) {
						t.Errorf("%s: replayed run\n%s\nwant the first response\n%s", st.name, got, want)
					}
				}
			}
			if got := len(allEvents(t, s, ref.RunID)); got != stored+3*len(first.Events) {
				t.Errorf("events stored = %d, want %d (first request, the request without key, req-2 and req-1 in the agent namespace)", got, stored+3*len(first.Events))
			}

			// Keys belong to one run: the same key on another run is a new request.
			other := f.newRun(t)
			res, err := k.apply(t, other, key, 1)
			noErr(t, err, "same key on another run")
			if res.Replayed {
				t.Errorf("a key applied to one run was replayed on another")
			}
		})
	}
}

// ---------------------------------------------------------------------------
// events

func testEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	var lines []string
	for i := range 9 {
		lines = append(lines, logLine(i))
	}
	_, err := s.AppendLog(ctx, f.ref(), entries(t, lines...), nil)
	noErr(t, err, "AppendLog")
	cases := []struct {
		after int64
		limit int
		want  []int64
	}{
		{0, 100, seqRange(1, 10)},
		{0, 3, []int64{1, 2, 3}},
		{3, 3, []int64{4, 5, 6}},
		{5, 1, []int64{6}},
		{8, 100, []int64{9, 10}},
		{9, 1, []int64{10}},
		{10, 100, []int64{}},
		{1000, 100, []int64{}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("after=%d/limit=%d", tc.after, tc.limit), func(t *testing.T) {
			evs, err := s.Events(ctx, f.run.ID, tc.after, tc.limit)
			noErr(t, err, "Events")
			if got := seqsOf(evs); !slices.Equal(got, tc.want) {
				t.Fatalf("seqs = %v, want %v", got, tc.want)
			}
			for _, ev := range evs {
				if ev.RunID != f.run.ID {
					t.Errorf("event run id %q", ev.RunID)
				}
				switch {
				case ev.Seq == 1 && ev.Kind != store.KindRunState:
					t.Errorf("event 1 kind %q, want %q", ev.Kind, store.KindRunState)
				case ev.Seq > 1 && (ev.Kind != store.KindLog || numberOf(t, ev.Data) != int(ev.Seq-2)):
					t.Errorf("event %d = %q %s, want log entry %d", ev.Seq, ev.Kind, ev.Data, ev.Seq-2)
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// session_logs

func testQueryLog(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	ref := f.ref()
	batch1 := entries(t,
		`{"n":1,"type":"notification","timestamp":"2026-01-01T10:00:00Z","notification":{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"tool_call","toolCallId":"c1"}}}}`,
		`{"n":2,"type":"notification","timestamp":"2026-01-01T10:00:01.5Z","notification":{"jsonrpc":"2.0","method":"_posthog/console","params":{}}}`,
		chunkLine,
	)
	batch2 := entries(t,
		`{"n":3,"type":"status","timestamp":"not a time"}`,
		`{"n":4,"type":"status","timestamp":"2026-01-01T10:00:02Z"}`,
		`{"n":5,"type":"notification","timestamp":"2026-01-01T11:00:03+01:00","notification":{"method":"session/update","params":{"update":{"sessionUpdate":"agent_message"}}}}`,
		`{"n":6,"type":"x","timestamp":12345}`,
		`{"n":7,"type":"injected"}`, // gets parseNow (2026-11-28) as its timestamp
	)
	// seqs: run 1, n1 2, n2 3, state 4, n3 5, n4 6, n5 7, n6 8, n7 9.
	_, err := s.AppendLog(ctx, ref, batch1, nil)
	noErr(t, err, "AppendLog")
	_, err = s.UpdateRun(ctx, ref, store.RunPatch{Status: ptr(store.StatusInProgress)}, nil)
	noErr(t, err, "UpdateRun")
	_, err = s.AppendLog(ctx, ref, batch2, nil)
	noErr(t, err, "AppendLog")

	at := func(s string) *time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return &tm
	}
	cases := []struct {
		name     string
		q        store.LogQuery
		want     []int
		matching int64
	}{
		{"no filter", store.LogQuery{Limit: 100}, []int{1, 2, 3, 4, 5, 6, 7}, 7},
		{"after before all", store.LogQuery{After: at("2025-12-31T23:59:59Z"), Limit: 100}, []int{1, 2, 4, 5, 7}, 5},
		{"after is strict", store.LogQuery{After: at("2026-01-01T10:00:01.5Z"), Limit: 100}, []int{4, 5, 7}, 3},
		{"after with offset", store.LogQuery{After: at("2026-01-01T11:00:01.5+01:00"), Limit: 100}, []int{4, 5, 7}, 3},
		{"after a microsecond earlier", store.LogQuery{After: at("2026-01-01T10:00:01.499999Z"), Limit: 100}, []int{2, 4, 5, 7}, 4},
		{"after converted timestamps", store.LogQuery{After: at("2026-01-01T10:00:02.999999Z"), Limit: 100}, []int{5, 7}, 2},
		{"after injected timestamp", store.LogQuery{After: at("2026-06-01T00:00:00Z"), Limit: 100}, []int{7}, 1},
		{"after everything", store.LogQuery{After: at("2027-01-01T00:00:00Z"), Limit: 100}, []int{}, 0},
		{"event type", store.LogQuery{EventTypes: []string{"status"}, Limit: 100}, []int{3, 4}, 2},
		{"session update types", store.LogQuery{EventTypes: []string{"tool_call", "agent_message"}, Limit: 100}, []int{1, 5}, 2},
		{"method of a session update is not its type", store.LogQuery{EventTypes: []string{"session/update"}, Limit: 100}, []int{}, 0},
		{"ephemeral entries are not stored", store.LogQuery{EventTypes: []string{store.KindChunk}, Limit: 100}, []int{}, 0},
		{"state events are not log entries", store.LogQuery{EventTypes: []string{store.KindRunState}, Limit: 100}, []int{}, 0},
		{"exclude type", store.LogQuery{ExcludeTypes: []string{"status"}, Limit: 100}, []int{1, 2, 5, 6, 7}, 5},
		{"exclude types", store.LogQuery{ExcludeTypes: []string{"status", "x", "_posthog/console"}, Limit: 100}, []int{1, 5, 7}, 3},
		{"include and exclude", store.LogQuery{EventTypes: []string{"status", "x"}, ExcludeTypes: []string{"status"}, Limit: 100}, []int{6}, 1},
		{"after_seq", store.LogQuery{AfterSeq: 5, Limit: 100}, []int{4, 5, 6, 7}, 4},
		{"after_seq skips the state event", store.LogQuery{AfterSeq: 3, Limit: 100}, []int{3, 4, 5, 6, 7}, 5},
		{"after_seq at the end", store.LogQuery{AfterSeq: 9, Limit: 100}, []int{}, 0},
		{"limit", store.LogQuery{Limit: 2}, []int{1, 2}, 7},
		{"limit and offset", store.LogQuery{Limit: 2, Offset: 2}, []int{3, 4}, 7},
		{"offset at the end", store.LogQuery{Limit: 2, Offset: 6}, []int{7}, 7},
		{"offset past the end", store.LogQuery{Limit: 100, Offset: 7}, []int{}, 7},
		{"after, exclude and limit", store.LogQuery{After: at("2025-01-01T00:00:00Z"), ExcludeTypes: []string{"tool_call"}, Limit: 2}, []int{2, 4}, 4},
		{"after_seq, types and offset", store.LogQuery{AfterSeq: 3, EventTypes: []string{"status", "agent_message"}, Limit: 1, Offset: 1}, []int{4}, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			page, err := s.QueryLog(ctx, ref, tc.q)
			noErr(t, err, "QueryLog")
			got := []int{}
			for _, e := range page.Entries {
				got = append(got, numberOf(t, e))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("entries = %v, want %v", got, tc.want)
			}
			if page.Total != 7 || page.Matching != tc.matching {
				t.Errorf("total %d matching %d, want 7 and %d", page.Total, page.Matching, tc.matching)
			}
		})
	}

	t.Run("entries are the stored JSON", func(t *testing.T) {
		page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 100})
		noErr(t, err, "QueryLog")
		stored := append(slices.Clone(batch1[:2]), batch2...)
		for i, e := range page.Entries {
			if !sameJSON(t, string(e), string(stored[i].Data)) {
				t.Errorf("entry %d = %s, want %s", i, e, stored[i].Data)
			}
		}
	})

	t.Run("timestamps far from now", func(t *testing.T) {
		// Year 3000 is strictly later than 2026; year 1000 is not (times
		// outside 1678..2262 do not fit in int64 nanoseconds).
		other := f.newRun(t)
		_, err := s.AppendLog(ctx, other, entries(t,
			`{"n":1,"type":"far","timestamp":"3000-01-01T00:00:00Z"}`,
			`{"n":2,"type":"far","timestamp":"1000-01-01T00:00:00Z"}`,
			`{"n":3,"type":"far","timestamp":"2026-06-01T00:00:00Z"}`,
		), nil)
		noErr(t, err, "AppendLog")
		page, err := s.QueryLog(ctx, other, store.LogQuery{After: at("2026-01-01T00:00:00Z"), Limit: 100})
		noErr(t, err, "QueryLog")
		got := []int{}
		for _, e := range page.Entries {
			got = append(got, numberOf(t, e))
		}
		if !slices.Equal(got, []int{1, 3}) {
			t.Errorf("entries after 2026-01-01 = %v, want [1 3]", got)
		}
	})

	t.Run("injected timestamp is the filtered timestamp", func(t *testing.T) {
		// A client that pages with after=<timestamp of the last entry it saw>
		// must not get that entry again, even when the receive time had
		// more precision than the written timestamp.
		other := f.newRun(t)
		now := time.Date(2026, 5, 5, 5, 5, 5, 123456789, time.UTC) // not on a microsecond
		e, err := store.ParseLogEntry([]byte(`{"type":"no_ts"}`), now)
		noErr(t, err, "ParseLogEntry")
		_, err = s.AppendLog(ctx, other, []store.LogEntry{e}, nil)
		noErr(t, err, "AppendLog")
		var v struct {
			Timestamp string `json:"timestamp"`
		}
		noErr(t, json.Unmarshal(e.Data, &v), "decode entry")
		page, err := s.QueryLog(ctx, other, store.LogQuery{After: at(v.Timestamp), Limit: 100})
		noErr(t, err, "QueryLog")
		if len(page.Entries) != 0 {
			t.Errorf("after=%s returned the entry stamped %s", v.Timestamp, v.Timestamp)
		}
	})
}

// ---------------------------------------------------------------------------
// logs download

func testStreamLog(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	ref := f.ref()

	t.Run("empty log", func(t *testing.T) {
		calls := 0
		noErr(t, s.StreamLog(ctx, ref, func([]byte) error { calls++; return nil }), "StreamLog")
		if calls != 0 {
			t.Errorf("StreamLog of an empty log called fn %d times", calls)
		}
	})

	// 2,500 entries cross the page size of any sane implementation; state
	// events and ephemeral entries are interleaved and must not appear.
	const total = 2500
	n := 0
	for b := range 5 {
		var lines []string
		for range total / 5 {
			lines = append(lines, logLine(n))
			n++
			if n%97 == 0 {
				lines = append(lines, chunkLine)
			}
		}
		_, err := s.AppendLog(ctx, ref, entries(t, lines...), nil)
		noErr(t, err, "AppendLog")
		if b == 2 {
			_, err = s.UpdateRun(ctx, ref, store.RunPatch{Stage: ptr(ptr("halfway"))}, nil)
			noErr(t, err, "UpdateRun")
		}
	}

	t.Run("every entry in order", func(t *testing.T) {
		var got []int
		err := s.StreamLog(ctx, ref, func(e []byte) error {
			got = append(got, numberOf(t, e))
			if !json.Valid(e) {
				t.Fatalf("streamed entry is not JSON: %s", e)
			}
			return nil
		})
		noErr(t, err, "StreamLog")
		if len(got) != total {
			t.Fatalf("streamed %d entries, want %d", len(got), total)
		}
		for i, n := range got {
			if n != i {
				t.Fatalf("entry %d is number %d, want %d", i, n, i)
			}
		}
	})

	t.Run("callback error stops the stream", func(t *testing.T) {
		stop := errors.New("client went away")
		calls := 0
		err := s.StreamLog(ctx, ref, func([]byte) error {
			calls++
			if calls == 10 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || calls != 10 {
			t.Errorf("StreamLog = %v after %d calls, want the callback's error after 10", err, calls)
		}
	})
}

// ---------------------------------------------------------------------------
// concurrency

func testConcurrency(t *testing.T, s store.Store) {
	ctx := t.Context()

	t.Run("single entries", func(t *testing.T) {
		const writers, perWriter = 16, 250
		f := newFixture(t, s)
		ref := f.ref()
		type tag struct{ G, I int }
		seqs := make([][]int64, writers) // seqs[g][i] is the seq of writer g's entry i

		// A reader follows the log while it grows: every page it reads must
		// continue exactly where the last one ended.
		done := make(chan struct{})
		readerErr := make(chan error, 1)
		go func() {
			after := int64(0)
			for {
				select {
				case <-done:
					readerErr <- nil
					return
				default:
				}
				evs, err := s.Events(ctx, f.run.ID, after, 500)
				if err != nil {
					readerErr <- err
					return
				}
				for _, ev := range evs {
					if ev.Seq != after+1 {
						readerErr <- fmt.Errorf("reader saw seq %d after %d", ev.Seq, after)
						return
					}
					after = ev.Seq
				}
				time.Sleep(time.Millisecond) // poll, leaving the CPU to the writers
			}
		}()

		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for g := range writers {
			seqs[g] = make([]int64, perWriter)
			wg.Go(func() {
				for i := range perWriter {
					line := fmt.Sprintf(`{"type":"notification","timestamp":"2026-01-01T00:00:00Z","g":%d,"i":%d}`, g, i)
					e, err := store.ParseLogEntry([]byte(line), parseNow)
					if err != nil {
						errs <- err
						return
					}
					res, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, nil)
					if err != nil {
						errs <- fmt.Errorf("writer %d append %d: %w", g, i, err)
						return
					}
					if len(res.Events) != 1 || res.Events[0].Seq == 0 {
						errs <- fmt.Errorf("writer %d append %d: events %v", g, i, seqsOf(res.Events))
						return
					}
					seqs[g][i] = res.Events[0].Seq
				}
			})
		}
		wg.Wait()
		close(done)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if err := <-readerErr; err != nil {
			t.Error(err)
		}
		if t.Failed() {
			return
		}

		evs := allEvents(t, s, f.run.ID)
		const n = writers * perWriter
		if got := seqsOf(evs); !slices.Equal(got, seqRange(1, n+1)) {
			t.Fatalf("stored %d events, seqs not 1..%d contiguous", len(got), n+1)
		}
		bySeq := map[int64]tag{}
		logs := 0
		for _, ev := range evs {
			if ev.Kind != store.KindLog {
				continue
			}
			logs++
			var tg tag
			noErr(t, json.Unmarshal(ev.Data, &tg), "decode entry")
			bySeq[ev.Seq] = tg
		}
		if logs != n {
			t.Fatalf("stored %d log entries, want %d", logs, n)
		}
		for g := range writers {
			for i := range perWriter {
				sq := seqs[g][i]
				if got := bySeq[sq]; got != (tag{g, i}) {
					t.Fatalf("seq %d holds %+v, want writer %d entry %d", sq, got, g, i)
				}
				if i > 0 && sq <= seqs[g][i-1] {
					t.Fatalf("writer %d: entry %d has seq %d, not after entry %d's %d", g, i, sq, i-1, seqs[g][i-1])
				}
			}
		}
		run, err := s.GetRun(ctx, ref)
		noErr(t, err, "GetRun")
		if run.LogCount != n || run.LastSeq != n+1 {
			t.Errorf("run log_count %d last_seq %d, want %d %d", run.LogCount, run.LastSeq, n, n+1)
		}
	})

	t.Run("state events in time order", func(t *testing.T) {
		// Concurrent PATCHes are applied one after the other; the later one
		// (higher seq) must not carry an earlier updated_at.
		const writers, perWriter = 8, 25
		f := newFixture(t, s)
		ref := f.ref()
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for g := range writers {
			wg.Go(func() {
				for i := range perWriter {
					if _, err := s.UpdateRun(ctx, ref, store.RunPatch{State: raw(fmt.Sprint(g), fmt.Sprint(i))}, nil); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		evs := allEvents(t, s, f.run.ID)
		if len(evs) != writers*perWriter+1 {
			t.Fatalf("%d events, want %d", len(evs), writers*perWriter+1)
		}
		prev := ""
		for _, ev := range evs {
			var se stateEvent
			noErr(t, json.Unmarshal(ev.Data, &se), "decode state event")
			if se.UpdatedAt < prev {
				t.Fatalf("event %d updated_at %s is before the previous event's %s", ev.Seq, se.UpdatedAt, prev)
			}
			prev = se.UpdatedAt
		}
		run, err := s.GetRun(ctx, ref)
		noErr(t, err, "GetRun")
		if got := store.FormatTime(run.UpdatedAt); got != prev {
			t.Errorf("run updated_at %s, want the last event's %s", got, prev)
		}
	})

	t.Run("batches", func(t *testing.T) {
		const writers, batches, size = 8, 6, 50
		f := newFixture(t, s)
		ref := f.ref()
		type tag struct{ G, B, I int }
		first := make([][]int64, writers) // first[g][b] is the seq of batch b's first entry
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for g := range writers {
			first[g] = make([]int64, batches)
			wg.Go(func() {
				for b := range batches {
					in := make([]store.LogEntry, 0, size)
					for i := range size {
						line := fmt.Sprintf(`{"type":"notification","timestamp":"2026-01-01T00:00:00Z","g":%d,"b":%d,"i":%d}`, g, b, i)
						e, err := store.ParseLogEntry([]byte(line), parseNow)
						if err != nil {
							errs <- err
							return
						}
						in = append(in, e)
					}
					res, err := s.AppendLog(ctx, ref, in, nil)
					if err != nil {
						errs <- fmt.Errorf("writer %d batch %d: %w", g, b, err)
						return
					}
					got := seqsOf(res.Events)
					if len(got) != size || !slices.Equal(got, seqRange(got[0], got[0]+size-1)) {
						errs <- fmt.Errorf("writer %d batch %d: seqs %v not contiguous", g, b, got)
						return
					}
					first[g][b] = got[0]
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}
		evs := allEvents(t, s, f.run.ID)
		const n = writers * batches * size
		if got := seqsOf(evs); !slices.Equal(got, seqRange(1, n+1)) {
			t.Fatalf("stored %d events, seqs not 1..%d contiguous", len(got), n+1)
		}
		for g := range writers {
			for b := range batches {
				for i := range size {
					ev := evs[first[g][b]+int64(i)-1]
					var tg tag
					noErr(t, json.Unmarshal(ev.Data, &tg), "decode entry")
					if ev.Kind != store.KindLog || tg != (tag{g, b, i}) {
						t.Fatalf("seq %d holds %s, want writer %d batch %d entry %d", ev.Seq, ev.Data, g, b, i)
					}
				}
			}
		}
	})
}
