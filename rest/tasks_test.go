package rest

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

var taskKeys = []string{"id", "task_number", "slug", "title", "description", "origin_product", "repository",
	"json_schema", "created_by", "internal", "archived", "archived_at", "created_at", "updated_at", "latest_run"}

func TestTaskCRUD(t *testing.T) {
	e := newEnv(t, nil)
	created := e.createTask(e.p1, e.writeKey, map[string]any{"title": "Fix the bug", "description": "details", "unknown_field": 1})
	for _, k := range taskKeys {
		if _, ok := created[k]; !ok {
			t.Errorf("task lacks %q: %v", k, created)
		}
	}
	id, _ := created["id"].(string)
	if len(id) != 36 || strings.ToLower(id) != id {
		t.Errorf("id %q is not a lower-case UUID", id)
	}
	wantJSON(t, created["task_number"], "1", "task_number")
	wantJSON(t, created["slug"], `"ALP-1"`, "slug")
	wantJSON(t, created["title"], `"Fix the bug"`, "title")
	wantJSON(t, created["description"], `"details"`, "description")
	wantJSON(t, created["origin_product"], `"user_created"`, "origin_product")
	wantJSON(t, created["repository"], "null", "repository")
	wantJSON(t, created["json_schema"], "null", "json_schema")
	wantJSON(t, created["latest_run"], "null", "latest_run")
	wantTime(t, created["created_at"], "created_at")
	wantTime(t, created["updated_at"], "updated_at")

	// GET, with and without the trailing slash.
	for _, p := range []string{e.taskPath(e.p1, id), e.taskPath(e.p1, id) + "/"} {
		res := e.do(req{Method: "GET", Path: p, Key: e.readKey})
		wantStatus(t, res, http.StatusOK)
		wantJSON(t, obj(t, res), string(mustJSON(t, created)), "GET task")
	}

	// PATCH changes only what it names.
	res := e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, id), Key: e.writeKey,
		Body: map[string]any{"title": "Renamed", "repository": "PostHog/Posthog-JS", "origin_product": "slack"}})
	wantStatus(t, res, http.StatusOK)
	patched := obj(t, res)
	wantJSON(t, patched["title"], `"Renamed"`, "title")
	wantJSON(t, patched["description"], `"details"`, "description")
	wantJSON(t, patched["repository"], `"posthog/posthog-js"`, "repository")
	wantJSON(t, patched["origin_product"], `"slack"`, "origin_product")
	wantJSON(t, patched["task_number"], "1", "task_number")
	if wantTime(t, patched["updated_at"], "updated_at").Before(wantTime(t, created["updated_at"], "updated_at")) {
		t.Error("updated_at went back")
	}
	// repository null and description null clear them.
	res = e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, id) + "/", Key: e.writeKey,
		Body: map[string]any{"repository": nil, "description": nil}})
	wantStatus(t, res, http.StatusOK)
	wantJSON(t, obj(t, res)["repository"], "null", "repository")
	wantJSON(t, obj(t, res)["description"], `""`, "description")

	// List shows it.
	p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.readKey}))
	if p.Count != 1 || len(p.Results) != 1 || p.Results[0]["id"] != id {
		t.Fatalf("list: %+v", p)
	}

	// DELETE: 204 with no body, then everything about the task is 404.
	res = e.do(req{Method: "DELETE", Path: e.taskPath(e.p1, id), Key: e.writeKey})
	wantStatus(t, res, http.StatusNoContent)
	if len(res.body) != 0 {
		t.Errorf("204 with a body: %q", res.body)
	}
	er := wantAPIError(t, e.do(req{Method: "GET", Path: e.taskPath(e.p1, id), Key: e.readKey}), http.StatusNotFound, "invalid_request", "")
	if er.Code != "not_found" {
		t.Errorf("code %q", er.Code)
	}
	wantAPIError(t, e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, id), Key: e.writeKey, Body: map[string]any{"title": "x"}}),
		http.StatusNotFound, "invalid_request", "")
	wantAPIError(t, e.do(req{Method: "DELETE", Path: e.taskPath(e.p1, id), Key: e.writeKey}), http.StatusNotFound, "invalid_request", "")
	wantAPIError(t, e.do(req{Method: "POST", Path: e.taskPath(e.p1, id) + "/run", Key: e.writeKey}), http.StatusNotFound, "invalid_request", "")
	p = decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.readKey}))
	if p.Count != 0 || len(p.Results) != 0 {
		t.Errorf("deleted task still listed: %+v", p)
	}
	// Task numbers are not reused after a delete.
	next := e.createTask(e.p1, e.writeKey, map[string]any{"title": "next"})
	wantJSON(t, next["task_number"], "2", "task_number after delete")
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTaskNumbersPerProject(t *testing.T) {
	e := newEnv(t, nil)
	for i := 1; i <= 3; i++ {
		tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": fmt.Sprint("a", i)})
		wantJSON(t, tk["task_number"], fmt.Sprint(i), "p1 task_number")
		wantJSON(t, tk["slug"], fmt.Sprintf(`"ALP-%d"`, i), "p1 slug")
	}
	tk := e.createTask(e.p2, e.otherKey, map[string]any{"title": "b"})
	wantJSON(t, tk["task_number"], "1", "p2 task_number")
	wantJSON(t, tk["slug"], `"BET-1"`, "p2 slug")
	// Each project lists only its own tasks.
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p2), Key: e.otherKey})); p.Count != 1 {
		t.Errorf("p2 count %d", p.Count)
	}
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.allKey})); p.Count != 3 {
		t.Errorf("p1 count %d", p.Count)
	}
}

