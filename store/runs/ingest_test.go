package runs

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
	"unicode/utf8"
)

var ingestNow = time.Date(2026, 11, 28, 21, 4, 5, 0, time.UTC)

// TestDecodeIngestLine: the two line shapes are taken, and every other
// line is refused with PostHog's sentence.
func TestDecodeIngestLine(t *testing.T) {
	for _, tc := range []struct {
		line     string
		seq      int64
		complete bool
		final    int64
		err      string
	}{
		{line: `{"seq": 1, "event": {"type": "x"}}`, seq: 1},
		{line: `  {"event": {"type": "x"}, "seq": 9007199254740993}  `, seq: 9007199254740993},
		{line: `{"type": "_posthog/stream_complete", "final_seq": 0}`, complete: true},
		{line: `{"type": "_posthog/stream_complete", "final_seq": 42, "seq": -1}`, complete: true, final: 42},
		{line: `{"type": "notification", "seq": 3, "event": {}}`, seq: 3},
		{line: `{"seq": 0, "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": -2, "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": 1.0, "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": 1e2, "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": "1", "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": true, "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": 99999999999999999999, "event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"event": {}}`, err: "Event sequence must be a positive integer"},
		{line: `{"seq": 1}`, err: "Event payload must be an object"},
		{line: `{"seq": 1, "event": [1]}`, err: "Event payload must be an object"},
		{line: `{"seq": 1, "event": null}`, err: "Event payload must be an object"},
		{line: `{"type": "_posthog/stream_complete"}`, err: "Completion final sequence must be a non-negative integer"},
		{line: `{"type": "_posthog/stream_complete", "final_seq": -1}`, err: "Completion final sequence must be a non-negative integer"},
		{line: `{"type": "_posthog/stream_complete", "final_seq": 2.5}`, err: "Completion final sequence must be a non-negative integer"},
		{line: `[1, 2]`, err: "Each event line must be a JSON object"},
		{line: `7`, err: "Each event line must be a JSON object"},
		{line: `{"seq": 1, "event": {}`, err: "Invalid JSON line"},
		{line: `{"seq": 1, "event": {}} {}`, err: "Invalid JSON line"},
		{line: "{\"seq\": 1, \"event\": {\"t\": \"\xff\"}}", err: "Invalid UTF-8 in event stream"},
	} {
		d, err := DecodeIngestLine([]byte(tc.line), ingestNow)
		if tc.err != "" {
			var le *IngestLineError
			if !errors.As(err, &le) || le.Detail != tc.err {
				t.Errorf("%s: error %v, want %q", tc.line, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.line, err)
			continue
		}
		if d.Complete != tc.complete || d.FinalSeq != tc.final || d.Event.Seq != tc.seq {
			t.Errorf("%s: decoded %+v, want seq %d complete %v final %d", tc.line, d, tc.seq, tc.complete, tc.final)
		}
		if !tc.complete && !json.Valid(d.Event.Entry.Data) {
			t.Errorf("%s: entry %q is not JSON", tc.line, d.Event.Entry.Data)
		}
	}
}

// FuzzDecodeIngestLine: the decoder never panics, refuses only with an
// *IngestLineError, and what it accepts is well formed: a positive seq and
// an event that is a UTF-8 JSON object, or a non-negative final_seq.
func FuzzDecodeIngestLine(f *testing.F) {
	for _, s := range []string{
		`{"seq": 1, "event": {"type": "notification", "notification": {"method": "session/update", "params": {"update": {"sessionUpdate": "agent_message_chunk"}}}}}`,
		`{"type": "_posthog/stream_complete", "final_seq": 3}`,
		`{"seq": 1.5, "event": {}}`, `{"seq": 1, "event": "x"}`, `[]`, `{`, "{\"seq\": 1, \"event\": {\"a\": \"\xc3\"}}",
		`{"seq": 1, "event": {"a": "\ud800"}}`, ``, `   `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		d, err := DecodeIngestLine(line, ingestNow)
		if err != nil {
			var le *IngestLineError
			if !errors.As(err, &le) || le.Detail == "" {
				t.Fatalf("refusal %v is not an IngestLineError", err)
			}
			return
		}
		if !utf8.Valid(line) {
			t.Fatalf("accepted %q, which is not UTF-8", line)
		}
		if d.Complete {
			if d.FinalSeq < 0 {
				t.Fatalf("accepted final_seq %d", d.FinalSeq)
			}
			return
		}
		if d.Event.Seq < 1 {
			t.Fatalf("accepted seq %d", d.Event.Seq)
		}
		data := d.Event.Entry.Data
		if !utf8.Valid(data) || jsonKind(data) != "dict" || !json.Valid(data) {
			t.Fatalf("accepted event %q, which is not a JSON object in UTF-8", data)
		}
	})
}
