package rest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"
)

var runKeys = []string{"id", "task", "team", "stage", "branch", "status", "environment", "log_url", "error_message",
	"output", "state", "artifacts", "created_at", "updated_at", "completed_at"}

func TestRunCreateDefaults(t *testing.T) {
	e := newEnv(t, nil)
	tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})
	task := tk["id"].(string)
	for _, body := range []any{map[string]any{}, "", map[string]any{"unknown": 1}} {
		res := e.do(req{Method: "POST", Path: e.runsPath(e.p1, task), Key: e.writeKey, Body: body})
		wantStatus(t, res, http.StatusCreated)
		run := obj(t, res)
		for _, k := range runKeys {
			if _, ok := run[k]; !ok {
				t.Errorf("run lacks %q: %s", k, res)
			}
		}
		id, _ := run["id"].(string)
		if len(id) != 36 || strings.ToLower(id) != id {
			t.Errorf("run id %q", id)
		}
		wantJSON(t, run["task"], `"`+task+`"`, "task")
		wantJSON(t, run["team"], fmt.Sprint(e.p1), "team")
		wantJSON(t, run["status"], `"not_started"`, "status")
		wantJSON(t, run["environment"], `"cloud"`, "environment")
		for _, k := range []string{"stage", "branch", "error_message", "output", "completed_at"} {
			wantJSON(t, run[k], "null", k)
		}
		wantJSON(t, run["state"], "{}", "state")
		wantJSON(t, run["artifacts"], "[]", "artifacts")
		wantTime(t, run["created_at"], "created_at")
		wantTime(t, run["updated_at"], "updated_at")
		// GET returns the same object.
		got := e.do(req{Method: "GET", Path: e.runPath(e.p1, task, id), Key: e.readKey})
		wantStatus(t, got, http.StatusOK)
		wantSameRun(t, obj(t, got), run, "GET run")
	}
}

func TestRunCreateWithFields(t *testing.T) {
	e := newEnv(t, nil)
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})["id"].(string)
	run := e.createRun(e.p1, e.writeKey, task, map[string]any{
		"stage": "build", "branch": "feature/x", "status": "in_progress", "environment": "local",
		"error_message": "none yet", "output": map[string]any{"a": 1}, "state": map[string]any{"k": []int{1, 2}},
	})
	wantJSON(t, run["stage"], `"build"`, "stage")
	wantJSON(t, run["branch"], `"feature/x"`, "branch")
	wantJSON(t, run["status"], `"in_progress"`, "status")
	wantJSON(t, run["environment"], `"local"`, "environment")
	wantJSON(t, run["error_message"], `"none yet"`, "error_message")
	wantJSON(t, run["output"], `{"a":1}`, "output")
	wantJSON(t, run["state"], `{"k":[1,2]}`, "state")
	wantJSON(t, run["completed_at"], "null", "completed_at")

	// Created directly in a terminal status: completed_at is set.
	for _, st := range []string{"completed", "failed", "cancelled"} {
		run := e.createRun(e.p1, e.writeKey, task, map[string]any{"status": st})
		wantTime(t, run["completed_at"], "completed_at of a run created "+st)
	}
	// Boundaries: stage of 100 characters and branch of 255 are accepted.
	run = e.createRun(e.p1, e.writeKey, task, map[string]any{"stage": strings.Repeat("ß", 100), "branch": strings.Repeat("b", 255)})
	if s, _ := run["stage"].(string); len([]rune(s)) != 100 {
		t.Errorf("100-char stage stored as %q", s)
	}
	// Null for the nullable strings is accepted.
	run = e.createRun(e.p1, e.writeKey, task, map[string]any{"stage": nil, "branch": nil, "error_message": nil, "output": nil})
	wantJSON(t, run["stage"], "null", "stage")
	wantJSON(t, run["output"], "null", "output")
}

