package store_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"runhub/store"
)

var (
	tCreated = time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	tUpdated = time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)
	tDone    = time.Date(2026, 1, 2, 3, 4, 7, 500000000, time.UTC)
	tNow     = time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)
)

func sp(v string) *string { return &v }

func raws(kv ...string) map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = json.RawMessage(kv[i+1])
	}
	return m
}

// goldenRuns are runs whose task_run_state event and idempotency snapshot
// were recorded from the code that lived in store/sqlite before the rules
// moved here (runStateEvent and json.Marshal(&run)). The stored log keeps
// events byte for byte and old idempotency rows hold those snapshots, so
// the bytes must not change.
var goldenRuns = []struct {
	run   store.Run
	state string
	snap  string
}{
	{
		run: store.Run{ID: "r1", TaskID: "t1", ProjectID: 1, Status: "not_started", Environment: "cloud", State: raws(),
			Artifacts: []json.RawMessage{}, CreatedAt: tCreated, UpdatedAt: tCreated, LastSeq: 1},
		state: `{"type":"task_run_state","run_id":"r1","task_id":"t1","status":"not_started","stage":null,"output":null,"branch":null,"error_message":null,"updated_at":"2026-01-02T03:04:05.123456Z","completed_at":null}`,
		snap:  `{"id":"r1","task":"t1","team":1,"stage":null,"branch":null,"status":"not_started","environment":"cloud","error_message":null,"output":null,"state":{},"artifacts":[],"created_at":"2026-01-02T03:04:05.123456Z","updated_at":"2026-01-02T03:04:05.123456Z","completed_at":null,"last_seq":1,"log_count":0}`,
	},
	{
		run: store.Run{ID: "r2", TaskID: "t2", ProjectID: 7, Stage: sp("build"), Branch: sp("main"), Status: "completed", Environment: "local",
			ErrorMessage: sp(`x <&> "y"`), Output: raws("b", `2`, "a", `{"z":1,"y":[1,2]}`), State: raws("k", `"v"`),
			Artifacts: []json.RawMessage{json.RawMessage(`{"id":"a"}`)}, CreatedAt: tCreated, UpdatedAt: tUpdated, CompletedAt: &tDone,
			LastSeq: 42, LogCount: 40},
		state: `{"type":"task_run_state","run_id":"r2","task_id":"t2","status":"completed","stage":"build","output":{"a":{"z":1,"y":[1,2]},"b":2},"branch":"main","error_message":"x \u003c\u0026\u003e \"y\"","updated_at":"2026-01-02T03:04:06.000000Z","completed_at":"2026-01-02T03:04:07.500000Z"}`,
		snap:  `{"id":"r2","task":"t2","team":7,"stage":"build","branch":"main","status":"completed","environment":"local","error_message":"x \u003c\u0026\u003e \"y\"","output":{"a":{"z":1,"y":[1,2]},"b":2},"state":{"k":"v"},"artifacts":[{"id":"a"}],"created_at":"2026-01-02T03:04:05.123456Z","updated_at":"2026-01-02T03:04:06Z","completed_at":"2026-01-02T03:04:07.5Z","last_seq":42,"log_count":40}`,
	},
	{
		run: store.Run{ID: "r3", TaskID: "t3", ProjectID: 2, Status: "in_progress", Environment: "cloud", Output: raws(), State: raws(),
			Artifacts: []json.RawMessage{}, CreatedAt: tCreated, UpdatedAt: tUpdated, LastSeq: 3, LogCount: 1},
		state: `{"type":"task_run_state","run_id":"r3","task_id":"t3","status":"in_progress","stage":null,"output":{},"branch":null,"error_message":null,"updated_at":"2026-01-02T03:04:06.000000Z","completed_at":null}`,
		snap:  `{"id":"r3","task":"t3","team":2,"stage":null,"branch":null,"status":"in_progress","environment":"cloud","error_message":null,"output":{},"state":{},"artifacts":[],"created_at":"2026-01-02T03:04:05.123456Z","updated_at":"2026-01-02T03:04:06Z","completed_at":null,"last_seq":3,"log_count":1}`,
	},
}

