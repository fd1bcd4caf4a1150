package rest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"runhub/store"
)

// A task created without a title (PostHog's desktop app sends only the
// prompt) is titled by its description's first line, cut at a word, and
// records the key that created it.
func TestTaskTitleDerived(t *testing.T) {
	e := newEnv(t, nil)
	long := strings.Repeat("refactor ", 12) // 108 characters
	for _, tc := range []struct{ desc, want string }{
		{"Fix the login bug\nIt fails when the password has a space.", "Fix the login bug"},
		{"\n\n   Add dark mode  \n", "Add dark mode"},
		{long + "\nmore", strings.TrimSpace(long[:80])},
	} {
		task := e.createTask(e.p1, e.writeKey, map[string]any{"description": tc.desc})
		wantJSON(t, task["title"], string(mustJSON(t, tc.want)), "derived title")
		wantJSON(t, task["description"], string(mustJSON(t, tc.desc)), "description")
	}
	// A title sent is kept as it is.
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "Mine", "description": "Other"})
	wantJSON(t, task["title"], `"Mine"`, "title")

	// created_by is the creating key, and differs between keys.
	a := e.createTask(e.p1, e.writeKey, map[string]any{"title": "a"})["created_by"]
	b := e.createTask(e.p1, e.allKey, map[string]any{"title": "b"})["created_by"]
	ca, cb := a.(map[string]any), b.(map[string]any)
	if ca["id"] == nil || cb["id"] == nil || ca["id"] == cb["id"] {
		t.Errorf("created_by of two keys: %v and %v", a, b)
	}
}

// taskTitles lists a task list's titles in order.
func taskTitles(t *testing.T, p listPage) []string {
	t.Helper()
	var out []string
	for _, r := range p.Results {
		out = append(out, r["title"].(string))
	}
	return out
}

// The task list's filters and orderings through the API: each selects
// and counts what PostHog's filters would, alone and together.
func TestTaskListFilters(t *testing.T) {
	e := newEnv(t, nil)
	t1 := e.createTask(e.p1, e.writeKey, map[string]any{"title": "Fix login bug", "repository": "Acme/Web"})
	t2 := e.createTask(e.p1, e.allKey, map[string]any{"title": "Add dark mode", "description": "Settings page",
		"origin_product": "error_tracking", "internal": true, "repository": "acme/api"})
	t3 := e.createTask(e.p1, e.writeKey, map[string]any{"title": "Refactor LOGIN form"})
	e.createTask(e.p2, e.otherKey, map[string]any{"title": "login elsewhere", "repository": "acme/web"})
	e.createRun(e.p1, e.writeKey, t1["id"].(string), map[string]any{"status": "in_progress"})
	e.createRun(e.p1, e.writeKey, t2["id"].(string), map[string]any{"status": "completed"})
	res := e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, t3["id"].(string)), Key: e.writeKey, Body: map[string]any{"archived": true}})
	wantStatus(t, res, http.StatusOK)
	archived := obj(t, res)
	wantJSON(t, archived["archived"], "true", "archived")
	wantTime(t, archived["archived_at"], "archived_at")
	writer := fmt.Sprint(t1["created_by"].(map[string]any)["id"])

	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"Refactor LOGIN form", "Add dark mode", "Fix login bug"}},
		{"repository=ACME/web", []string{"Fix login bug"}},
		{"repository=", []string{"Refactor LOGIN form", "Add dark mode", "Fix login bug"}},
		{"origin_product=error_tracking", []string{"Add dark mode"}},
		{"created_by=" + writer, []string{"Refactor LOGIN form", "Fix login bug"}},
		{"status=in_progress", []string{"Fix login bug"}},
		{"status=completed", []string{"Add dark mode"}},
		{"search=login", []string{"Refactor LOGIN form", "Fix login bug"}},
		{"search=settings", []string{"Add dark mode"}},
		{"archived=true", []string{"Refactor LOGIN form"}},
		{"archived=false", []string{"Add dark mode", "Fix login bug"}},
		{"internal=true", []string{"Add dark mode"}},
		{"internal=0", []string{"Refactor LOGIN form", "Fix login bug"}},
		{"created_by=" + writer + "&archived=false&search=LOGIN", []string{"Fix login bug"}},
		{"ordering=title", []string{"Add dark mode", "Fix login bug", "Refactor LOGIN form"}},
		{"ordering=-task_number", []string{"Refactor LOGIN form", "Add dark mode", "Fix login bug"}},
		{"ordering=created_at", []string{"Fix login bug", "Add dark mode", "Refactor LOGIN form"}},
		// PostHog's desktop app asks this; 500 is clamped to the maximum.
		{"limit=500&repository=acme/web&created_by=" + writer + "&origin_product=user_created&internal=false", []string{"Fix login bug"}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/?" + tc.query, Key: e.readKey}))
			if got := taskTitles(t, p); !slices.Equal(got, tc.want) || p.Count != len(tc.want) {
				t.Errorf("?%s = %v count %d, want %v", tc.query, got, p.Count, tc.want)
			}
		})
	}
	// next keeps the filters.
	p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/?search=login&limit=1", Key: e.readKey}))
	if p.Next == nil || p.Count != 2 {
		t.Fatalf("search=login&limit=1: count %d next %v", p.Count, p.Next)
	}
	u, err := url.Parse(*p.Next)
	if err != nil {
		t.Fatal(err)
	}
	if u.Query().Get("search") != "login" {
		t.Errorf("next %s dropped the filter", *p.Next)
	}
	p = decodeList(t, e.do(req{Method: "GET", Path: u.RequestURI(), Key: e.readKey}))
	if got := taskTitles(t, p); !slices.Equal(got, []string{"Fix login bug"}) {
		t.Errorf("second page %v", got)
	}
}

