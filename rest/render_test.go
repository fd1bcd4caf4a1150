package rest

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// runFields is runBody without its MarshalJSON: what encoding/json makes
// of the struct, the reference appendJSON must match.
type runFields runBody

// FuzzRunBodyJSON: runBody.appendJSON writes, byte for byte, what
// encoding/json writes for runBody's fields, whatever the strings (escapes,
// control characters, <>&, U+2028, bytes that are not UTF-8), raw values
// (spaced, nested, escaped) and times hold.
func FuzzRunBodyJSON(f *testing.F) {
	f.Add("0190a7e4-0000-7000-8000-000000000001", "build", true, int64(7), "key", []byte(`{"a":1}`), "cloud", int64(1764417600123456789), true)
	f.Add("", "", false, int64(-1), "", []byte(`null`), "", int64(0), false)
	f.Add("a\"b\\c\n\t\x01\x7f", "<script>&amp;</script>", true, int64(1<<62), "k\u2028\u2029", []byte(" { \"x\" : [ 1 , 2 ] , \"<\":\"&\" } "), "é✓\xff\xfe", int64(-1<<63), true)
	f.Add("id", "stage", true, int64(0), "z", []byte(`"line\u2028sep \u003c"`), "local", int64(1<<63-1), false)
	f.Add("id", "\u2028", false, int64(42), "a", []byte("[\"\u2028\",\"\u2029\", true, false, null, -1.5e10]"), "x", int64(1), true)
	// One rule each: a string that needs escaping for one reason only, a
	// raw value that compaction or escaping changes for one reason only.
	for _, c := range []string{"<", ">", "&", "\"", "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "\xff"} {
		f.Add("a"+c+"b", "s", true, int64(1), "k"+c, []byte(`1`), "e"+c, int64(0), false)
	}
	for _, raw := range []string{"[1, 2]", "[1,\t2]", "[1,\r2]", "[1,\n2]", `["<"]`, `[">"]`, `["&"]`, "[\"\u2028\"]", "[\"\u2029\"]", "[\"\u2027\"]"} {
		f.Add("a", "s", true, int64(1), "k", []byte(raw), "e", int64(0), false)
	}
	f.Fuzz(func(t *testing.T, id, stage string, hasStage bool, team int64, key string, raw []byte, env string, ns int64, done bool) {
		if !json.Valid(raw) {
			return // the store keeps valid JSON only
		}
		at := apiTime(time.Unix(0, ns).In(time.FixedZone("x", 5*3600+1800)))
		b := &runBody{ID: id, Task: key, Team: team, Status: env, Environment: env, LogURL: &id, ErrorMessage: &stage,
			Output: map[string]json.RawMessage{key: raw, key + "2": raw, "": json.RawMessage(`1`)},
			State:  map[string]json.RawMessage{}, Artifacts: []json.RawMessage{raw, json.RawMessage(`{}`), raw},
			CreatedAt: at, UpdatedAt: apiTime(time.Unix(ns%1e9, 0)),
		}
		if hasStage {
			b.Stage, b.Branch = &stage, &key
		}
		if done {
			b.CompletedAt, b.Output, b.Artifacts = &at, nil, nil
		}
		want, err := json.Marshal((*runFields)(b))
		if err != nil {
			t.Fatal(err)
		}
		if got := b.appendJSON(nil); !bytes.Equal(got, want) {
			t.Fatalf("appendJSON\n%s\nencoding/json\n%s", got, want)
		}
		// Inside another value (a task's latest_run, a list), through
		// MarshalJSON.
		got, err := json.Marshal([]*runBody{b})
		if err != nil || !bytes.Equal(got, append(append([]byte{'['}, want...), ']')) {
			t.Fatalf("in a list: %s %v, want [%s]", got, err, want)
		}
	})
}
