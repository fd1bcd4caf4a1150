package rest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wantHeaders checks the session_logs count headers: X-Filtered-Count is
// PostHog's name for the matching count, X-Returned-Count the page's size.
func wantHeaders(t testing.TB, res *resp, total, matching, returned int, hasMore bool) {
	t.Helper()
	for name, want := range map[string]string{
		"X-Total-Count":    strconv.Itoa(total),
		"X-Matching-Count": strconv.Itoa(matching),
		"X-Filtered-Count": strconv.Itoa(matching),
		"X-Returned-Count": strconv.Itoa(returned),
		"X-Has-More":       strconv.FormatBool(hasMore),
	} {
		if got := res.header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// field returns entry[k] as a string (for checking which entries came back).
func ids(entries []map[string]any) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = fmt.Sprint(e["id"])
	}
	return out
}

func wantIDs(t testing.TB, entries []map[string]any, want ...string) {
	t.Helper()
	if got := strings.Join(ids(entries), ","); got != strings.Join(want, ",") {
		t.Errorf("entries %s, want %s", got, strings.Join(want, ","))
	}
}

func TestAppendLogBasic(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	entries := []any{
		map[string]any{"type": "notification", "timestamp": "2001-01-01T00:00:01.000001Z", "id": "e1",
			"notification": map[string]any{"jsonrpc": "2.0", "method": "session/update", "params": map[string]any{"update": map[string]any{"sessionUpdate": "tool_call"}}}},
		map[string]any{"type": "custom", "timestamp": "2001-01-01T00:00:02Z", "id": "e2", "nested": map[string]any{"unicode": "héllo ✓", "n": 1.5}},
		map[string]any{"id": "e3", "timestamp": "2001-01-01T00:00:03Z"},
	}
	run := e.appendLog(f, entries...)
	wantJSON(t, run["id"], `"`+f.run+`"`, "append_log answers with the run")
	for _, k := range runKeys {
		if _, ok := run[k]; !ok {
			t.Errorf("append_log response lacks %q", k)
		}
	}
	res, got := e.sessionLogs(f, "")
	wantHeaders(t, res, 3, 3, 3, false)
	if len(got) != 3 {
		t.Fatalf("%d entries", len(got))
	}
	for i := range entries {
		wantJSON(t, got[i], string(mustJSON(t, entries[i])), fmt.Sprint("entry ", i))
	}
	// Seq numbers: 1 is the run's creation, then one per entry.
	evs := e.events(f.run)
	if len(evs) != 4 {
		t.Fatalf("%d events", len(evs))
	}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Errorf("event %d has seq %d", i, ev.Seq)
		}
	}
	if evs[1].Kind != "log" || evs[1].Type != "tool_call" || evs[2].Type != "custom" || evs[3].Type != "" {
		t.Errorf("event kinds/types: %+v %+v %+v", evs[1], evs[2], evs[3])
	}
	// A second append continues the numbering.
	e.appendLog(f, map[string]any{"id": "e4"})
	if evs := e.events(f.run); len(evs) != 5 || evs[4].Seq != 5 {
		t.Errorf("after a second append: %d events", len(evs))
	}
}

