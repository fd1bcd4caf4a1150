package runs

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"runhub/store"
)

var fuzzSeeds = []string{
	``,
	`{}`,
	`null`,
	`[]`,
	`{"entries": []}`,
	`{"entries": [{"type": "notification", "timestamp": "2026-11-28T21:04:05.123456Z", "notification": {"jsonrpc": "2.0", "method": "session/update", "params": {"update": {"sessionUpdate": "tool_call"}}}}]}`,
	`{"entries": [{}, 1, "x", null, [], {"a": {"b": [1, 2]}}]}`,
	`{"entries": {"a": 1}}`,
	`{"status": "completed", "output": {"a": 1}, "state": {"x": null}, "state_remove_keys": ["x"], "stage": null}`,
	`{"output": null, "state": null}`,
	`{"status": 1, "branch": {}, "environment": "mars"}`,
	"{\"entries\": [{\"timestamp\": \"\xff\xfe\"}]}",
	`{"a":`,
	"{\"entries\": [{\"type\": \"x\", \"text\": \"caf\xc3\"}]}",
	"{\"title\": \"t\xed\xa0\x80\", \"text\": \"\xff\", \"state\": {\"k\": \"\xc0\xaf\"}}",
	"{\"\xff\": 1}",
	`{"entries": [{"type": "x", "text": "\ud800"}], "text": "\udc00", "title": "\ud83d"}`,
	`{"description": "Fix the login bug\nwhen the password has spaces", "internal": true}`,
	`{"description": "  \n  ", "archived": true, "internal": "yes"}`,
}

// wantUTF8 is the fuzz invariant on accepted bodies: whatever a decoder
// accepts was valid UTF-8, so nothing it passes on can store or send
// bytes a browser refuses.
func wantUTF8(t *testing.T, body []byte, decoded ...string) {
	t.Helper()
	if !utf8.Valid(body) {
		t.Fatalf("accepted body %q, which is not UTF-8", body)
	}
	for _, s := range decoded {
		if !utf8.ValidString(s) {
			t.Fatalf("body %q: decoded %q is not UTF-8", body, s)
		}
	}
}

// wantBadRequest is the fuzz invariant on decoder errors: a client error
// (a *store.ValidationError, answered 400 by REST and -32602 to an agent),
// never anything that would turn into a 5xx.
func wantBadRequest(t *testing.T, body []byte, err error) {
	t.Helper()
	var ve *store.ValidationError
	if !errors.As(err, &ve) || ve.Code == "" || ve.Detail == "" {
		t.Fatalf("body %q: error %T %v, want a *store.ValidationError with a code and a detail", body, err, err)
	}
}

func FuzzDecodeAppendLog(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 11, 28, 21, 4, 5, 123456000, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		entries, err := DecodeAppendLog(body)
		if err != nil {
			wantBadRequest(t, body, err)
			return
		}
		wantUTF8(t, body)
		for i, raw := range entries {
			e, err := store.ParseLogEntry(raw, now)
			if err != nil {
				if !errors.Is(err, store.ErrEntryNotObject) {
					t.Fatalf("entry %d %q: unexpected error type %T %v", i, raw, err, err)
				}
				continue
			}
			wantUTF8(t, body, string(e.Data))
			// A parsed entry is one compact JSON object with a timestamp.
			if len(e.Data) < 2 || e.Data[0] != '{' || e.Data[len(e.Data)-1] != '}' {
				t.Fatalf("entry %d %q: stored data %q is not an object", i, raw, e.Data)
			}
			for _, c := range e.Data {
				if c == '\n' || c == '\r' {
					t.Fatalf("entry %d: stored data %q is not one line (JSONL)", i, e.Data)
				}
			}
			if utf8.Valid(raw) && !json.Valid(e.Data) {
				t.Fatalf("entry %d %q: stored data %q is not valid JSON", i, raw, e.Data)
			}
		}
	})
}

func FuzzDecodeRunPatch(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := DecodeRunPatch(body)
		if err != nil {
			wantBadRequest(t, body, err)
			return
		}
		wantUTF8(t, body)
		for _, m := range []map[string]json.RawMessage{p.Output, p.State} {
			for k, v := range m {
				wantUTF8(t, body, k, string(v))
			}
		}
		// "output": null clears; an object merges; never both.
		if p.ClearOutput && p.Output != nil {
			t.Fatalf("body %q: ClearOutput with an output", body)
		}
	})
}