func TestRunListAndGet(t *testing.T) {
	e := newEnv(t, nil)
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})["id"].(string)
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, e.createRun(e.p1, e.writeKey, task, map[string]any{"stage": fmt.Sprint(i)})["id"].(string))
	}
	other := e.createTask(e.p1, e.writeKey, map[string]any{"title": "other"})["id"].(string)
	e.createRun(e.p1, e.writeKey, other, nil)

	path := e.runsPath(e.p1, task)
	p := decodeList(t, e.do(req{Method: "GET", Path: path, Key: e.readKey}))
	if p.Count != 5 || len(p.Results) != 5 || p.Next != nil || p.Previous != nil {
		t.Fatalf("list: %+v", p)
	}
	for i, r := range p.Results {
		if r["id"] != ids[4-i] {
			t.Errorf("results[%d] = %v, want %s (newest first)", i, r["id"], ids[4-i])
		}
		for _, k := range runKeys {
			if _, ok := r[k]; !ok {
				t.Errorf("listed run lacks %q", k)
			}
		}
	}
	p = decodeList(t, e.do(req{Method: "GET", Path: path + "/?limit=2&offset=1", Key: e.readKey}))
	if p.Count != 5 || len(p.Results) != 2 || p.Results[0]["id"] != ids[3] || p.Results[1]["id"] != ids[2] {
		t.Fatalf("page: %+v", p)
	}
	wantLink(t, p.Next, e.srv.URL, path+"/", "2", "3")
	wantLink(t, p.Previous, e.srv.URL, path+"/", "2", "")

	// A task with no runs: empty list.
	empty := e.createTask(e.p1, e.writeKey, map[string]any{"title": "empty"})["id"].(string)
	p = decodeList(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, empty), Key: e.readKey}))
	if p.Count != 0 || p.Results == nil || len(p.Results) != 0 {
		t.Errorf("empty list: %+v", p)
	}
	// Unknown task: 404 "Task not found"; unknown run: 404.
	er := wantAPIError(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, randomUUID), Key: e.readKey}), http.StatusNotFound, "invalid_request", "")
	if er.Detail != "Task not found" {
		t.Errorf("detail %q", er.Detail)
	}
	wantAPIError(t, e.do(req{Method: "POST", Path: e.runsPath(e.p1, randomUUID), Key: e.writeKey, Body: map[string]any{}}), http.StatusNotFound, "invalid_request", "")
	wantAPIError(t, e.do(req{Method: "GET", Path: e.runPath(e.p1, task, randomUUID), Key: e.readKey}), http.StatusNotFound, "invalid_request", "")
}

// A run is reachable only under its own task.
func TestRunOfAnotherTask(t *testing.T) {
	e := newEnv(t, nil)
	a := e.fixture()
	b := e.fixture()
	before := len(e.events(a.run))
	for _, r := range []req{
		{Method: "GET", Path: e.runPath(e.p1, b.task, a.run)},
		{Method: "PATCH", Path: e.runPath(e.p1, b.task, a.run), Body: map[string]any{"status": "failed"}},
		{Method: "POST", Path: e.runPath(e.p1, b.task, a.run) + "/append_log", Body: map[string]any{"entries": []any{map[string]any{}}}},
		{Method: "GET", Path: e.runPath(e.p1, b.task, a.run) + "/logs"},
		{Method: "GET", Path: e.runPath(e.p1, b.task, a.run) + "/session_logs"},
		{Method: "PATCH", Path: e.runPath(e.p1, b.task, a.run) + "/set_output", Body: map[string]any{"output": map[string]any{}}},
		{Method: "POST", Path: e.runPath(e.p1, b.task, a.run) + "/artifacts", Body: map[string]any{}},
		{Method: "POST", Path: e.runPath(e.p1, b.task, a.run) + "/artifacts/presign", Body: map[string]any{}},
		{Method: "POST", Path: e.runPath(e.p1, b.task, a.run) + "/command", Body: map[string]any{}},
		{Method: "GET", Path: e.runPath(e.p1, b.task, a.run) + "/connection_token"},
		{Method: "POST", Path: e.runPath(e.p1, b.task, a.run) + "/relay_message", Body: map[string]any{}},
		{Method: "GET", Path: e.runPath(e.p1, b.task, a.run) + "/stream"},
	} {
		r.Key = e.writeKey
		er := wantAPIError(t, e.do(r), http.StatusNotFound, "invalid_request", "")
		if er.Detail == "Task not found" {
			t.Errorf("%s %s: the task exists; the run is what is missing: %q", r.Method, r.Path, er.Detail)
		}
	}
	if after := len(e.events(a.run)); after != before {
		t.Errorf("events %d -> %d", before, after)
	}
}