func TestAppendLogValidation(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	e.appendLog(f, map[string]any{"id": "kept"})
	n := len(e.events(f.run))
	for _, c := range []struct {
		name, body, attr string
	}{
		{"empty list", `{"entries": []}`, "entries"},
		{"missing", `{}`, "entries"},
		{"empty body", ``, "entries"},
		{"null", `{"entries": null}`, "entries"},
		{"string", `{"entries": "x"}`, "entries"},
		{"object", `{"entries": {"a": 1}}`, "entries"},
		{"number entry", `{"entries": [1]}`, "entries"},
		{"string entry", `{"entries": ["x"]}`, "entries"},
		{"null entry", `{"entries": [null]}`, "entries"},
		{"list entry", `{"entries": [[{}]]}`, "entries"},
		{"one bad among good", `{"entries": [{"id": "a"}, {"id": "b"}, 7, {"id": "c"}]}`, "entries"},
		{"bad JSON", `{"entries": [{]}`, ""},
		{"JSON list", `[{"id": 1}]`, ""},
		{"invalid idempotency key", `{"entries": [{}]}`, "Idempotency-Key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: c.body}
			if c.attr == "Idempotency-Key" {
				r.Headers = map[string]string{"Idempotency-Key": strings.Repeat("x", 300)}
			}
			wantAPIError(t, e.do(r), http.StatusBadRequest, "validation_error", c.attr)
		})
	}
	// All or nothing: none of the good entries around a bad one was stored.
	res, got := e.sessionLogs(f, "")
	wantHeaders(t, res, 1, 1, 1, false)
	wantIDs(t, got, "kept")
	if m := len(e.events(f.run)); m != n {
		t.Errorf("events %d -> %d", n, m)
	}
	// Unknown run: 404.
	res = e.do(req{Method: "POST", Path: e.runPath(e.p1, f.task, randomUUID) + "/append_log", Key: e.writeKey, Body: `{"entries": [{}]}`})
	wantAPIError(t, res, http.StatusNotFound, "invalid_request", "")
}