// FuzzDecodeTask exercises the task create/PATCH decoder (json_schema is
// compiled here too): never a panic, errors are 400s.
func FuzzDecodeTask(f *testing.F) {
	for _, s := range append(fuzzSeeds,
		`{"title": "Fix", "repository": "Org/Repo", "origin_product": "slack", "json_schema": {"type": "object", "required": ["pr_url"]}}`,
		`{"title": "", "json_schema": {"$ref": "file:///etc/passwd"}}`,
		`{"title": "x", "json_schema": {"$ref": "https://example.com/s.json"}}`,
		`{"title": "x", "description": null, "repository": null, "json_schema": true}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		nt, err := DecodeNewTask(body)
		if err != nil {
			wantBadRequest(t, body, err)
			return
		}
		wantUTF8(t, body, nt.Title, nt.Description, nt.OriginProduct, string(nt.JSONSchema))
		if strings.TrimSpace(nt.Title) == "" || utf8.RuneCountInString(nt.Title) > MaxTitleLen {
			t.Fatalf("body %q: accepted title %q (blank or too long)", body, nt.Title)
		}
		if nt.Repository != nil {
			wantUTF8(t, body, *nt.Repository)
		}
	})
}

// FuzzDecodeCommand: the command body decoder never panics; it accepts
// only CommandMethods, user_message only with a non-empty content or a
// non-empty list of at most MaxMessageArtifactIDs artifact ids (and a
// boolean steer, if any), and
// params only as an object; every error is a 400 of the contract's shape.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range append(fuzzSeeds,
		`{"jsonrpc":"2.0","id":1,"method":"user_message","params":{"content":"hi"}}`,
		`{"method":"cancel","params":null,"id":null}`,
		`{"method":"close","id":{"a":1}}`,
		`{"method":"user_message","params":{"content":""}}`,
		`{"jsonrpc":"1.0","method":"cancel"}`,
		`{"method":"user_message","params":{"content":"now","steer":true}}`,
		`{"method":"user_message","params":{"content":"now","steer":"yes"}}`,
		`{"method":"permission_response","params":{"requestId":"p1","optionId":"allow"}}`,
		`{"method":"user_message","params":{"artifact_ids":["a1"]}}`,
		`{"method":"user_message","params":{"content":null,"artifact_ids":["a1","a2"],"steer":false}}`,
		`{"method":"user_message","params":{"content":"","artifact_ids":[]}}`,
		`{"method":"user_message","params":{"content":3,"artifact_ids":[1]}}`,
		`{"method":"user_message","params":{"content":"x","artifact_ids":"a1"}}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		method, params, _, err := DecodeCommand(b)
		if err != nil {
			wantBadRequest(t, b, err)
			return
		}
		wantUTF8(t, b, method, string(params))
		if !CommandMethods[method] {
			t.Fatalf("accepted method %q", method)
		}
		if len(params) > 0 && jsonKind(params) != "dict" {
			t.Fatalf("accepted params %s", params)
		}
		if method == "user_message" {
			var p struct {
				Content     *string
				ArtifactIDs []string `json:"artifact_ids"`
			}
			if json.Unmarshal(params, &p) != nil || (p.Content == nil || *p.Content == "") && len(p.ArtifactIDs) == 0 {
				t.Fatalf("accepted user_message without content or artifact ids: %s", params)
			}
			if len(p.ArtifactIDs) > MaxMessageArtifactIDs {
				t.Fatalf("accepted %d artifact ids", len(p.ArtifactIDs))
			}
			var st struct{ Steer json.RawMessage }
			if json.Unmarshal(params, &st) == nil && st.Steer != nil && jsonKind(st.Steer) != "bool" && jsonKind(st.Steer) != "null" {
				t.Fatalf("accepted a steer that is not a boolean: %s", params)
			}
		}
	})
}