// The runs of a deleted task are gone with it.
func TestRunsOfDeletedTask(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	wantStatus(t, e.do(req{Method: "DELETE", Path: e.taskPath(e.p1, f.task), Key: e.writeKey}), http.StatusNoContent)
	for _, r := range []req{
		{Method: "GET", Path: e.runsPath(e.p1, f.task)},
		{Method: "POST", Path: e.runsPath(e.p1, f.task), Body: map[string]any{}},
		{Method: "GET", Path: f.path(e, "")},
		{Method: "PATCH", Path: f.path(e, ""), Body: map[string]any{"stage": "x"}},
		{Method: "POST", Path: f.path(e, "/append_log"), Body: map[string]any{"entries": []any{map[string]any{}}}},
		{Method: "GET", Path: f.path(e, "/logs")},
		{Method: "GET", Path: f.path(e, "/session_logs")},
		{Method: "PATCH", Path: f.path(e, "/set_output"), Body: map[string]any{"output": map[string]any{}}},
	} {
		r.Key = e.writeKey
		er := wantAPIError(t, e.do(r), http.StatusNotFound, "invalid_request", "")
		if er.Detail != "Task not found" {
			t.Errorf("%s %s: detail %q", r.Method, r.Path, er.Detail)
		}
	}
}

func TestRunValidation(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	before := unsigned(obj(t, e.do(req{Method: "GET", Path: f.path(e, ""), Key: e.readKey})))
	nEvents := len(e.events(f.run))
	cases := []struct {
		name string
		body any
		attr string
	}{
		{"unknown status", map[string]any{"status": "running"}, "status"},
		{"status upper case", map[string]any{"status": "COMPLETED"}, "status"},
		{"status number", map[string]any{"status": 3}, "status"},
		{"status null", map[string]any{"status": nil}, "status"},
		{"unknown environment", map[string]any{"environment": "mars"}, "environment"},
		{"environment null", map[string]any{"environment": nil}, "environment"},
		{"environment bool", map[string]any{"environment": true}, "environment"},
		{"stage too long", map[string]any{"stage": strings.Repeat("s", 101)}, "stage"},
		{"stage number", map[string]any{"stage": 1}, "stage"},
		{"branch too long", map[string]any{"branch": strings.Repeat("b", 256)}, "branch"},
		{"branch object", map[string]any{"branch": map[string]any{}}, "branch"},
		{"error_message number", map[string]any{"error_message": 5}, "error_message"},
		{"output list", map[string]any{"output": []any{1}}, "output"},
		{"output string", map[string]any{"output": "x"}, "output"},
		{"state string", map[string]any{"state": "x"}, "state"},
		{"state null", map[string]any{"state": nil}, "state"},
		{"state list", map[string]any{"state": []any{}}, "state"},
		{"state_remove_keys string", map[string]any{"state_remove_keys": "a"}, "state_remove_keys"},
		{"state_remove_keys numbers", map[string]any{"state_remove_keys": []any{1}}, "state_remove_keys"},
		{"bad JSON", `{"status": `, ""},
		{"trailing garbage", `{"status": "queued"} x`, ""},
		{"JSON list", `[]`, ""},
		{"JSON number", `42`, ""},
		{"JSON null", `null`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: c.body})
			wantAPIError(t, res, http.StatusBadRequest, "validation_error", c.attr)
			if c.name == "state_remove_keys string" || c.name == "state_remove_keys numbers" {
				return // not a create field
			}
			res = e.do(req{Method: "POST", Path: e.runsPath(e.p1, f.task), Key: e.writeKey, Body: c.body})
			wantAPIError(t, res, http.StatusBadRequest, "validation_error", c.attr)
		})
	}
	// Nothing changed, nothing was created.
	after := unsigned(obj(t, e.do(req{Method: "GET", Path: f.path(e, ""), Key: e.readKey})))
	wantJSON(t, after, string(mustJSON(t, before)), "run after invalid PATCHes")
	if n := len(e.events(f.run)); n != nEvents {
		t.Errorf("events %d -> %d", nEvents, n)
	}
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, f.task), Key: e.readKey})); p.Count != 1 {
		t.Errorf("invalid creates stored runs: count %d", p.Count)
	}
}