// A filter value of the wrong form is 400 naming the parameter, never an
// empty page that would look like "no tasks".
func TestTaskListFilterValidation(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct{ query, attr string }{
		{"ordering=seq", "ordering"},
		{"ordering=-created_at,title", "ordering"},
		{"ordering=-", "ordering"},
		{"ordering=description", "ordering"},
		{"status=done", "status"},
		{"origin_product=bogus", "origin_product"},
		{"created_by=me", "created_by"},
		{"created_by=99999999999999999999", "created_by"},
		{"archived=yes", "archived"},
		{"internal=maybe", "internal"},
		{"search=" + strings.Repeat("x", maxTaskSearchLen+1), "search"},
		{"search=%FF", "search"},
		{"repository=%FF", "repository"},
	} {
		t.Run(tc.query[:min(len(tc.query), 40)], func(t *testing.T) {
			res := e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/?" + tc.query, Key: e.readKey})
			wantAPIError(t, res, http.StatusBadRequest, "validation_error", tc.attr)
		})
	}
	// At the limits: accepted.
	for _, q := range []string{"search=" + strings.Repeat("é", maxTaskSearchLen), "ordering=-updated_at", "archived=False", "status=not_started"} {
		decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/?" + q, Key: e.readKey}))
	}
}

// PATCH archived: archiving stamps archived_at, archiving again keeps it,
// unarchiving clears it; a non-boolean is 400.
func TestTaskArchive(t *testing.T) {
	e := newEnv(t, nil)
	id := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})["id"].(string)
	patch := func(body any) map[string]any {
		t.Helper()
		res := e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, id), Key: e.writeKey, Body: body})
		wantStatus(t, res, http.StatusOK)
		return obj(t, res)
	}
	first := patch(map[string]any{"archived": true})
	wantJSON(t, first["archived"], "true", "archived")
	at := wantTime(t, first["archived_at"], "archived_at")
	again := patch(map[string]any{"archived": true, "title": "renamed"})
	if !wantTime(t, again["archived_at"], "archived_at").Equal(at) {
		t.Errorf("archiving again moved archived_at: %v → %v", first["archived_at"], again["archived_at"])
	}
	un := patch(map[string]any{"archived": false})
	wantJSON(t, un["archived"], "false", "archived")
	wantJSON(t, un["archived_at"], "null", "archived_at")
	wantJSON(t, patch(map[string]any{"internal": true})["internal"], "true", "internal")
	for _, bad := range []any{map[string]any{"archived": "true"}, map[string]any{"archived": nil}, map[string]any{"archived": 1}} {
		wantAPIError(t, e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, id), Key: e.writeKey, Body: bad}),
			http.StatusBadRequest, "validation_error", "archived")
	}
	// archived is not set at creation: a new task is never archived.
	wantJSON(t, e.createTask(e.p1, e.writeKey, map[string]any{"title": "n", "archived": true})["archived"], "false", "archived on create")
}