// FuzzDecodeArtifacts: the artifacts body decoder never panics and either
// returns items or a 400; decoded items then pass through the service's
// validation (names, types, encodings, sizes) without panicking, and the
// stored name of any accepted item is a plain base name.
func FuzzDecodeArtifacts(f *testing.F) {
	for _, s := range append(fuzzSeeds,
		`{"artifacts":[{"name":"plan.md","type":"plan","content":"# x"}]}`,
		`{"artifacts":[{"name":"../../etc/passwd","type":"artifact","content":"AAEC","content_encoding":"base64","content_type":"image/png","source":"agent"}]}`,
		`{"artifacts":[{"name":"a","type":"plan","content":"%%%","content_encoding":"base64"}]}`,
		`{"artifacts":[{"name":1,"type":"plan","content":"x"}]}`,
		`{"artifacts":[null]}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		items, err := DecodeArtifacts(b)
		if err != nil {
			wantBadRequest(t, b, err)
			return
		}
		wantUTF8(t, b)
		for _, it := range items {
			wantUTF8(t, b, it.Name, it.Type, it.Content, it.ContentEncoding, it.ContentType)
			if it.Source != nil {
				wantUTF8(t, b, *it.Source)
			}
			name := SafeName(it.Name)
			if name == "" || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." || len(name) > 255 {
				t.Fatalf("SafeName(%q) = %q", it.Name, name)
			}
		}
	})
}

// FuzzDecodeRelay: the relay body decoder never panics; it accepts only a
// string text of at most 10,000 characters.
func FuzzDecodeRelay(f *testing.F) {
	for _, s := range append(fuzzSeeds, `{"text":"hi"}`, `{"text":""}`, `{"text":null}`, `{"text":["x"]}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		text, err := DecodeRelay(b)
		if err != nil {
			wantBadRequest(t, b, err)
			return
		}
		wantUTF8(t, b, text)
		if utf8.RuneCountInString(text) > MaxRelayText {
			t.Fatalf("accepted %d characters", utf8.RuneCountInString(text))
		}
	})
}

// FuzzSplitEntries: whenever the append_log fast path reads a body, the
// general decoder reads it too, to the same entries byte for byte; and the
// fast path reads the usual bodies.
func FuzzSplitEntries(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		`{"entries":[]}`, ` { "entries" : [ {"a":1} , {"b":[1,{"c":"]}\""}]} , null, 1, -2.5e3, "x\\"", true, [] ] } `,
		`{"entries":[{"type":"x"}]}`, "{\"entries\":[{\"s\":\"\u2028 \\u00e9 ✓\"}]}", `{"entries":[{}],"x":1}`,
		`{"x":1,"entries":[{}]}`, `{"Entries":[{}]}`, `{"entr\u0069es":[{}]}`, `{"entries":{}}`, `{"entries":null}`,
		`{"entries":[{}]}x`, `{"entries":[{}]`, "{\"entries\":[{\"a\":\"\xff\"}]}", "\f{\"entries\":[{}]}", `[]`, ``,
		`{"entries":[{"a":"\\"},{"b":"\\\\"}]}`, `{"entries":[{"a":"}]"} ]}`, `{"entries":[{"a":"\""},{"b":"}\"]"}]}`,
		"{\"entries\":[1 , true\t,null\n]}", `{"entries":["\"", "\\"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := splitEntries(body)
		if !ok {
			return
		}
		var b AppendLogBody
		if err := DecodeAppendLogInto(body, &b); err != nil {
			t.Fatalf("body %q: fast path read %d entries, the general decoder refused it: %v", body, len(fast), err)
		}
		if len(fast) != len(b.Entries) || (fast == nil) != (b.Entries == nil) {
			t.Fatalf("body %q: fast path %q, general decoder %q", body, fast, b.Entries)
		}
		for i := range fast {
			if !bytes.Equal(fast[i], b.Entries[i]) {
				t.Fatalf("body %q: entry %d: fast path %q, general decoder %q", body, i, fast[i], b.Entries[i])
			}
		}
	})
}

// TestSplitEntriesUsual: the bodies agents send take the fast path.
func TestSplitEntriesUsual(t *testing.T) {
	for _, body := range []string{`{"entries":[{"type":"x"}]}`, "{\n  \"entries\": [\n    {\"a\": 1},\n    {\"b\": 2}\n  ]\n}\n"} {
		if _, ok := splitEntries([]byte(body)); !ok {
			t.Errorf("%q: not read by the fast path", body)
		}
	}
}