// "" is not one of the statuses or environments: the contract's "unknown
// enum values get 400" applies. (Today PATCH stores the empty string.)
func TestRunEmptyEnumValues(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	for _, field := range []string{"status", "environment"} {
		res := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{field: ""}})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", field)
		res = e.do(req{Method: "POST", Path: e.runsPath(e.p1, f.task), Key: e.writeKey, Body: map[string]any{field: ""}})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", field)
	}
	run := obj(t, e.do(req{Method: "GET", Path: f.path(e, ""), Key: e.readKey}))
	wantJSON(t, run["status"], `"not_started"`, "status")
	wantJSON(t, run["environment"], `"cloud"`, "environment")
}

func TestRunPatchMerge(t *testing.T) {
	e := newEnv(t, nil)
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})["id"].(string)
	run := e.createRun(e.p1, e.writeKey, task, map[string]any{
		"output": map[string]any{"a": 1, "b": 2}, "state": map[string]any{"x": 1, "y": 2, "keep": "me"}, "stage": "one", "branch": "main"})
	path := e.runPath(e.p1, task, run["id"].(string))
	patch := func(body any) map[string]any {
		t.Helper()
		res := e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: body})
		wantStatus(t, res, http.StatusOK)
		got := obj(t, res)
		// The PATCH response is what GET returns next.
		wantSameRun(t, obj(t, e.do(req{Method: "GET", Path: path, Key: e.readKey})), got, "GET after PATCH")
		return got
	}

	got := patch(map[string]any{"output": map[string]any{"b": 3, "c": map[string]any{"deep": true}}, "state": map[string]any{"y": 5, "z": nil},
		"state_remove_keys": []string{"x", "absent"}})
	wantJSON(t, got["output"], `{"a":1,"b":3,"c":{"deep":true}}`, "output merged")
	wantJSON(t, got["state"], `{"y":5,"z":null,"keep":"me"}`, "state merged")
	wantJSON(t, got["stage"], `"one"`, "stage untouched")
	wantJSON(t, got["branch"], `"main"`, "branch untouched")

	// Shallow: a nested object is replaced, not merged.
	got = patch(map[string]any{"output": map[string]any{"c": map[string]any{"other": 1}}})
	wantJSON(t, got["output"], `{"a":1,"b":3,"c":{"other":1}}`, "shallow merge")

	// Fields not in the PATCH stay as they are.
	got = patch(map[string]any{"stage": "two"})
	wantJSON(t, got["output"], `{"a":1,"b":3,"c":{"other":1}}`, "output untouched")
	wantJSON(t, got["state"], `{"y":5,"z":null,"keep":"me"}`, "state untouched")
	wantJSON(t, got["stage"], `"two"`, "stage")

	// "output": null clears; the next merge starts from nothing.
	got = patch(map[string]any{"output": nil})
	wantJSON(t, got["output"], "null", "output cleared")
	got = patch(map[string]any{"output": map[string]any{"d": 1}})
	wantJSON(t, got["output"], `{"d":1}`, "output after clear")
	// An empty output object merges nothing.
	got = patch(map[string]any{"output": map[string]any{}})
	wantJSON(t, got["output"], `{"d":1}`, "empty output merge")

	// Remove keys only; state is never null.
	got = patch(map[string]any{"state_remove_keys": []string{"y", "z", "keep"}})
	wantJSON(t, got["state"], `{}`, "state after removing every key")
	// Set and remove the same key in one PATCH: removal wins.
	got = patch(map[string]any{"state": map[string]any{"k": 1, "j": 2}, "state_remove_keys": []string{"k"}})
	wantJSON(t, got["state"], `{"j":2}`, "state set+remove")

	// Nullable strings clear with null.
	got = patch(map[string]any{"stage": nil, "branch": nil, "error_message": "boom"})
	wantJSON(t, got["stage"], "null", "stage null")
	wantJSON(t, got["branch"], "null", "branch null")
	wantJSON(t, got["error_message"], `"boom"`, "error_message")
	got = patch(map[string]any{"error_message": nil, "environment": "local"})
	wantJSON(t, got["error_message"], "null", "error_message null")
	wantJSON(t, got["environment"], `"local"`, "environment")

	// An empty PATCH is accepted and changes no field.
	got2 := patch(map[string]any{})
	for _, k := range []string{"output", "state", "stage", "branch", "status", "environment", "error_message", "completed_at"} {
		wantJSON(t, got2[k], string(mustJSON(t, got[k])), k+" after empty PATCH")
	}
	// Each PATCH stored one task_run_state event, after the create's.
	evs := e.events(run["id"].(string))
	if len(evs) != 12 {
		t.Errorf("%d events, want 12 (create + 11 PATCHes)", len(evs))
	}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) || ev.Kind != "task_run_state" {
			t.Errorf("event %d: seq %d kind %s", i, ev.Seq, ev.Kind)
		}
	}
}