// POST tasks/summaries/ {ids}: the live tasks of the project among the
// ids, with their latest run's status; others are left out; more than
// maxTaskSummaryIDs ids or a malformed one is 400.
func TestTaskSummaries(t *testing.T) {
	e := newEnv(t, nil)
	a := e.createTask(e.p1, e.writeKey, map[string]any{"title": "a"})["id"].(string)
	b := e.createTask(e.p1, e.writeKey, map[string]any{"title": "b"})["id"].(string)
	gone := e.createTask(e.p1, e.writeKey, map[string]any{"title": "gone"})["id"].(string)
	wantStatus(t, e.do(req{Method: "DELETE", Path: e.taskPath(e.p1, gone), Key: e.writeKey}), http.StatusNoContent)
	other := e.createTask(e.p2, e.otherKey, map[string]any{"title": "other"})["id"].(string)
	run := e.createRun(e.p1, e.writeKey, a, map[string]any{"status": "in_progress"})
	path := e.tasksPath(e.p1) + "/summaries/"

	res := e.do(req{Method: "POST", Path: path, Key: e.readKey, Body: map[string]any{
		"ids": []string{a, strings.ToUpper(b), gone, other, "00000000-0000-4000-8000-000000000000"}}})
	wantStatus(t, res, http.StatusOK)
	var got []map[string]any
	if err := json.Unmarshal(res.body, &got); err != nil {
		t.Fatalf("summaries: %v: %s", err, res)
	}
	if len(got) != 2 || got[0]["id"] != b || got[1]["id"] != a {
		t.Fatalf("summaries = %s, want b then a", res.body)
	}
	wantJSON(t, got[0]["latest_run"], "null", "latest_run of b")
	lr := got[1]["latest_run"].(map[string]any)
	if lr["id"] != run["id"] || lr["status"] != "in_progress" {
		t.Errorf("latest_run of a = %v", lr)
	}
	for _, k := range []string{"state", "output", "artifacts"} {
		if _, ok := lr[k]; ok {
			t.Errorf("summary's latest_run carries %q", k)
		}
	}
	// No ids: an empty list.
	res = e.do(req{Method: "POST", Path: path, Key: e.readKey, Body: map[string]any{"ids": []string{}}})
	wantStatus(t, res, http.StatusOK)
	if strings.TrimSpace(string(res.body)) != "[]" {
		t.Errorf("no ids: %s", res.body)
	}
	// The limit, exactly: accepted; one more: 400.
	ids := make([]string, maxTaskSummaryIDs+1)
	for i := range ids {
		ids[i] = a
	}
	wantStatus(t, e.do(req{Method: "POST", Path: path, Key: e.readKey, Body: map[string]any{"ids": ids[:maxTaskSummaryIDs]}}), http.StatusOK)
	for _, bad := range []any{
		map[string]any{"ids": ids},
		map[string]any{},
		map[string]any{"ids": "a"},
		map[string]any{"ids": nil},
		map[string]any{"ids": []any{1}},
		map[string]any{"ids": []string{"not-a-uuid"}},
		map[string]any{"ids": []string{strings.ReplaceAll(a, "-", "")}},
	} {
		res := e.do(req{Method: "POST", Path: path, Key: e.readKey, Body: bad})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", "ids")
	}
	wantAPIError(t, e.do(req{Method: "POST", Path: path, Key: e.readKey, Body: `{"ids": [`}), http.StatusBadRequest, "validation_error", "")
}

// Lists page as PostHog's tasks pagination does: 50 by default, at most
// 100 however many are asked, for tasks and runs alike.
func TestListPageDefaults(t *testing.T) {
	e := newEnv(t, nil)
	ctx := t.Context()
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "runs"})["id"].(string)
	for range maxPageLimit + 1 {
		if _, err := e.st.CreateTask(ctx, e.p1, store.NewTask{Title: "t", OriginProduct: "user_created"}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.st.CreateRun(ctx, e.p1, task, store.NewRun{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, path := range []string{e.tasksPath(e.p1), e.runsPath(e.p1, task)} {
		for _, tc := range []struct {
			query string
			want  int
		}{{"", 50}, {"limit=500", 100}, {"limit=100", 100}, {"limit=abc", 50}, {"limit=7", 7}} {
			p := decodeList(t, e.do(req{Method: "GET", Path: path + "/?" + tc.query, Key: e.readKey}))
			if len(p.Results) != tc.want || p.Next == nil {
				t.Errorf("%s?%s: %d results (next %v), want %d", path, tc.query, len(p.Results), p.Next, tc.want)
			}
			if p.Next != nil && !strings.Contains(*p.Next, fmt.Sprintf("limit=%d", tc.want)) {
				t.Errorf("%s?%s: next %s does not carry limit=%d", path, tc.query, *p.Next, tc.want)
			}
		}
	}
}