func TestRunStateDataGolden(t *testing.T) {
	for _, g := range goldenRuns {
		if got := string(store.RunStateData(&g.run)); got != g.state {
			t.Errorf("run %s: task_run_state\n%s\nwant\n%s", g.run.ID, got, g.state)
		}
	}
}

func TestArtifactDataGolden(t *testing.T) {
	got, err := store.ArtifactData(json.RawMessage(`{"name":"a.txt", "id":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"artifact":{"name":"a.txt","id":"x"},"type":"artifact"}`; string(got) != want {
		t.Errorf("artifact event %s, want %s", got, want)
	}
	if _, err := store.ArtifactData(json.RawMessage(`{"name":`)); err == nil {
		t.Error("an entry that is not JSON made an artifact event")
	}
}

// TestRunSnapshot checks that the snapshot encoding is byte for byte the
// one recorded before (store.Run marshalled), and that a recorded snapshot
// of either age decodes to the run it was taken of.
func TestRunSnapshot(t *testing.T) {
	for _, g := range goldenRuns {
		b, err := store.EncodeRunSnapshot(&g.run)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != g.snap {
			t.Errorf("run %s: snapshot\n%s\nwant\n%s", g.run.ID, b, g.snap)
		}
		got, err := store.DecodeRunSnapshot([]byte(g.snap))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*got, g.run) {
			t.Errorf("run %s: decoded\n%+v\nwant\n%+v", g.run.ID, *got, g.run)
		}
	}
	for _, bad := range []string{``, `[]`, `{"id":1}`, `{"created_at":"yesterday"}`} {
		if _, err := store.DecodeRunSnapshot([]byte(bad)); err == nil {
			t.Errorf("snapshot %q decoded", bad)
		}
	}
}

func FuzzDecodeRunSnapshot(f *testing.F) {
	for _, g := range goldenRuns {
		f.Add([]byte(g.snap))
	}
	f.Add([]byte(`{"output":{"a":null},"completed_at":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := store.DecodeRunSnapshot(b)
		if err != nil {
			return
		}
		// What decodes must encode and decode to the same run.
		again, err := store.EncodeRunSnapshot(r)
		if err != nil {
			t.Fatalf("re-encode %q: %v", b, err)
		}
		r2, err := store.DecodeRunSnapshot(again)
		if err != nil {
			t.Fatalf("decode own encoding %s: %v", again, err)
		}
		if !reflect.DeepEqual(jsonOf(t, r), jsonOf(t, r2)) {
			t.Fatalf("round trip changed the run: %s vs %s", jsonOf(t, r), jsonOf(t, r2))
		}
	})
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNewRunFrom(t *testing.T) {
	cases := []struct {
		name      string
		nr        store.NewRun
		status    string
		env       string
		completed bool
	}{
		{"defaults", store.NewRun{}, store.StatusNotStarted, store.EnvCloud, false},
		{"given", store.NewRun{Status: store.StatusInProgress, Environment: store.EnvLocal}, store.StatusInProgress, store.EnvLocal, false},
		{"created terminal", store.NewRun{Status: store.StatusFailed}, store.StatusFailed, store.EnvCloud, true},
		{"created completed", store.NewRun{Status: store.StatusCompleted, State: raws("a", "1")}, store.StatusCompleted, store.EnvCloud, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, evs := store.NewRunFrom("rid", 3, "tid", c.nr, tNow)
			if r.ID != "rid" || r.ProjectID != 3 || r.TaskID != "tid" || r.Status != c.status || r.Environment != c.env {
				t.Errorf("run %+v", r)
			}
			if r.State == nil || r.Artifacts == nil || len(r.Artifacts) != 0 {
				t.Errorf("state %v artifacts %v, want non-nil, no artifacts", r.State, r.Artifacts)
			}
			if !r.CreatedAt.Equal(tNow) || !r.UpdatedAt.Equal(tNow) {
				t.Errorf("created %v updated %v, want %v", r.CreatedAt, r.UpdatedAt, tNow)
			}
			if (r.CompletedAt != nil) != c.completed || (c.completed && !r.CompletedAt.Equal(tNow)) {
				t.Errorf("completed_at %v, want set: %v", r.CompletedAt, c.completed)
			}
			if r.LastSeq != 1 || r.LogCount != 0 || len(evs) != 1 {
				t.Fatalf("last_seq %d log_count %d, %d events; want 1, 0, 1", r.LastSeq, r.LogCount, len(evs))
			}
			want := store.Event{RunID: "rid", Seq: 1, Kind: store.KindRunState, Type: store.KindRunState, Data: store.RunStateData(r)}
			if !reflect.DeepEqual(evs[0], want) {
				t.Errorf("event %+v, want %+v", evs[0], want)
			}
		})
	}
}

func TestApplyPatch(t *testing.T) {
	nullStr := (*string)(nil)
	base := func() store.Run {
		return store.Run{ID: "r", TaskID: "t", Status: store.StatusInProgress, Environment: store.EnvCloud, Stage: sp("s"),
			Output: raws("a", "1", "b", "2"), State: raws("x", "1", "y", "2"), Artifacts: []json.RawMessage{},
			CreatedAt: tCreated, UpdatedAt: tCreated, LastSeq: 5, LogCount: 3}
	}
	cases := []struct {
		name  string
		from  func(r *store.Run)
		patch store.RunPatch
		check func(t *testing.T, r *store.Run)
	}{
		{"empty patch only stamps", nil, store.RunPatch{}, func(t *testing.T, r *store.Run) {
			want := base()
			want.UpdatedAt, want.LastSeq = tNow, 6
			if !reflect.DeepEqual(*r, want) {
				t.Errorf("run %+v, want %+v", *r, want)
			}
		}},
		{"into terminal sets completed_at", nil, store.RunPatch{Status: sp(store.StatusCompleted)}, func(t *testing.T, r *store.Run) {
			if r.Status != store.StatusCompleted || r.CompletedAt == nil || !r.CompletedAt.Equal(tNow) {
				t.Errorf("status %s completed_at %v", r.Status, r.CompletedAt)
			}
		}},
		{"terminal to terminal keeps the first completed_at", func(r *store.Run) { r.Status, r.CompletedAt = store.StatusFailed, &tDone },
			store.RunPatch{Status: sp(store.StatusCancelled)}, func(t *testing.T, r *store.Run) {
				if r.Status != store.StatusCancelled || r.CompletedAt == nil || !r.CompletedAt.Equal(tDone) {
					t.Errorf("status %s completed_at %v, want cancelled at %v", r.Status, r.CompletedAt, tDone)
				}
			}},
		{"non-terminal to non-terminal keeps completed_at null", nil,
			store.RunPatch{Status: sp(store.StatusQueued)}, func(t *testing.T, r *store.Run) {
				if r.Status != store.StatusQueued || r.CompletedAt != nil {
					t.Errorf("status %s completed_at %v", r.Status, r.CompletedAt)
				}
			}},
		{"required status met applies", func(r *store.Run) { r.Status = store.StatusNotStarted },
			store.RunPatch{Status: sp(store.StatusQueued), RequireStatus: store.StatusNotStarted}, func(t *testing.T, r *store.Run) {
				if r.Status != store.StatusQueued {
					t.Errorf("status %s, want queued", r.Status)
				}
			}},
		{"only_if_non_terminal on a live run applies", nil,
			store.RunPatch{Status: sp(store.StatusFailed), OnlyIfNonTerminal: true}, func(t *testing.T, r *store.Run) {
				if r.Status != store.StatusFailed || r.CompletedAt == nil {
					t.Errorf("status %s completed_at %v", r.Status, r.CompletedAt)
				}
			}},
		{"no status leaves completed_at", func(r *store.Run) { r.Status, r.CompletedAt = store.StatusCompleted, &tDone },
			store.RunPatch{Stage: &nullStr}, func(t *testing.T, r *store.Run) {
				if r.CompletedAt == nil || !r.CompletedAt.Equal(tDone) || r.Stage != nil {
					t.Errorf("completed_at %v stage %v", r.CompletedAt, r.Stage)
				}
			}},
		{"scalar fields replaced, null clears", nil,
			store.RunPatch{Stage: &nullStr, Branch: func() **string { v := sp("dev"); return &v }(),
				ErrorMessage: func() **string { v := sp("boom"); return &v }(), Environment: sp(store.EnvLocal)},
			func(t *testing.T, r *store.Run) {
				if r.Stage != nil || r.Branch == nil || *r.Branch != "dev" || r.ErrorMessage == nil || *r.ErrorMessage != "boom" || r.Environment != store.EnvLocal {
					t.Errorf("run %+v", *r)
				}
			}},
		{"output merged shallowly", nil, store.RunPatch{Output: raws("b", `{"n":1}`, "c", "3")}, func(t *testing.T, r *store.Run) {
			if !reflect.DeepEqual(r.Output, raws("a", "1", "b", `{"n":1}`, "c", "3")) {
				t.Errorf("output %s", jsonOf(t, r.Output))
			}
		}},
		{"output null clears", nil, store.RunPatch{ClearOutput: true}, func(t *testing.T, r *store.Run) {
			if r.Output != nil {
				t.Errorf("output %s", jsonOf(t, r.Output))
			}
		}},
		{"output cleared then merged", nil, store.RunPatch{ClearOutput: true, Output: raws("z", "9")}, func(t *testing.T, r *store.Run) {
			if !reflect.DeepEqual(r.Output, raws("z", "9")) {
				t.Errorf("output %s", jsonOf(t, r.Output))
			}
		}},
		{"output merged into null creates it", func(r *store.Run) { r.Output = nil }, store.RunPatch{Output: raws("z", "9")}, func(t *testing.T, r *store.Run) {
			if !reflect.DeepEqual(r.Output, raws("z", "9")) {
				t.Errorf("output %s", jsonOf(t, r.Output))
			}
		}},
		{"state merged, then keys removed", nil, store.RunPatch{State: raws("y", "20", "w", "0"), StateRemoveKeys: []string{"x", "w", "absent"}},
			func(t *testing.T, r *store.Run) {
				if !reflect.DeepEqual(r.State, raws("y", "20")) {
					t.Errorf("state %s", jsonOf(t, r.State))
				}
			}},
		{"state merged into a nil state", func(r *store.Run) { r.State = nil }, store.RunPatch{State: raws("k", "1")}, func(t *testing.T, r *store.Run) {
			if !reflect.DeepEqual(r.State, raws("k", "1")) {
				t.Errorf("state %s", jsonOf(t, r.State))
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := base()
			if c.from != nil {
				c.from(&r)
			}
			evs, err := store.ApplyPatch(&r, c.patch, tNow)
			if err != nil {
				t.Fatalf("ApplyPatch: %v", err)
			}
			if !r.UpdatedAt.Equal(tNow) || r.LastSeq != 6 || r.LogCount != 3 {
				t.Errorf("updated_at %v last_seq %d log_count %d, want %v 6 3", r.UpdatedAt, r.LastSeq, r.LogCount, tNow)
			}
			want := []store.Event{{RunID: "r", Seq: 6, Kind: store.KindRunState, Type: store.KindRunState, Data: store.RunStateData(&r)}}
			if !reflect.DeepEqual(evs, want) {
				t.Errorf("events %+v, want %+v", evs, want)
			}
			c.check(t, &r)
		})
	}
}

// TestApplyPatchFinishedRun: a finished run never moves back to a
// non-terminal status, only_if_non_terminal leaves it as it is, and
// RequireStatus refuses a run in another status; each refusal leaves the
// run untouched and numbers no event.
func TestApplyPatchFinishedRun(t *testing.T) {
	finished := func(status string) store.Run {
		return store.Run{ID: "r", TaskID: "t", Status: status, Environment: store.EnvCloud, Stage: sp("s"),
			State: raws("x", "1"), Artifacts: []json.RawMessage{}, CreatedAt: tCreated, UpdatedAt: tCreated,
			CompletedAt: &tDone, LastSeq: 5, LogCount: 3}
	}
	for _, from := range []string{store.StatusCompleted, store.StatusFailed, store.StatusCancelled} {
		for _, to := range []string{store.StatusNotStarted, store.StatusQueued, store.StatusInProgress} {
			t.Run(from+"->"+to, func(t *testing.T) {
				r := finished(from)
				evs, err := store.ApplyPatch(&r, store.RunPatch{Status: sp(to), Stage: func() **string { v := sp("new"); return &v }()}, tNow)
				var ve *store.ValidationError
				if !errors.As(err, &ve) || ve.Attr != "status" || ve.Code != "invalid_transition" {
					t.Fatalf("err %v, want a status invalid_transition ValidationError", err)
				}
				if evs != nil || !reflect.DeepEqual(r, finished(from)) {
					t.Errorf("refused PATCH changed the run: %+v, events %v", r, evs)
				}
			})
		}
		t.Run(from+" only_if_non_terminal", func(t *testing.T) {
			r := finished(from)
			evs, err := store.ApplyPatch(&r, store.RunPatch{Status: sp(store.StatusInProgress), State: raws("x", "2"),
				OnlyIfNonTerminal: true}, tNow)
			if err != nil || evs != nil || !reflect.DeepEqual(r, finished(from)) {
				t.Errorf("err %v events %v run %+v: want nothing changed", err, evs, r)
			}
		})
	}
	r := finished(store.StatusCompleted)
	r.Status, r.CompletedAt = store.StatusInProgress, nil
	want := r
	evs, err := store.ApplyPatch(&r, store.RunPatch{Status: sp(store.StatusQueued), RequireStatus: store.StatusNotStarted}, tNow)
	var ve *store.ValidationError
	if !errors.As(err, &ve) || ve.Code != "invalid_state" || evs != nil || !reflect.DeepEqual(r, want) {
		t.Errorf("RequireStatus not met: err %v events %v run %+v", err, evs, r)
	}
}

func TestReplaceOutput(t *testing.T) {
	for _, out := range []map[string]json.RawMessage{raws("n", "1"), raws(), nil} {
		r := store.Run{ID: "r", Output: raws("old", "1", "n", "0"), State: raws(), UpdatedAt: tCreated, LastSeq: 2}
		evs := store.ReplaceOutput(&r, out, tNow)
		if !reflect.DeepEqual(r.Output, out) || !r.UpdatedAt.Equal(tNow) || r.LastSeq != 3 {
			t.Errorf("output %s updated %v last_seq %d, want %s %v 3", jsonOf(t, r.Output), r.UpdatedAt, r.LastSeq, jsonOf(t, out), tNow)
		}
		if len(evs) != 1 || evs[0].Seq != 3 || evs[0].Kind != store.KindRunState || string(evs[0].Data) != string(store.RunStateData(&r)) {
			t.Errorf("events %+v", evs)
		}
	}
}

func TestAppendEntries(t *testing.T) {
	ts := tDone
	entries := []store.LogEntry{
		{Data: []byte(`{"type":"a"}`), Type: "a", Time: &ts},
		{Data: []byte(`{"type":"agent_message_chunk"}`), Type: store.KindChunk},
		{Data: []byte(`{"type":"b"}`), Type: "b"},
	}
	r := store.Run{ID: "r", UpdatedAt: tCreated, LastSeq: 7, LogCount: 4}
	ap := store.AppendEntries(&r, entries)
	wantEvents := []store.Event{
		{RunID: "r", Seq: 8, Kind: store.KindLog, Type: "a", Data: entries[0].Data},
		{RunID: "r", Kind: store.KindChunk, Type: store.KindChunk, Data: entries[1].Data},
		{RunID: "r", Seq: 9, Kind: store.KindLog, Type: "b", Data: entries[2].Data},
	}
	if !reflect.DeepEqual(ap.Events, wantEvents) {
		t.Errorf("events %+v, want %+v", ap.Events, wantEvents)
	}
	if !reflect.DeepEqual(ap.Stored, []store.Event{wantEvents[0], wantEvents[2]}) || len(ap.Times) != 2 || ap.Times[0] != &ts || ap.Times[1] != nil {
		t.Errorf("stored %+v times %v", ap.Stored, ap.Times)
	}
	if r.LastSeq != 9 || r.LogCount != 6 || !r.UpdatedAt.Equal(tCreated) {
		t.Errorf("last_seq %d log_count %d updated %v, want 9 6 unchanged", r.LastSeq, r.LogCount, r.UpdatedAt)
	}

	only := store.AppendEntries(&r, entries[1:2])
	if len(only.Events) != 1 || len(only.Stored) != 0 || r.LastSeq != 9 || r.LogCount != 6 {
		t.Errorf("chunk only: %+v, last_seq %d log_count %d", only, r.LastSeq, r.LogCount)
	}
}

func TestAddArtifactEntries(t *testing.T) {
	r := store.Run{ID: "r", Artifacts: []json.RawMessage{json.RawMessage(`{"id":"a"}`)}, UpdatedAt: tCreated, LastSeq: 1}
	add := []json.RawMessage{json.RawMessage(`{"id":"b"}`), json.RawMessage(`{"id":"c"}`)}
	evs, err := store.AddArtifactEntries(&r, add, tNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Seq != 2 || evs[1].Seq != 3 || evs[1].Kind != store.KindArtifact || evs[1].Type != store.ArtifactEventType ||
		string(evs[1].Data) != `{"artifact":{"id":"c"},"type":"artifact"}` {
		t.Errorf("events %+v", evs)
	}
	if len(r.Artifacts) != 3 || r.LastSeq != 3 || !r.UpdatedAt.Equal(tNow) {
		t.Errorf("artifacts %s last_seq %d updated %v", r.Artifacts, r.LastSeq, r.UpdatedAt)
	}

	before := r.LastSeq
	if _, err := store.AddArtifactEntries(&r, []json.RawMessage{json.RawMessage(`{"id":"d"}`), json.RawMessage(`{`)}, tDone); err == nil {
		t.Error("an entry that is not JSON was added")
	}
	if len(r.Artifacts) != 3 || r.LastSeq != before || !r.UpdatedAt.Equal(tNow) {
		t.Errorf("a refused add changed the run: artifacts %s last_seq %d", r.Artifacts, r.LastSeq)
	}
}

func TestIdempotencyCutoff(t *testing.T) {
	if got, want := store.IdempotencyCutoff(tNow), tNow.Add(-48*time.Hour); !got.Equal(want) {
		t.Errorf("cutoff %v, want %v", got, want)
	}
}

// TestAddArtifactEntriesUniqueIDs: an entry whose id is already in the
// manifest, or repeats an earlier entry's, is left out (no event, no seq);
// when nothing is left the run is unchanged.
func TestAddArtifactEntriesUniqueIDs(t *testing.T) {
	r := store.Run{ID: "r", Artifacts: []json.RawMessage{json.RawMessage(`{"id":"a"}`)}, UpdatedAt: tCreated, LastSeq: 1}
	add := []json.RawMessage{json.RawMessage(`{"id":"a","name":"again"}`), json.RawMessage(`{"id":"b"}`), json.RawMessage(`{"id":"b"}`)}
	evs, err := store.AddArtifactEntries(&r, add, tNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Seq != 2 || len(r.Artifacts) != 2 || string(r.Artifacts[1]) != `{"id":"b"}` || r.LastSeq != 2 {
		t.Errorf("events %+v, artifacts %s, last_seq %d", evs, r.Artifacts, r.LastSeq)
	}
	evs, err = store.AddArtifactEntries(&r, []json.RawMessage{json.RawMessage(`{"id":"b"}`)}, tDone)
	if err != nil || len(evs) != 0 || len(r.Artifacts) != 2 || r.LastSeq != 2 || !r.UpdatedAt.Equal(tNow) {
		t.Errorf("all known: events %+v err %v, artifacts %s, last_seq %d, updated %v", evs, err, r.Artifacts, r.LastSeq, r.UpdatedAt)
	}
}