func TestRunCompletedAt(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	status := func(st string) map[string]any {
		t.Helper()
		res := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{"status": st}})
		wantStatus(t, res, http.StatusOK)
		got := obj(t, res)
		wantJSON(t, got["status"], `"`+st+`"`, "status")
		return got
	}
	for _, st := range []string{"queued", "in_progress"} {
		wantJSON(t, status(st)["completed_at"], "null", "completed_at in "+st)
	}
	done := status("completed")
	c1 := wantTime(t, done["completed_at"], "completed_at")
	if c1.After(time.Now().Add(time.Second)) || c1.Before(time.Now().Add(-time.Minute)) {
		t.Errorf("completed_at %v is not now", c1)
	}
	time.Sleep(2 * time.Millisecond)
	// Between terminal statuses, and repeating one, completed_at stays.
	for _, st := range []string{"failed", "cancelled", "cancelled", "completed"} {
		got := status(st)
		if c := wantTime(t, got["completed_at"], "completed_at"); !c.Equal(c1) {
			t.Errorf("completed_at changed %v -> %v moving to %s", c1, c, st)
		}
	}
	// A PATCH that does not touch status keeps it too.
	res := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{"stage": "after"}})
	if c := wantTime(t, obj(t, res)["completed_at"], "completed_at"); !c.Equal(c1) {
		t.Errorf("completed_at changed by a stage PATCH")
	}
	// A finished run never moves back to a non-terminal status: 400 with
	// the contract's error body, and completed_at stays.
	for _, st := range []string{"in_progress", "queued", "not_started"} {
		res := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{"status": st}})
		if e := wantAPIError(t, res, http.StatusBadRequest, "validation_error", "status"); e.Code != "invalid_transition" {
			t.Errorf("code %q, want invalid_transition", e.Code)
		}
	}
	res = e.do(req{Method: "GET", Path: f.path(e, ""), Key: e.readKey})
	if got := obj(t, res); got["status"] != "completed" || !wantTime(t, got["completed_at"], "completed_at").Equal(c1) {
		t.Errorf("refused reopen changed the run: status %v completed_at %v", got["status"], got["completed_at"])
	}
	// only_if_non_terminal: a late PATCH to a finished run changes nothing.
	res = e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey,
		Body: map[string]any{"status": "in_progress", "stage": "late", "only_if_non_terminal": true}})
	wantStatus(t, res, http.StatusOK)
	if got := obj(t, res); got["status"] != "completed" || got["stage"] != "after" {
		t.Errorf("only_if_non_terminal PATCH of a finished run: status %v stage %v, want completed, after", got["status"], got["stage"])
	}
	res = e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{"only_if_non_terminal": "yes"}})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "only_if_non_terminal")
	// set_output does not touch it.
	res = e.do(req{Method: "PATCH", Path: f.path(e, "/set_output"), Key: e.writeKey, Body: map[string]any{"output": map[string]any{"r": 1}}})
	wantStatus(t, res, http.StatusOK)
	if obj(t, res)["completed_at"] == nil {
		t.Error("set_output cleared completed_at")
	}
	// The task_run_state events carry status and completed_at.
	evs := e.events(f.run)
	var last map[string]any
	if err := json.Unmarshal(evs[len(evs)-1].Data, &last); err != nil {
		t.Fatal(err)
	}
	wantJSON(t, last["type"], `"task_run_state"`, "event type")
	wantJSON(t, last["status"], `"completed"`, "event status")
	wantJSON(t, last["output"], `{"r":1}`, "event output")
	wantTime(t, last["completed_at"], "event completed_at")
}

