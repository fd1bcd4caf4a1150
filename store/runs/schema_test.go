package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"runhub/store"
)

// wantSchemaError checks that err is the fixed 400 of attr json_schema.
func wantSchemaError(t *testing.T, what string, err error, want *store.ValidationError) {
	t.Helper()
	var ve *store.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("%s: error %v, want a *store.ValidationError", what, err)
	}
	if ve.Attr != "json_schema" || ve.Detail != want.Detail {
		t.Fatalf("%s: %+v, want attr json_schema and %q", what, ve, want.Detail)
	}
}

// compileWithin compiles schema in a goroutine and fails the test if it
// has not returned within d: a compile that opens a FIFO never would.
func compileWithin(t *testing.T, d time.Duration, schema string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := CompileSchema(json.RawMessage(schema))
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("compiling %s did not return within %v", schema, d)
		return nil
	}
}

// TestCompileSchemaReadsNothingOutside: no $ref or $schema that leaves the
// document is followed, whatever its form, and the error never says what
// is behind it.
func TestCompileSchemaReadsNothingOutside(t *testing.T) {
	dir := t.TempDir()
	const secret = "TOPSECRET-7f3a"
	secretJSON := filepath.Join(dir, "secret.json")
	if err := os.WriteFile(secretJSON, []byte(`{"const": "`+secret+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Write([]byte(`{"const": "` + secret + `"}`))
	}))
	defer srv.Close()

	for _, schema := range []string{
		`{"$ref": "file://` + secretJSON + `"}`,
		`{"$id": "file://` + dir + `/", "$ref": "secret.json"}`,
		`{"$ref": "secret.json"}`,
		`{"$ref": "./secret.json#/const"}`,
		`{"properties": {"a": {"$ref": "file://` + secretJSON + `#/const"}}}`,
		`{"$schema": "file://` + secretJSON + `"}`,
		`{"$ref": "file://` + fifo + `"}`,
		`{"$ref": "` + srv.URL + `/s.json"}`,
		`{"$id": "` + srv.URL + `/", "$ref": "s.json"}`,
		`{"$defs": {"a": {"$dynamicRef": "` + srv.URL + `/s.json"}}, "$ref": "#/$defs/a"}`,
		`{"properties": {"const": {"$ref": "file://` + secretJSON + `"}}}`,
		`{"items": [{"$ref": "secret.json"}]}`,
	} {
		err := compileWithin(t, 5*time.Second, schema)
		wantSchemaError(t, schema, err, errSchemaExternal)
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("%s: error quotes the secret: %v", schema, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the compiler fetched %d URLs", n)
	}

	// References inside the document (and the built-in drafts) still work.
	for _, schema := range []string{
		`{"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s"}}}`,
		`{"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": "#/$defs/s", "$defs": {"s": {"type": "object"}}}`,
		`{"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"s": {"type": "object"}}, "$ref": "#/definitions/s"}`,
		`{"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}`,
		`{"$id": "urn:x:y", "$defs": {"s": {"$anchor": "s", "type": "string"}}, "$ref": "#s"}`,
		`{"const": {"$ref": "file://` + secretJSON + `"}, "examples": [{"$ref": "secret.json"}]}`,
	} {
		if err := compileWithin(t, 5*time.Second, schema); err != nil {
			t.Fatalf("%s: %v", schema, err)
		}
	}
}

// nested is a schema whose JSON nests depth levels deep.
func nested(depth int) string {
	s := `{}`
	for i := 1; i < depth; i++ {
		s = `{"not":` + s + `}`
	}
	return s
}