func TestTaskCreateValidation(t *testing.T) {
	e := newEnv(t, nil)
	long := strings.Repeat("é", 256)
	cases := []struct {
		name string
		body any
		attr string // "" for null
	}{
		{"title missing, description blank", map[string]any{"description": " \n\t "}, "title"},
		{"internal string", map[string]any{"title": "t", "internal": "yes"}, "internal"},
		{"internal null", map[string]any{"title": "t", "internal": nil}, "internal"},
		{"empty object", map[string]any{}, "title"},
		{"empty body", "", "title"},
		{"title empty", map[string]any{"title": ""}, "title"},
		{"title blank", map[string]any{"title": "   "}, "title"},
		{"title too long", map[string]any{"title": long}, "title"},
		{"title null", map[string]any{"title": nil}, "title"},
		{"title number", map[string]any{"title": 5}, "title"},
		{"title list", map[string]any{"title": []string{"a"}}, "title"},
		{"description number", map[string]any{"title": "t", "description": 1}, "description"},
		{"origin_product invalid", map[string]any{"title": "t", "origin_product": "bogus"}, "origin_product"},
		{"origin_product null", map[string]any{"title": "t", "origin_product": nil}, "origin_product"},
		{"origin_product upper", map[string]any{"title": "t", "origin_product": "SLACK"}, "origin_product"},
		{"repository no slash", map[string]any{"title": "t", "repository": "noslash"}, "repository"},
		{"repository two slashes", map[string]any{"title": "t", "repository": "a/b/c"}, "repository"},
		{"repository spaces", map[string]any{"title": "t", "repository": "my org/repo"}, "repository"},
		{"repository empty name", map[string]any{"title": "t", "repository": "org/"}, "repository"},
		{"repository number", map[string]any{"title": "t", "repository": 7}, "repository"},
		{"json_schema string", map[string]any{"title": "t", "json_schema": "object"}, "json_schema"},
		{"json_schema list", map[string]any{"title": "t", "json_schema": []any{1}}, "json_schema"},
		{"json_schema number", map[string]any{"title": "t", "json_schema": 3}, "json_schema"},
		{"json_schema bad type", map[string]any{"title": "t", "json_schema": map[string]any{"type": 5}}, "json_schema"},
		{"json_schema bad required", map[string]any{"title": "t", "json_schema": map[string]any{"required": "x"}}, "json_schema"},
		{"json_schema remote ref", map[string]any{"title": "t", "json_schema": map[string]any{"$ref": "https://example.com/s.json"}}, "json_schema"},
		{"json_schema file ref", map[string]any{"title": "t", "json_schema": map[string]any{"$ref": "file:///etc/passwd"}}, "json_schema"},
		{"bad JSON", `{"title": "x"`, ""},
		{"not JSON", "title=x", ""},
		{"JSON array", `[{"title": "x"}]`, ""},
		{"JSON string", `"x"`, ""},
		{"JSON null", `null`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := e.do(req{Method: "POST", Path: e.tasksPath(e.p1), Key: e.writeKey, Body: c.body})
			wantAPIError(t, res, http.StatusBadRequest, "validation_error", c.attr)
		})
	}
	// Nothing was created by any of them.
	if p := decodeList(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.readKey})); p.Count != 0 {
		t.Errorf("invalid creates stored %d tasks", p.Count)
	}
	// The same rules on PATCH.
	tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": "ok"})
	for _, body := range []map[string]any{
		{"title": ""}, {"title": nil}, {"title": long}, {"origin_product": "nope"}, {"repository": "x"},
		{"json_schema": "x"}, {"json_schema": map[string]any{"type": "nonsense"}},
	} {
		res := e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, tk["id"].(string)), Key: e.writeKey, Body: body})
		wantStatus(t, res, http.StatusBadRequest)
	}
	res := e.do(req{Method: "GET", Path: e.taskPath(e.p1, tk["id"].(string)), Key: e.readKey})
	wantJSON(t, obj(t, res)["title"], `"ok"`, "title after invalid PATCHes")
}

