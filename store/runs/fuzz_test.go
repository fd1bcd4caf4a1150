package runs

import (
	"encoding/json"
	"errors"
	"testing"

	"runhub/store"
)

// FuzzCompileSchema: whatever a task's json_schema holds, compiling it
// returns (no panic, no external read: the loader refuses every URL), and a
// refusal is always the fixed 400 of attr json_schema; what is accepted is
// within the size cap and refers only to itself.
func FuzzCompileSchema(f *testing.F) {
	for _, s := range []string{
		`{"type":"object","required":["pr_url"],"properties":{"pr_url":{"type":"string"}}}`,
		`{"$ref":"#/$defs/a","$defs":{"a":{"type":"string"}}}`,
		`{"type":"object","properties":{"children":{"type":"array","items":{"$ref":"#"}}}}`,
		`{"$ref":"file:///etc/passwd"}`,
		`{"$ref":"secret.json"}`,
		`{"$schema":"http://example.com/s","type":"object"}`,
		`{"anyOf":[{"properties":{"x":{"$ref":"#"}}},{"properties":{"x":{"$ref":"#"}}}]}`,
		`{"enum":[{"$ref":"http://x"}]}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
		`{"type":"str` + "\xff" + `"}`,
		`true`, `{}`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sch, err := CompileSchema(json.RawMessage(b))
		if err != nil {
			var ve *store.ValidationError
			if !errors.As(err, &ve) || ve.Attr != "json_schema" {
				t.Fatalf("refusal %v is not a json_schema validation error", err)
			}
			return
		}
		if sch == nil || len(b) > MaxSchemaBytes {
			t.Fatalf("accepted %d bytes, schema %v", len(b), sch)
		}
		var doc any
		if json.Unmarshal(b, &doc) == nil && !refsInside(doc) {
			t.Fatalf("accepted a schema with an outside reference: %q", b)
		}
	})
}