func TestSetOutput(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	path := f.path(e, "/set_output")
	nEvents := len(e.events(f.run))
	for _, body := range []any{
		map[string]any{"output": []any{1}},
		map[string]any{"output": "x"},
		map[string]any{"output": 1},
		map[string]any{"output": true},
		map[string]any{"output": nil},
		map[string]any{"other": map[string]any{}},
		map[string]any{},
		"",
	} {
		res := e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: body})
		wantHandlerError(t, res, http.StatusBadRequest, "output must be a dictionary")
	}
	if n := len(e.events(f.run)); n != nEvents {
		t.Errorf("refused set_output stored events: %d -> %d", nEvents, n)
	}
	// Malformed JSON is a parse error in the standard shape.
	wantAPIError(t, e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: `{"output": {`}), http.StatusBadRequest, "validation_error", "")

	// Replaces (does not merge) the output; the rest of the run is kept.
	wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey,
		Body: map[string]any{"output": map[string]any{"old": 1}, "state": map[string]any{"s": 1}, "stage": "x"}}), http.StatusOK)
	res := e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: map[string]any{"output": map[string]any{"new": []int{1}}}})
	wantStatus(t, res, http.StatusOK)
	run := obj(t, res)
	wantJSON(t, run["output"], `{"new":[1]}`, "output replaced")
	wantJSON(t, run["state"], `{"s":1}`, "state kept")
	wantJSON(t, run["stage"], `"x"`, "stage kept")
	wantJSON(t, run["id"], `"`+f.run+`"`, "id")
	// An empty object is a dictionary.
	res = e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: map[string]any{"output": map[string]any{}}})
	wantStatus(t, res, http.StatusOK)
	wantJSON(t, obj(t, res)["output"], `{}`, "empty output")
	// Unknown run: 404.
	wantAPIError(t, e.do(req{Method: "PATCH", Path: e.runPath(e.p1, f.task, randomUUID) + "/set_output", Key: e.writeKey,
		Body: map[string]any{"output": map[string]any{}}}), http.StatusNotFound, "invalid_request", "")
}