func TestTaskCreateAccepts(t *testing.T) {
	e := newEnv(t, nil)
	// 255 characters (not bytes) is the maximum.
	title := strings.Repeat("é", 255)
	tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": title})
	wantJSON(t, tk["title"], string(mustJSON(t, title)), "255-char title")

	for _, op := range []string{"user_created", "error_tracking", "eval_clusters", "slack", "support_queue", "session_summaries", "signal_report"} {
		tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "origin_product": op})
		wantJSON(t, tk["origin_product"], `"`+op+`"`, "origin_product")
	}

	// Repository: validated and lower-cased; blank means none.
	for in, want := range map[string]string{
		"PostHog/PostHog":     `"posthog/posthog"`,
		"  Org-1/My.Repo_2  ": `"org-1/my.repo_2"`,
		"a/b":                 `"a/b"`,
		"":                    "null",
	} {
		tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "repository": in})
		wantJSON(t, tk["repository"], want, "repository "+in)
	}
	tk = e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "repository": nil})
	wantJSON(t, tk["repository"], "null", "repository null")

	// json_schema: an object is stored as given; PATCH null clears it.
	schema := `{"type":"object","properties":{"answer":{"type":"string"}},"required":["answer"]}`
	tk = e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "json_schema": rawJSON(schema)})
	wantJSON(t, tk["json_schema"], schema, "json_schema")
	res := e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, tk["id"].(string)), Key: e.writeKey, Body: map[string]any{"json_schema": nil}})
	wantStatus(t, res, http.StatusOK)
	wantJSON(t, obj(t, res)["json_schema"], "null", "json_schema after null")
	tk = e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "json_schema": nil})
	wantJSON(t, tk["json_schema"], "null", "json_schema null")

	// Unknown fields and read-only fields are ignored.
	tk = e.createTask(e.p1, e.writeKey, map[string]any{"title": "t", "id": randomUUID, "task_number": 99, "whatever": true})
	if tk["id"] == randomUUID {
		t.Error("client chose the task id")
	}
	if jsonEq(t, tk["task_number"], "99") {
		t.Error("client chose the task number")
	}

	// Content types with parameters and +json are JSON.
	for _, ct := range []string{"application/json; charset=utf-8", "application/merge-patch+json", "APPLICATION/JSON"} {
		res := e.do(req{Method: "POST", Path: e.tasksPath(e.p1), Key: e.writeKey, Body: `{"title":"ct"}`, Headers: map[string]string{"Content-Type": ct}})
		wantStatus(t, res, http.StatusCreated)
	}
}