func TestAppendLogLimits(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	build := func(n int) []byte {
		var b bytes.Buffer
		b.WriteString(`{"entries":[`)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"i":%d}`, i)
		}
		b.WriteString(`]}`)
		return b.Bytes()
	}
	res := e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: build(10001)})
	er := wantAPIError(t, res, http.StatusBadRequest, "validation_error", "entries")
	if er.Code != "max_length" {
		t.Errorf("code %q", er.Code)
	}
	res, _ = e.sessionLogs(f, "limit=1")
	wantHeaders(t, res, 0, 0, 0, false)

	wantStatus(t, e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: build(10000)}), http.StatusOK)
	res, got := e.sessionLogs(f, "limit=5000&offset=5000")
	wantHeaders(t, res, 10000, 10000, 5000, false)
	if len(got) != 5000 || fmt.Sprint(got[0]["i"]) != "5000" || fmt.Sprint(got[4999]["i"]) != "9999" {
		t.Errorf("second half: %d entries", len(got))
	}

	// One entry over 1 MiB is refused, one just under is stored.
	big := strings.Repeat("x", 1<<20)
	res = e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey,
		Body: map[string]any{"entries": []any{map[string]any{"id": "small"}, map[string]any{"big": big}}}})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "entries")
	res = e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey,
		Body: map[string]any{"entries": []any{map[string]any{"big": big[:1<<19], "timestamp": "2001-01-01T00:00:00Z"}}}})
	wantStatus(t, res, http.StatusOK)
	res, _ = e.sessionLogs(f, "limit=1")
	if res.header.Get("X-Total-Count") != "10001" {
		t.Errorf("X-Total-Count %q, want 10001", res.header.Get("X-Total-Count"))
	}
}

func TestAppendLogEphemeralChunks(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	chunk := map[string]any{"type": "notification", "notification": map[string]any{"jsonrpc": "2.0", "method": "session/update",
		"params": map[string]any{"update": map[string]any{"sessionUpdate": "agent_message_chunk", "content": map[string]any{"text": "hel"}}}}}
	e.appendLog(f, chunk, map[string]any{"id": "kept"}, map[string]any{"type": "agent_message_chunk"}, chunk)
	res, got := e.sessionLogs(f, "")
	wantHeaders(t, res, 1, 1, 1, false)
	wantIDs(t, got, "kept")
	// Only chunks: 200, nothing stored, no seq used.
	e.appendLog(f, chunk)
	evs := e.events(f.run)
	if len(evs) != 2 || evs[1].Seq != 2 {
		t.Errorf("events: %+v", evs)
	}
	// The JSONL log has no chunk either.
	res = e.do(req{Method: "GET", Path: f.path(e, "/logs"), Key: e.readKey})
	if strings.Contains(string(res.body), "agent_message_chunk") {
		t.Errorf("chunk in /logs: %s", res.body)
	}
	// A different sessionUpdate is stored.
	e.appendLog(f, map[string]any{"id": "thought", "notification": map[string]any{"method": "session/update",
		"params": map[string]any{"update": map[string]any{"sessionUpdate": "agent_thought_chunk"}}}})
	_, got = e.sessionLogs(f, "")
	wantIDs(t, got, "kept", "thought")
}

func TestAppendLogTimestamps(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	before := time.Now().UTC().Truncate(time.Microsecond)
	e.appendLog(f, map[string]any{"id": "none"}, map[string]any{"id": "given", "timestamp": "2001-02-03T04:05:06.7Z"},
		map[string]any{"id": "weird", "timestamp": "yesterday"})
	after := time.Now().UTC()
	_, got := e.sessionLogs(f, "")
	if len(got) != 3 {
		t.Fatalf("%d entries", len(got))
	}
	ts := wantTime(t, got[0]["timestamp"], "server timestamp")
	if ts.Before(before) || ts.After(after) {
		t.Errorf("server timestamp %v not within [%v, %v]", ts, before, after)
	}
	wantJSON(t, got[1]["timestamp"], `"2001-02-03T04:05:06.7Z"`, "client timestamp kept as sent")
	wantJSON(t, got[2]["timestamp"], `"yesterday"`, "unparseable timestamp kept as sent")
	// The JSONL log shows the same timestamp.
	res := e.do(req{Method: "GET", Path: f.path(e, "/logs"), Key: e.readKey})
	first := strings.SplitN(string(res.body), "\n", 2)[0]
	var m map[string]any
	if err := json.Unmarshal([]byte(first), &m); err != nil || m["timestamp"] != got[0]["timestamp"] {
		t.Errorf("logs first line %q, session_logs timestamp %v", first, got[0]["timestamp"])
	}
}

func TestLogsJSONL(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()

	// Empty log: 200 with an empty body.
	for _, key := range []string{e.readKey, e.writeKey} {
		res := e.do(req{Method: "GET", Path: f.path(e, "/logs"), Key: key})
		wantStatus(t, res, http.StatusOK)
		if ct := res.header.Get("Content-Type"); ct != "application/jsonl" {
			t.Errorf("Content-Type %q", ct)
		}
		if len(res.body) != 0 {
			t.Errorf("empty log body %q", res.body)
		}
	}

	// A log longer than the store's page, appended in three requests, with
	// state changes in between (which are not log entries).
	var want []string
	for batch := 0; batch < 3; batch++ {
		var entries []any
		for i := 0; i < 900; i++ {
			n := batch*900 + i
			entries = append(entries, map[string]any{"n": n, "timestamp": "2001-01-01T00:00:00Z", "text": "line\nbreak \u2028 \"quoted\""})
			b, _ := json.Marshal(entries[len(entries)-1])
			want = append(want, string(b))
		}
		e.appendLog(f, entries...)
		wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{"stage": fmt.Sprint(batch)}}), http.StatusOK)
	}
	res := e.do(req{Method: "GET", Path: f.path(e, "/logs/"), Key: e.readKey})
	wantStatus(t, res, http.StatusOK)
	if ct := res.header.Get("Content-Type"); ct != "application/jsonl" {
		t.Errorf("Content-Type %q", ct)
	}
	body := string(res.body)
	if !strings.HasSuffix(body, "\n") {
		t.Errorf("JSONL does not end with a newline")
	}
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d", len(lines), len(want))
	}
	for i, line := range lines {
		if !jsonEq(t, rawJSON(line), want[i]) {
			t.Fatalf("line %d = %s, want %s", i, line, want[i])
		}
		if strings.Contains(line, "task_run_state") {
			t.Fatalf("line %d is a state event: %s", i, line)
		}
	}
	// Same entries as session_logs, in the same order.
	_, got := e.sessionLogs(f, "limit=5000")
	if len(got) != len(lines) {
		t.Fatalf("session_logs %d entries, logs %d lines", len(got), len(lines))
	}
	for i := range got {
		if !jsonEq(t, got[i], lines[i]) {
			t.Fatalf("entry %d differs: %v vs %s", i, got[i], lines[i])
		}
	}
	// Unknown run / task: 404 in JSON.
	wantAPIError(t, e.do(req{Method: "GET", Path: e.runPath(e.p1, f.task, randomUUID) + "/logs", Key: e.readKey}), http.StatusNotFound, "invalid_request", "")
	wantAPIError(t, e.do(req{Method: "GET", Path: e.runPath(e.p1, randomUUID, f.run) + "/logs", Key: e.readKey}), http.StatusNotFound, "invalid_request", "")
}

func TestSessionLogsFilters(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	e.appendLog(f,
		map[string]any{"id": "e1", "type": "a", "timestamp": "2001-01-01T00:00:01Z"},
		map[string]any{"id": "e2", "type": "b", "timestamp": "2001-01-01T00:00:02Z"},
		map[string]any{"id": "e3", "type": "a", "timestamp": "2001-01-01T00:00:03.5Z"},
		map[string]any{"id": "e4", "type": "a", "timestamp": "garbage"},
		map[string]any{"id": "e5", "type": "c"}, // gets now
		map[string]any{"id": "e6", "type": "b", "timestamp": "2001-01-01T01:00:02+01:00"},
	)
	// seq: create 1, e1 2, ..., e6 7.
	q := func(query string, total, matching int, hasMore bool, want ...string) {
		t.Helper()
		res, got := e.sessionLogs(f, query)
		wantStatus(t, res, http.StatusOK)
		wantHeaders(t, res, total, matching, len(want), hasMore)
		wantIDs(t, got, want...)
	}
	q("", 6, 6, false, "e1", "e2", "e3", "e4", "e5", "e6")
	// after: strictly later; an equal instant (in another zone) is excluded;
	// entries without a parseable timestamp are dropped.
	q("after="+url.QueryEscape("2001-01-01T00:00:02Z"), 6, 2, false, "e3", "e5")
	q("after="+url.QueryEscape("2001-01-01T00:00:03.4999999Z"), 6, 2, false, "e3", "e5")
	q("after="+url.QueryEscape("2001-01-01T00:00:03.5Z"), 6, 1, false, "e5")
	q("after="+url.QueryEscape("2001-01-01T02:00:01+02:00"), 6, 4, false, "e2", "e3", "e5", "e6")
	q("after="+url.QueryEscape("1999-01-01T00:00:00Z"), 6, 5, false, "e1", "e2", "e3", "e5", "e6")
	// event_types / exclude_types, comma-separated, spaces tolerated.
	q("event_types=a", 6, 3, false, "e1", "e3", "e4")
	q("event_types="+url.QueryEscape("a, c"), 6, 4, false, "e1", "e3", "e4", "e5")
	q("exclude_types=a", 6, 3, false, "e2", "e5", "e6")
	q("exclude_types=a,b", 6, 1, false, "e5")
	q("event_types=a&exclude_types=a", 6, 0, false)
	q("event_types=nothing", 6, 0, false)
	// after_seq: entries with a larger seq.
	q("after_seq=0", 6, 6, false, "e1", "e2", "e3", "e4", "e5", "e6")
	q("after_seq=1", 6, 6, false, "e1", "e2", "e3", "e4", "e5", "e6")
	q("after_seq=4", 6, 3, false, "e4", "e5", "e6")
	q("after_seq=7", 6, 0, false)
	q("after_seq=1000", 6, 0, false)
	// limit / offset and X-Has-More.
	q("limit=2", 6, 6, true, "e1", "e2")
	q("limit=2&offset=2", 6, 6, true, "e3", "e4")
	q("limit=2&offset=4", 6, 6, false, "e5", "e6")
	q("offset=5", 6, 6, false, "e6")
	q("offset=6", 6, 6, false)
	q("offset=100", 6, 6, false)
	q("limit=5000", 6, 6, false, "e1", "e2", "e3", "e4", "e5", "e6")
	// Everything together.
	q("event_types=a,b&after="+url.QueryEscape("2001-01-01T00:00:01Z")+"&after_seq=3&limit=1", 6, 2, true, "e3")
	q("event_types=a,b&after="+url.QueryEscape("2001-01-01T00:00:01Z")+"&after_seq=3&limit=1&offset=1", 6, 2, false, "e6")
}

func TestSessionLogsEventTypes(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	n := func(id, method string, params any) map[string]any {
		return map[string]any{"id": id, "type": "notification", "timestamp": "2001-01-01T00:00:00Z",
			"notification": map[string]any{"jsonrpc": "2.0", "method": method, "params": params}}
	}
	e.appendLog(f,
		n("tool", "session/update", map[string]any{"update": map[string]any{"sessionUpdate": "tool_call"}}),
		n("console", "_posthog/console", map[string]any{"level": "info"}),
		n("bare", "session/update", map[string]any{}),
		map[string]any{"id": "typed", "type": "custom"},
		map[string]any{"id": "untyped"},
		map[string]any{"id": "numtype", "type": 5},
	)
	for types, want := range map[string][]string{
		"tool_call":        {"tool"},
		"_posthog/console": {"console"},
		"session/update":   {"bare"},
		"notification":     nil,
		"custom":           {"typed"},
		"tool_call,custom": {"tool", "typed"},
	} {
		_, got := e.sessionLogs(f, "event_types="+url.QueryEscape(types))
		wantIDs(t, got, want...)
	}
	_, got := e.sessionLogs(f, "exclude_types="+url.QueryEscape("tool_call,_posthog/console,session/update,custom"))
	wantIDs(t, got, "untyped", "numtype")
}

func TestSessionLogsBadParams(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	for _, c := range []struct{ query, attr string }{
		{"limit=0", "limit"},
		{"limit=5001", "limit"},
		{"limit=-1", "limit"},
		{"limit=abc", "limit"},
		{"limit=1.5", "limit"},
		{"offset=-1", "offset"},
		{"offset=x", "offset"},
		{"after=garbage", "after"},
		{"after=2026-01-01", "after"},
		{"after_seq=-1", "after_seq"},
		{"after_seq=x", "after_seq"},
	} {
		res, _ := e.sessionLogs(f, c.query)
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", c.attr)
	}
	for _, ok := range []string{"limit=1", "limit=5000", "offset=0", "after_seq=0", "event_types=&exclude_types="} {
		res, _ := e.sessionLogs(f, ok)
		wantStatus(t, res, http.StatusOK)
	}
	// Empty log: an empty array, not null.
	res, got := e.sessionLogs(f, "")
	if string(bytes.TrimSpace(res.body)) != "[]" || len(got) != 0 {
		t.Errorf("empty session_logs body %q", res.body)
	}
	wantHeaders(t, res, 0, 0, 0, false)
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("session_logs Content-Type %q", ct)
	}
	// Unknown run: 404.
	res = e.do(req{Method: "GET", Path: e.runPath(e.p1, f.task, randomUUID) + "/session_logs", Key: e.readKey})
	wantAPIError(t, res, http.StatusNotFound, "invalid_request", "")
}

func TestAppendLogIdempotency(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	body := `{"entries": [{"id": "a"}, {"id": "b"}]}`
	key := map[string]string{"Idempotency-Key": "batch-1"}
	first := e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: body, Headers: key})
	wantStatus(t, first, http.StatusOK)
	nEvents := len(e.events(f.run))
	for i := 0; i < 3; i++ {
		replay := e.do(req{Method: "POST", Path: f.path(e, "/append_log/"), Key: e.writeKey, Body: body, Headers: key})
		wantStatus(t, replay, http.StatusOK)
		sameReplay(t, replay, first)
	}
	res, got := e.sessionLogs(f, "")
	wantHeaders(t, res, 2, 2, 2, false)
	wantIDs(t, got, "a", "b")
	if n := len(e.events(f.run)); n != nEvents {
		t.Errorf("replays stored events: %d -> %d", nEvents, n)
	}
	// The same key with another body: 400, nothing stored.
	res = e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: `{"entries": [{"id": "c"}]}`, Headers: key})
	er := wantAPIError(t, res, http.StatusBadRequest, "validation_error", "Idempotency-Key")
	if er.Code == "" {
		t.Error("no code")
	}
	res, _ = e.sessionLogs(f, "")
	wantHeaders(t, res, 2, 2, 2, false)
	// Another key with the same body is another request.
	wantStatus(t, e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: body,
		Headers: map[string]string{"Idempotency-Key": "batch-2"}}), http.StatusOK)
	// No key: applied every time.
	wantStatus(t, e.do(req{Method: "POST", Path: f.path(e, "/append_log"), Key: e.writeKey, Body: body}), http.StatusOK)
	res, got = e.sessionLogs(f, "")
	wantHeaders(t, res, 6, 6, 6, false)
	wantIDs(t, got, "a", "b", "a", "b", "a", "b")
	// A key used on one run does not affect another.
	g := e.fixture()
	wantStatus(t, e.do(req{Method: "POST", Path: g.path(e, "/append_log"), Key: e.writeKey, Body: `{"entries": [{"id": "z"}]}`, Headers: key}), http.StatusOK)
	_, got = e.sessionLogs(g, "")
	wantIDs(t, got, "z")
}

// "only entries whose timestamp is strictly later", for every RFC 3339 time:
// timestamps outside 1678..2262 (beyond int64 Unix nanoseconds) must compare
// correctly too. Fails today: store/sqlite stores and compares
// t.UnixNano(), which wraps around for such times.
func TestSessionLogsAfterFarFutureTimestamp(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	e.appendLog(f,
		map[string]any{"id": "past", "timestamp": "2001-01-01T00:00:00Z"},
		map[string]any{"id": "future", "timestamp": "3000-01-01T00:00:00Z"},
		map[string]any{"id": "ancient", "timestamp": "1000-01-01T00:00:00Z"},
	)
	_, got := e.sessionLogs(f, "after="+url.QueryEscape("2001-06-01T00:00:00Z"))
	wantIDs(t, got, "future")
	// An `after` beyond 2262 must not wrap around and match everything.
	_, got = e.sessionLogs(f, "after="+url.QueryEscape("3000-01-01T00:00:00Z"))
	wantIDs(t, got)
	_, got = e.sessionLogs(f, "after="+url.QueryEscape("0900-01-01T00:00:00Z"))
	wantIDs(t, got, "past", "future", "ancient")
}

// TestSessionLogsByteCap: a page asking for 5,000 entries of a log four
// times the byte cap holds at most sessionLogsPageBytes of entries, with
// counts saying how many came and X-Has-More true; following the offset
// reads every entry once, in order, until X-Has-More is false.
func TestSessionLogsByteCap(t *testing.T) {
	const n, size = 40, 200 << 10
	e := newEnv(t, nil)
	f := e.fixture()
	entries := make([]any, n)
	for i := range entries {
		entries[i] = map[string]any{"id": strconv.Itoa(i), "type": "x", "pad": strings.Repeat("p", size)}
	}
	e.appendLog(f, entries...)
	next := 0
	for offset, pages := 0, 0; ; pages++ {
		if pages > n {
			t.Fatal("paging does not end")
		}
		res, got := e.sessionLogs(f, fmt.Sprintf("limit=5000&offset=%d", offset))
		wantStatus(t, res, http.StatusOK)
		if len(res.body) > sessionLogsPageBytes+n*100 || len(got) == 0 {
			t.Fatalf("offset %d: %d entries in %d bytes, want 1.. within the %d-byte cap", offset, len(got), len(res.body), sessionLogsPageBytes)
		}
		for _, entry := range got {
			if entry["id"] != strconv.Itoa(next) {
				t.Fatalf("offset %d: entry %v, want %d", offset, entry["id"], next)
			}
			next++
		}
		offset += len(got)
		wantHeaders(t, res, n, n, len(got), offset < n)
		if offset >= n {
			break
		}
		if offset == len(got) && len(got) >= n/2 {
			t.Fatalf("the first page holds %d of %d entries: not cut at the cap", len(got), n)
		}
	}
	if next != n {
		t.Fatalf("read %d entries, want %d", next, n)
	}
}