// TestCompileSchemaLimits: size, nesting and expansion are refused before
// they can cost anything, exactly above their limits.
func TestCompileSchemaLimits(t *testing.T) {
	if _, err := CompileSchema(json.RawMessage(nested(MaxSchemaDepth))); err != nil {
		t.Fatalf("depth %d: %v", MaxSchemaDepth, err)
	}
	_, err := CompileSchema(json.RawMessage(nested(MaxSchemaDepth + 1)))
	wantSchemaError(t, "depth 33", err, errSchemaTooDeep)
	// Arrays count as nesting too, and the scan stops early: a far deeper
	// document that is not even finished is refused for its depth.
	_, err = CompileSchema(json.RawMessage(`{"enum": ` + strings.Repeat("[", 60_000)))
	wantSchemaError(t, "deep arrays", err, errSchemaTooDeep)

	pad := func(n int) string { // a valid schema of exactly n bytes
		const shell = `{"description":""}`
		return `{"description":"` + strings.Repeat("x", n-len(shell)) + `"}`
	}
	if _, err := CompileSchema(json.RawMessage(pad(MaxSchemaBytes))); err != nil {
		t.Fatalf("%d bytes: %v", MaxSchemaBytes, err)
	}
	_, err = CompileSchema(json.RawMessage(pad(MaxSchemaBytes + 1)))
	wantSchemaError(t, "64 KiB + 1", err, errSchemaTooLarge)

	// Shared definitions that double at each step: 2^k subschemas to check.
	chain := func(k int) string {
		var defs []string
		for i := 0; i < k; i++ {
			defs = append(defs, fmt.Sprintf(`"d%d":{"allOf":[{"$ref":"#/$defs/d%d"},{"$ref":"#/$defs/d%d"}]}`, i, i+1, i+1))
		}
		defs = append(defs, fmt.Sprintf(`"d%d":{"type":"object"}`, k))
		return `{"$defs":{` + strings.Join(defs, ",") + `},"$ref":"#/$defs/d0"}`
	}
	if _, err := CompileSchema(json.RawMessage(chain(8))); err != nil {
		t.Fatalf("2^8 expansion: %v", err)
	}
	_, err = CompileSchema(json.RawMessage(chain(30)))
	wantSchemaError(t, "2^30 expansion", err, errSchemaExpands)

	// Recursion: one $ref back per lap (a tree of children, a linked
	// list) is linear in the output and allowed; two per lap (allOf of the
	// same recursive schema, or a recursive schema reached twice at one
	// place) checks a value of depth d 2^d times and is refused.
	for _, ok := range []string{
		`{"type":"object","properties":{"children":{"type":"array","items":{"$ref":"#"}}}}`,
		`{"$defs":{"node":{"type":"object","properties":{"value":{"type":"string"},"next":{"$ref":"#/$defs/node"}}}},"$ref":"#/$defs/node"}`,
	} {
		if _, err := CompileSchema(json.RawMessage(ok)); err != nil {
			t.Fatalf("linear recursion %s: %v", ok, err)
		}
	}
	for _, bad := range []string{
		`{"$defs":{"t":{"allOf":[{"$ref":"#/$defs/u"},{"$ref":"#/$defs/u"}]},"u":{"properties":{"a":{"$ref":"#/$defs/t"}}}},"$ref":"#/$defs/t"}`,
		`{"type":"object","properties":{"a":{"$ref":"#"}},"patternProperties":{"^a$":{"$ref":"#"}}}`,
		`{"anyOf":[{"properties":{"x":{"$ref":"#"}}},{"properties":{"x":{"$ref":"#"}}}]}`,
	} {
		_, err := CompileSchema(json.RawMessage(bad))
		wantSchemaError(t, "branching recursion "+bad, err, errSchemaExpands)
	}

	for _, bad := range []string{`{"type": 5}`, `{"required": "x"}`, `{"type": "nonsense"}`} {
		_, err := CompileSchema(json.RawMessage(bad))
		wantSchemaError(t, bad, err, errSchemaInvalid)
	}
	_, err = CompileSchema(json.RawMessage(`{"a":`))
	wantSchemaError(t, "truncated", err, errSchemaNotJSON)
}

// TestSchemaCompiledOnce: many set_output calls compile the task's schema
// once; a changed schema compiles again.
func TestSchemaCompiledOnce(t *testing.T) {
	f := newFixture(t, json.RawMessage(`{"type":"object","required":["pr_url"]}`))
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		out := map[string]json.RawMessage{"pr_url": json.RawMessage(fmt.Sprintf(`"https://x/%d"`, i))}
		if _, err := f.svc.SetOutput(ctx, f.ref, out, nil); err != nil {
			t.Fatalf("set_output %d: %v", i, err)
		}
	}
	if _, err := f.svc.SetOutput(ctx, f.ref, map[string]json.RawMessage{"x": json.RawMessage("1")}, nil); !errors.Is(err, ErrOutputInvalid) {
		t.Fatalf("output without pr_url: %v, want ErrOutputInvalid", err)
	}
	if n := f.svc.schemas.compiles.Load(); n != 1 {
		t.Fatalf("%d compilations for 21 set_output calls, want 1", n)
	}
	schema := json.RawMessage(`{"type":"object","required":["answer"]}`)
	if _, err := f.st.UpdateTask(ctx, f.ref.ProjectID, f.ref.TaskID, store.TaskPatch{JSONSchema: &schema}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.SetOutput(ctx, f.ref, map[string]json.RawMessage{"pr_url": json.RawMessage(`"x"`)}, nil); !errors.Is(err, ErrOutputInvalid) {
		t.Fatalf("after the schema changed: %v, want ErrOutputInvalid", err)
	}
	if n := f.svc.schemas.compiles.Load(); n != 2 {
		t.Fatalf("%d compilations after a schema change, want 2", n)
	}
}

// TestSchemaCacheBounded: the cache keeps at most maxCachedSchemas, the
// least recently used leaving first.
func TestSchemaCacheBounded(t *testing.T) {
	var c schemaCache
	schema := func(i int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"minLength":%d}`, i)) }
	for i := 0; i <= maxCachedSchemas; i++ {
		if _, err := c.get(schema(i)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			continue
		}
		c.get(schema(1)) // keep 1 in use
	}
	if n := c.order.Len(); n != maxCachedSchemas || len(c.byHash) != maxCachedSchemas {
		t.Fatalf("cache holds %d (%d), want %d", n, len(c.byHash), maxCachedSchemas)
	}
	before := c.compiles.Load()
	c.get(schema(1))
	if c.compiles.Load() != before {
		t.Fatal("the schema in use was evicted")
	}
	c.get(schema(0))
	if c.compiles.Load() != before+1 {
		t.Fatal("the least recently used schema was not evicted")
	}
}