func TestTaskListPagination(t *testing.T) {
	e := newEnv(t, nil)
	var ids []string
	for i := 1; i <= 5; i++ {
		ids = append(ids, e.createTask(e.p1, e.writeKey, map[string]any{"title": fmt.Sprint("t", i)})["id"].(string))
	}
	path := e.tasksPath(e.p1)

	p := decodeList(t, e.do(req{Method: "GET", Path: path, Key: e.readKey}))
	if p.Count != 5 || len(p.Results) != 5 || p.Next != nil || p.Previous != nil {
		t.Fatalf("default page: count %d, %d results, next %v, previous %v", p.Count, len(p.Results), p.Next, p.Previous)
	}
	for i, r := range p.Results { // newest first
		if r["id"] != ids[4-i] {
			t.Errorf("results[%d] = %v, want %s", i, r["title"], ids[4-i])
		}
	}

	p = decodeList(t, e.do(req{Method: "GET", Path: path + "?limit=2", Key: e.readKey}))
	if p.Count != 5 || len(p.Results) != 2 || p.Results[0]["id"] != ids[4] || p.Results[1]["id"] != ids[3] {
		t.Fatalf("first page: %+v", p)
	}
	if p.Previous != nil {
		t.Errorf("previous on first page: %v", *p.Previous)
	}
	wantLink(t, p.Next, e.srv.URL, path, "2", "2")

	p = decodeList(t, e.do(req{Method: "GET", Path: path + "?limit=2&offset=2", Key: e.readKey}))
	if len(p.Results) != 2 || p.Results[0]["id"] != ids[2] || p.Results[1]["id"] != ids[1] {
		t.Fatalf("second page: %+v", p)
	}
	wantLink(t, p.Next, e.srv.URL, path, "2", "4")
	wantLink(t, p.Previous, e.srv.URL, path, "2", "")

	p = decodeList(t, e.do(req{Method: "GET", Path: path + "?limit=2&offset=4", Key: e.readKey}))
	if len(p.Results) != 1 || p.Results[0]["id"] != ids[0] || p.Next != nil {
		t.Fatalf("last page: %+v", p)
	}
	wantLink(t, p.Previous, e.srv.URL, path, "2", "2")

	// Following next links visits every task exactly once.
	seen := map[string]bool{}
	link := e.srv.URL + path + "?limit=2"
	for link != "" {
		u, err := url.Parse(link)
		if err != nil {
			t.Fatal(err)
		}
		p := decodeList(t, e.do(req{Method: "GET", Path: u.RequestURI(), Key: e.readKey}))
		for _, r := range p.Results {
			id := r["id"].(string)
			if seen[id] {
				t.Errorf("task %s listed twice", id)
			}
			seen[id] = true
		}
		link = ""
		if p.Next != nil {
			link = *p.Next
		}
	}
	if len(seen) != 5 {
		t.Errorf("paging saw %d tasks, want 5", len(seen))
	}

	// Beyond the end: empty results, count still right.
	p = decodeList(t, e.do(req{Method: "GET", Path: path + "?offset=50", Key: e.readKey}))
	if p.Count != 5 || len(p.Results) != 0 || p.Next != nil || p.Previous == nil {
		t.Errorf("past the end: %+v", p)
	}
	// limit above the maximum is clamped, garbage falls back to the default.
	p = decodeList(t, e.do(req{Method: "GET", Path: path + "?limit=5000", Key: e.readKey}))
	if len(p.Results) != 5 {
		t.Errorf("limit=5000: %d results", len(p.Results))
	}
	p = decodeList(t, e.do(req{Method: "GET", Path: path + "?limit=abc&offset=xyz", Key: e.readKey}))
	if len(p.Results) != 5 {
		t.Errorf("garbage limit: %d results", len(p.Results))
	}
}

