package rest

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestBodiesMustBeUTF8: every endpoint that takes a JSON body answers 400
// validation_error, on the field that holds them, to bytes that are not
// UTF-8, and stores nothing; \u escapes of lone surrogates are valid JSON
// text, accepted and served back as valid UTF-8.
func TestBodiesMustBeUTF8(t *testing.T) {
	ae := newArtifactEnv(t)
	e := ae.env
	f := e.fixture()
	run := f.path(e, "")
	for _, c := range []struct {
		method, path, body, attr string
		headers                  map[string]string
	}{
		{"POST", run + "/append_log", "{\"entries\": [{\"type\": \"x\", \"text\": \"caf\xc3\"}]}", "entries", nil},
		{"POST", run + "/append_log", "{\"entries\": [{\"type\": \"x\"}, {\"t\xffpe\": \"x\"}]}", "entries", nil},
		{"POST", run + "/append_log", "{\"entries\": [{\"text\": \"\xed\xa0\x80\"}]}", "entries", nil},
		{"POST", run + "/append_log", "{\"entries\": [{\"type\": \"x\"}], \"\xff\": 1}", "", nil},
		{"POST", run + "/append_log", `{"entries": [{"type": "x"}]}`, "Idempotency-Key", map[string]string{"Idempotency-Key": "k\xff"}},
		{"POST", e.tasksPath(e.p1) + "/", "{\"title\": \"t\xff\"}", "title", nil},
		{"PATCH", e.taskPath(e.p1, f.task), "{\"description\": \"\xc0\xaf\"}", "description", nil},
		{"PATCH", e.taskPath(e.p1, f.task), "{\"json_schema\": {\"description\": \"\xff\"}}", "json_schema", nil},
		{"PATCH", run, "{\"state\": {\"k\": \"\xfe\"}}", "state", nil},
		{"PATCH", run, "{\"stage\": \"st\xffage\"}", "stage", nil},
		{"PATCH", run, "{\"output\": {\"a\": [\"\xff\"]}}", "output", nil},
		{"PATCH", run + "/set_output", "{\"output\": {\"a\": \"\xff\"}}", "output", nil},
		{"POST", run + "/artifacts", "{\"artifacts\": [{\"name\": \"pl\xffan.md\", \"type\": \"plan\", \"content\": \"x\"}]}", "artifacts", nil},
		{"POST", run + "/artifacts", "{\"artifacts\": [{\"name\": \"a\", \"type\": \"plan\", \"content\": \"x\", \"content_type\": \"text/\xff\"}]}", "artifacts", nil},
		{"POST", run + "/relay_message", "{\"text\": \"hi \xf0\x9f\"}", "text", nil},
	} {
		res := e.do(req{Method: c.method, Path: c.path, Key: e.writeKey, Body: c.body, Headers: c.headers})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", c.attr)
	}
	got := obj(t, e.do(req{Method: "GET", Path: run, Key: e.readKey}))
	if got["stage"] != nil || got["output"] != nil || len(got["state"].(map[string]any)) != 0 || len(got["artifacts"].([]any)) != 0 {
		t.Fatalf("refused changes were stored: %v", got)
	}
	if logs := e.do(req{Method: "GET", Path: run + "/logs", Key: e.readKey}); len(logs.body) != 0 {
		t.Fatalf("refused entries were stored: %q", logs.body)
	}

	// Lone surrogates written as \u escapes: valid JSON made of ASCII.
	e.appendLog(f, rawJSON(`{"type": "x", "text": "\ud800 and \udfff"}`))
	logs := e.do(req{Method: "GET", Path: run + "/logs", Key: e.readKey})
	if !utf8.Valid(logs.body) || !strings.Contains(string(logs.body), `"\ud800 and \udfff"`) {
		t.Fatalf("/logs %q: want valid UTF-8 with the escapes as sent", logs.body)
	}
}