func TestSetOutputJSONSchema(t *testing.T) {
	e := newEnv(t, nil)
	schema := `{"type":"object","properties":{"answer":{"type":"string"},"score":{"type":"integer","minimum":0}},"required":["answer"],"additionalProperties":false}`
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "json_schema": rawJSON(schema)})["id"].(string)
	run := e.createRun(e.p1, e.writeKey, task, nil)["id"].(string)
	path := e.runPath(e.p1, task, run) + "/set_output"
	for _, bad := range []string{`{}`, `{"answer": 1}`, `{"answer": "x", "score": -1}`, `{"answer": "x", "extra": true}`} {
		res := e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: `{"output": ` + bad + `}`})
		msg := wantHandlerError(t, res, http.StatusBadRequest, "Output validation error: ...")
		if len(msg) <= len("Output validation error: ") {
			t.Errorf("no reason in %q", msg)
		}
	}
	got := obj(t, e.do(req{Method: "GET", Path: e.runPath(e.p1, task, run), Key: e.readKey}))
	wantJSON(t, got["output"], "null", "output after refused set_output")

	res := e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: `{"output": {"answer": "42", "score": 7}}`})
	wantStatus(t, res, http.StatusOK)
	wantJSON(t, obj(t, res)["output"], `{"answer":"42","score":7}`, "valid output")

	// A non-dict is refused before the schema is consulted.
	wantHandlerError(t, e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: `{"output": [1]}`}), http.StatusBadRequest, "output must be a dictionary")

	// Clearing the task's schema lifts the check.
	wantStatus(t, e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, task), Key: e.writeKey, Body: `{"json_schema": null}`}), http.StatusOK)
	wantStatus(t, e.do(req{Method: "PATCH", Path: path, Key: e.writeKey, Body: `{"output": {"anything": 1}}`}), http.StatusOK)
}

func TestRunPatchIdempotency(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	key := map[string]string{"Idempotency-Key": "patch-1"}
	first := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: `{"state": {"n": 1}, "stage": "a"}`, Headers: key})
	wantStatus(t, first, http.StatusOK)
	n := len(e.events(f.run))
	// Something else changes the run in between.
	wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: `{"stage": "b"}`}), http.StatusOK)
	// The replay answers with the first response and stores nothing.
	replay := e.do(req{Method: "PATCH", Path: f.path(e, "/"), Key: e.writeKey, Body: `{"state": {"n": 1}, "stage": "a"}`, Headers: key})
	wantStatus(t, replay, http.StatusOK)
	sameReplay(t, replay, first)
	if got := len(e.events(f.run)); got != n+1 {
		t.Errorf("events after replay: %d, want %d", got, n+1)
	}
	cur := obj(t, e.do(req{Method: "GET", Path: f.path(e, ""), Key: e.readKey}))
	wantJSON(t, cur["stage"], `"b"`, "stage after replay")
	// Same key, another body: 400, nothing stored.
	res := e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: `{"stage": "c"}`, Headers: key})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "Idempotency-Key")
	// Same key on another endpoint of the run: also another request.
	res = e.do(req{Method: "PATCH", Path: f.path(e, "/set_output"), Key: e.writeKey, Body: `{"output": {"x": 1}}`, Headers: key})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "Idempotency-Key")
	if got := len(e.events(f.run)); got != n+1 {
		t.Errorf("events after refused reuse: %d, want %d", got, n+1)
	}
	// The same key on another run is independent.
	g := e.fixture()
	wantStatus(t, e.do(req{Method: "PATCH", Path: g.path(e, ""), Key: e.writeKey, Body: `{"stage": "c"}`, Headers: key}), http.StatusOK)
	// A key longer than 255 characters is refused.
	res = e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: `{}`, Headers: map[string]string{"Idempotency-Key": strings.Repeat("k", 256)}})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "Idempotency-Key")
}

// wantSameRun wants two answers about a run to be the same but for
// log_url: its signature expires a fixed time after each answer, so two
// answers a second apart differ in it.
func wantSameRun(t *testing.T, got, want map[string]any, what string) {
	t.Helper()
	got, want = maps.Clone(got), maps.Clone(want)
	delete(got, "log_url")
	delete(want, "log_url")
	wantJSON(t, got, string(mustJSON(t, want)), what)
}