// wantLink checks a next/previous link: absolute, same path, the given limit
// and offset ("" for none).
func wantLink(t testing.TB, link *string, base, path, limit, offset string) {
	t.Helper()
	if link == nil {
		t.Errorf("link is null, want limit=%s offset=%s", limit, offset)
		return
	}
	u, err := url.Parse(*link)
	if err != nil {
		t.Errorf("link %q: %v", *link, err)
		return
	}
	if !strings.HasPrefix(*link, base+path) || u.Path != path {
		t.Errorf("link %q, want %s%s?...", *link, base, path)
	}
	q := u.Query()
	if q.Get("limit") != limit || q.Get("offset") != offset {
		t.Errorf("link %q: limit=%q offset=%q, want %q %q", *link, q.Get("limit"), q.Get("offset"), limit, offset)
	}
}

func TestRunTaskEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	tk := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})
	id := tk["id"].(string)
	for i, p := range []string{e.taskPath(e.p1, id) + "/run", e.taskPath(e.p1, id) + "/run/"} {
		res := e.do(req{Method: "POST", Path: p, Key: e.writeKey})
		wantStatus(t, res, http.StatusCreated)
		body := obj(t, res)
		if body["id"] != id {
			t.Fatalf("run returned task %v, want %s", body["id"], id)
		}
		lr, ok := body["latest_run"].(map[string]any)
		if !ok {
			t.Fatalf("latest_run = %v", body["latest_run"])
		}
		wantJSON(t, lr["status"], `"queued"`, "latest_run.status")
		wantJSON(t, lr["task"], `"`+id+`"`, "latest_run.task")
		wantJSON(t, lr["completed_at"], "null", "latest_run.completed_at")
		// GET task shows the same latest run; the run list has i+1 runs.
		got := obj(t, e.do(req{Method: "GET", Path: e.taskPath(e.p1, id), Key: e.readKey}))
		if got["latest_run"].(map[string]any)["id"] != lr["id"] {
			t.Errorf("GET task latest_run %v, want %v", got["latest_run"], lr["id"])
		}
		if p := decodeList(t, e.do(req{Method: "GET", Path: e.runsPath(e.p1, id), Key: e.readKey})); p.Count != i+1 {
			t.Errorf("runs count %d, want %d", p.Count, i+1)
		}
		// The run's first event is its task_run_state.
		evs := e.events(lr["id"].(string))
		if len(evs) != 1 || evs[0].Seq != 1 || evs[0].Kind != "task_run_state" {
			t.Errorf("events of a new run: %+v", evs)
		}
	}
	// A JSON body is accepted and ignored; another content type is 415.
	wantStatus(t, e.do(req{Method: "POST", Path: e.taskPath(e.p1, id) + "/run", Key: e.writeKey, Body: map[string]any{"x": 1}}), http.StatusCreated)
	res := e.do(req{Method: "POST", Path: e.taskPath(e.p1, id) + "/run", Key: e.writeKey, Body: "x",
		Headers: map[string]string{"Content-Type": "text/plain"}})
	wantAPIError(t, res, http.StatusUnsupportedMediaType, "invalid_request", "")
	// Unknown task: 404.
	wantAPIError(t, e.do(req{Method: "POST", Path: e.taskPath(e.p1, randomUUID) + "/run", Key: e.writeKey}), http.StatusNotFound, "invalid_request", "")
}
