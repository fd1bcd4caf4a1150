package rest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJSONSchemaReadsNoFile: a task's json_schema cannot make the server
// read a file, by absolute file:// reference, by a reference relative to a
// file:// $id, or by a plain relative reference; each is 400 on attr
// json_schema, on create and on PATCH, and no response ever carries the
// file's secret or its first byte.
func TestJSONSchemaReadsNoFile(t *testing.T) {
	e := newEnv(t, nil)
	dir := t.TempDir()
	const secret = "TOPSECRET-93b1"
	if err := os.WriteFile(filepath.Join(dir, "secret.json"), []byte(`{"type": "string", "const": "`+secret+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Not JSON: an old compiler error quoted its first byte.
	if err := os.WriteFile(filepath.Join(dir, "env"), []byte("QSECRET=1"), 0o600); err != nil {
		t.Fatal(err)
	}
	abs := "file://" + filepath.Join(dir, "secret.json")
	schemas := []string{
		`{"type": "object", "properties": {"a": {"$ref": "` + abs + `"}}}`,
		`{"$ref": "` + abs + `"}`,
		`{"$id": "file://` + dir + `/", "$ref": "secret.json"}`,
		`{"$id": "file://` + dir + `/", "properties": {"a": {"$ref": "env"}}}`,
		`{"$ref": "secret.json"}`,
		`{"$schema": "` + abs + `"}`,
	}
	var bodies []string
	check := func(res *resp) {
		t.Helper()
		e := wantAPIError(t, res, http.StatusBadRequest, "validation_error", "json_schema")
		if !strings.HasPrefix(e.Detail, "json_schema may only refer to itself") {
			t.Errorf("detail %q is not the fixed text", e.Detail)
		}
		bodies = append(bodies, string(res.body))
	}
	task := e.createTask(e.p1, e.writeKey, map[string]any{"title": "t"})["id"].(string)
	run := e.createRun(e.p1, e.writeKey, task, nil)["id"].(string)
	for _, s := range schemas {
		check(e.do(req{Method: "POST", Path: e.tasksPath(e.p1) + "/", Key: e.writeKey,
			Body: `{"title": "t", "json_schema": ` + s + `}`}))
		check(e.do(req{Method: "PATCH", Path: e.taskPath(e.p1, task) + "/", Key: e.writeKey,
			Body: `{"json_schema": ` + s + `}`}))
		// Whatever happened above, an output that the file's schema would
		// refuse must not bring the secret back either.
		res := e.do(req{Method: "PATCH", Path: e.runPath(e.p1, task, run) + "/set_output", Key: e.writeKey,
			Body: `{"output": {"a": 1}}`})
		bodies = append(bodies, string(res.body))
	}
	for _, b := range bodies {
		if strings.Contains(b, secret) || strings.Contains(b, "QSECRET") || strings.Contains(b, "'Q'") {
			t.Fatalf("a response carries the file's content: %s", b)
		}
	}
}

// TestJSONSchemaLimits: a json_schema above 64 KiB, nested deeper than 32
// levels, or expanding exponentially through its $refs is 400 on attr
// json_schema before it is compiled; exactly at the limits it is stored.
func TestJSONSchemaLimits(t *testing.T) {
	e := newEnv(t, nil)
	nested := func(depth int) string {
		s := `{}`
		for i := 1; i < depth; i++ {
			s = `{"not":` + s + `}`
		}
		return s
	}
	sized := func(n int) string {
		const shell = `{"description":""}`
		return `{"description":"` + strings.Repeat("x", n-len(shell)) + `"}`
	}
	var defs []string
	for i := 0; i < 40; i++ {
		defs = append(defs, fmt.Sprintf(`"d%d":{"allOf":[{"$ref":"#/$defs/d%d"},{"$ref":"#/$defs/d%d"}]}`, i, i+1, i+1))
	}
	bomb := `{"$defs":{` + strings.Join(defs, ",") + `,"d40":{}},"$ref":"#/$defs/d0"}`
	for _, c := range []struct {
		name, schema string
		status       int
	}{
		{"depth 32", nested(32), http.StatusCreated},
		{"depth 33", nested(33), http.StatusBadRequest},
		{"64 KiB", sized(64 << 10), http.StatusCreated},
		{"64 KiB + 1", sized(64<<10 + 1), http.StatusBadRequest},
		{"2^40 expansion", bomb, http.StatusBadRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := e.do(req{Method: "POST", Path: e.tasksPath(e.p1) + "/", Key: e.writeKey,
				Body: `{"title": "t", "json_schema": ` + c.schema + `}`})
			if c.status == http.StatusBadRequest {
				wantAPIError(t, res, c.status, "validation_error", "json_schema")
			} else {
				wantStatus(t, res, c.status)
			}
		})
	}
}
