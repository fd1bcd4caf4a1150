package hub_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"runhub/hub"
)

// wantOnlyIDs reads events (skipping keepalives) and wants exactly ids, in
// order.
func (c *sseConn) wantOnlyIDs(t testing.TB, ids ...int64) []sseEvent {
	t.Helper()
	var out []sseEvent
	for _, want := range ids {
		ev, err := c.nextData()
		if err != nil {
			t.Fatalf("reading id %d: %v", want, err)
		}
		if !ev.hasID || ev.id != want || ev.event != "" {
			t.Fatalf("got event %q id %d data %.200s, want id %d", ev.event, ev.id, ev.data, want)
		}
		out = append(out, ev)
	}
	return out
}

// runhubOnlyRun makes a run whose log mixes PostHog's events with runhub's
// own: 1 create state, 2 log, 3 agent_connected, 4 log, 5 artifact,
// 6 agent_disconnected, 7 log.
func runhubOnlyRun(t *testing.T, e *htEnv) string {
	run := e.newRun()
	e.appendLog(run, logEntry(0, 0), `{"type":"agent_connected"}`, logEntry(1, 0))
	e.mustJSON("POST", e.runPath(run)+"/artifacts/", `{"artifacts":[{"name":"plan.md","type":"plan","content":"# Plan"}]}`, http.StatusOK, nil)
	e.appendLog(run, `{"type":"agent_disconnected"}`, logEntry(2, 0))
	if got := e.lastSeq(run); got != 7 {
		t.Fatalf("last seq %d, want 7", got)
	}
	return run
}

// TestSSEHidesRunhubOnlyEvents: by default an SSE stream carries what
// PostHog's server would send: agent_connected, agent_disconnected and
// artifact events are left out, from the store (replay, resume) and live,
// their seqs skipped; the stream still ends with stream-end once the run
// is terminal. ?events=all carries every event, and WebSocket streams
// always do. Before: every SSE client got them, and PostHog's desktop app
// shows an event type it does not know as a transcript line.
func TestSSEHidesRunhubOnlyEvents(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := runhubOnlyRun(t, e)
	ctx := testCtx(t, 20*time.Second)

	def := e.mustSSE(ctx, run, "")
	all := e.mustSSE(ctx, run, "events=all")
	ws := e.mustWS(ctx, run, "")
	for _, ev := range def.wantOnlyIDs(t, 1, 2, 4, 7) {
		var v struct{ Type string }
		json.Unmarshal([]byte(ev.data), &v)
		if v.Type != "task_run_state" && v.Type != "log" {
			t.Errorf("id %d: %s on the default stream", ev.id, ev.data)
		}
	}
	all.wantIDs(t, 1, 7)
	wantSeqs(t, ctx, ws, run, 1, 7)

	// Live: 8 agent_connected, 9 log, 10 artifact, 11 the terminal state.
	e.appendLog(run, `{"type":"agent_connected"}`, logEntry(3, 0))
	e.mustJSON("POST", e.runPath(run)+"/artifacts/", `{"artifacts":[{"name":"b.md","type":"plan","content":"b"}]}`, http.StatusOK, nil)
	e.setStatus(run, "completed")
	def.wantOnlyIDs(t, 9, 11)
	def.wantEnd(t, "completed")
	all.wantIDs(t, 8, 11)
	all.wantEnd(t, "completed")
	wantSeqs(t, ctx, ws, run, 8, 11)

	// A resume from a hidden seq, and one that ends on hidden events.
	e.mustSSE(ctx, run, "", "Last-Event-ID", "3").wantOnlyIDs(t, 4, 7, 9, 11)
	tail := e.mustSSE(ctx, run, "after=9")
	tail.wantOnlyIDs(t, 11)
	tail.wantEnd(t, "completed")
}

// TestSSEEventsParam: ?events= is "all" or absent; anything else is a 400
// validation error (attr events) before the stream starts.
func TestSSEEventsParam(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	for _, q := range []string{"events=ALL", "events=none", "events=%20all"} {
		// A stream that starts is cut after a second, and fails the test.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", e.streamURL(run)+"?"+q, nil)
		req.Header.Set("Authorization", "Bearer "+e.key)
		res, err := e.client.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		status := res.StatusCode
		var b struct{ Type, Attr string }
		json.Unmarshal(body, &b)
		if status != http.StatusBadRequest || b.Type != "validation_error" || b.Attr != "events" {
			t.Errorf("?%s: %d %s, want 400 attr events", q, status, body)
		}
	}
}
