package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"runhub/hub"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestSSEReplayThenLive: a plain net/http client gets the contract's
// headers, ids 1..N in order (seq 1 is the create task_run_state event,
// then the appended entries with their data), then live events.
func TestSSEReplayThenLive(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	const n = 25
	e.appendN(run, 0, 10)
	e.appendN(run, 10, n-10)
	ctx := testCtx(t, 20*time.Second)

	c := e.mustSSE(ctx, run, "")
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := c.res.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	evs := c.wantIDs(t, 1, n+1)
	var st struct {
		Type   string `json:"type"`
		RunID  string `json:"run_id"`
		TaskID string `json:"task_id"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(evs[0].data), &st); err != nil || st.Type != "task_run_state" ||
		st.RunID != run || st.TaskID != e.task || st.Status != "not_started" {
		t.Errorf("seq 1 = %s, want the create task_run_state event", evs[0].data)
	}
	stored := e.storedEvents(run)
	for i, ev := range evs {
		var entry struct {
			Type string `json:"type"`
			N    *int   `json:"n"`
		}
		if i > 0 {
			if err := json.Unmarshal([]byte(ev.data), &entry); err != nil || entry.Type != "log" || entry.N == nil || *entry.N != i-1 {
				t.Errorf("id %d: data %s, want log entry n=%d", ev.id, ev.data, i-1)
			}
		}
		if ev.data != string(stored[i].Data) {
			t.Errorf("id %d: data %s, stored %s", ev.id, ev.data, stored[i].Data)
		}
	}

	// Live: new entries and a state change arrive in order.
	e.appendN(run, n, 3)
	c.wantIDs(t, n+2, n+4)
	e.setStatus(run, "in_progress")
	ev := c.wantIDs(t, n+5, n+5)[0]
	if !strings.Contains(ev.data, `"type":"task_run_state"`) || !strings.Contains(ev.data, `"status":"in_progress"`) {
		t.Errorf("PATCH event = %s", ev.data)
	}
}

// TestSSEResume: Last-Event-ID and ?after=k both give exactly k+1..N, then
// live events; ?start=latest only new ones.
func TestSSEResume(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendN(run, 0, 20) // seqs 2..21
	const last = 21
	ctx := testCtx(t, 20*time.Second)

	for _, k := range []int64{0, 1, 7, 20, last} {
		byHeader := e.mustSSE(ctx, run, "", "Last-Event-ID", fmt.Sprint(k))
		byQuery := e.mustSSE(ctx, run, fmt.Sprintf("after=%d", k))
		byHeader.wantIDs(t, k+1, last)
		byQuery.wantIDs(t, k+1, last)
	}
	latest := e.mustSSE(ctx, run, "start=latest")
	// Let every stream go live before the next append, so that the live
	// path (not only the catch-up) is exercised.
	time.Sleep(50 * time.Millisecond)
	e.appendN(run, 20, 2) // seqs 22..23
	latest.wantIDs(t, last+1, last+2)
	c := e.mustSSE(ctx, run, "", "Last-Event-ID", "22")
	c.wantIDs(t, 23, 23)
	e.appendN(run, 22, 1)
	latest.wantIDs(t, 24, 24)
	c.wantIDs(t, 24, 24)
}

// TestSSEResumeStreamsLive: the streams opened with after=k in
// TestSSEResume go live; checked here on their own, including a Last-Event-ID
// that is not the newest and events appended while catching up.
func TestSSEResumeStreamsLive(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendN(run, 0, 1200) // more than one catch-up page; seqs 2..1201
	ctx := testCtx(t, 30*time.Second)
	a := e.mustSSE(ctx, run, "", "Last-Event-ID", "5")
	b := e.mustSSE(ctx, run, "after=600")
	done := make(chan error, 1)
	go func() { // appends race with the catch-up
		for i := 0; i < 20; i++ {
			if err := e.tryAppend(run, []string{logEntry(1200+i, 0)}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	a.wantIDs(t, 6, 1221)
	b.wantIDs(t, 601, 1221)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSSEBadResume: a bad after or Last-Event-ID is 400 with the contract's
// error body, before any stream starts.
func TestSSEBadResume(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)
	for _, tc := range []struct{ query, header, attr string }{
		{"after=abc", "", "after"},
		{"after=-1", "", "after"},
		{"after=1.5", "", "after"},
		{"", "nope", "Last-Event-ID"},
		{"", "-3", "Last-Event-ID"},
	} {
		var hdr []string
		if tc.header != "" {
			hdr = []string{"Last-Event-ID", tc.header}
		}
		c, err := e.openSSE(ctx, run, tc.query, hdr...)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(c.res.Body)
		c.close()
		if c.res.StatusCode != http.StatusBadRequest {
			t.Errorf("%q/%q: HTTP %d, want 400: %s", tc.query, tc.header, c.res.StatusCode, body)
			continue
		}
		if ct := c.res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%q/%q: Content-Type %q", tc.query, tc.header, ct)
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Errorf("%q/%q: body %s", tc.query, tc.header, body)
			continue
		}
		if m["type"] != "validation_error" || m["attr"] != tc.attr || m["code"] == "" || m["detail"] == "" || len(m) != 4 {
			t.Errorf("%q/%q: error body %s, want validation_error on %s", tc.query, tc.header, body, tc.attr)
		}
	}
}

// TestSSEKeepAlive: an idle stream carries keepalive events without ids.
func TestSSEKeepAlive(t *testing.T) {
	e := newHTEnv(t, hub.Config{KeepAlive: 50 * time.Millisecond})
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)
	c := e.mustSSE(ctx, run, "")
	start := time.Now()
	got, ids := 0, 0
	for got < 3 {
		ev, err := c.next()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ev.event == "keepalive":
			if ev.hasID || ev.data != `{"type":"keepalive"}` {
				t.Fatalf("keepalive event %+v", ev)
			}
			got++
		case ev.hasID && ev.id == 1:
			ids++
		default:
			t.Fatalf("unexpected event %+v", ev)
		}
	}
	if ids != 1 {
		t.Errorf("seq 1 seen %d times", ids)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("3 keepalives took %v with a 50ms interval", d)
	}
	// Keepalives do not disturb the numbering.
	e.appendN(run, 0, 2)
	c.wantIDs(t, 2, 3)
}

// TestSSEEphemeralChunks: agent_message_chunk entries reach live
// subscribers, in place and without an id; they are not replayed.
func TestSSEEphemeralChunks(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)
	c := e.mustSSE(ctx, run, "")
	c.wantIDs(t, 1, 1)
	// Chunks are for live subscribers only: one that is still finishing its
	// catch-up (even after writing its last stored event) misses them.
	waitFor(t, 5*time.Second, "the subscription to go live", func() bool { return e.h.LiveForTest() == 1 })
	e.appendLog(run, logEntry(0, 0), chunkEntry("Hel"), chunkEntry("lo"), logEntry(1, 0))
	e.appendLog(run, chunkEntry("!"))
	e.appendN(run, 2, 1)

	want := []string{"id 2", "chunk Hel", "chunk lo", "id 3", "chunk !", "id 4"}
	for _, w := range want {
		ev, err := c.nextData()
		if err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprintf("id %d", ev.id)
		if !ev.hasID {
			var v struct {
				Notification struct {
					Params struct {
						Update struct {
							SessionUpdate string `json:"sessionUpdate"`
							Content       struct {
								Text string `json:"text"`
							} `json:"content"`
						} `json:"update"`
					} `json:"params"`
				} `json:"notification"`
			}
			if err := json.Unmarshal([]byte(ev.data), &v); err != nil || v.Notification.Params.Update.SessionUpdate != "agent_message_chunk" {
				t.Fatalf("event without id is not a chunk: %+v", ev)
			}
			got = "chunk " + v.Notification.Params.Update.Content.Text
		}
		if got != w || ev.event != "" {
			t.Fatalf("got %s (event %q), want %s", got, ev.event, w)
		}
	}
	// A replay has only the stored events.
	r := e.mustSSE(ctx, run, "")
	r.wantIDs(t, 1, 4)
	e.appendN(run, 3, 1)
	r.wantIDs(t, 5, 5)
	c.wantIDs(t, 5, 5)
}

// TestSSEStreamEnd: after the run turns terminal the stream sends its state
// event, then stream-end, and the server closes the response.
func TestSSEStreamEnd(t *testing.T) {
	for _, status := range []string{"completed", "failed", "cancelled"} {
		t.Run(status, func(t *testing.T) {
			e := newHTEnv(t, hub.Config{})
			run := e.newRun()
			e.appendN(run, 0, 3)
			ctx := testCtx(t, 10*time.Second)
			c := e.mustSSE(ctx, run, "")
			c.wantIDs(t, 1, 4)
			e.setStatus(run, status)
			ev := c.wantIDs(t, 5, 5)[0]
			if !strings.Contains(ev.data, fmt.Sprintf(`"status":%q`, status)) {
				t.Errorf("final state event %s", ev.data)
			}
			c.wantEnd(t, status)
			waitFor(t, 5*time.Second, "the hub to drop the run", func() bool {
				r, s := e.h.StateForTest()
				return r == 0 && s == 0
			})
		})
	}
}

// TestSSECompletedRun: subscribing to a terminal run replays everything and
// ends; resuming at the end or starting latest ends at once.
func TestSSECompletedRun(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendN(run, 0, 600) // more than one catch-up page
	e.setStatus(run, "in_progress")
	e.appendN(run, 600, 10)
	e.setStatus(run, "completed")
	last := e.lastSeq(run)
	if last != 613 {
		t.Fatalf("last seq %d", last)
	}
	ctx := testCtx(t, 20*time.Second)

	c := e.mustSSE(ctx, run, "")
	c.wantIDs(t, 1, last)
	c.wantEnd(t, "completed")

	c = e.mustSSE(ctx, run, "", "Last-Event-ID", "605")
	c.wantIDs(t, 606, last)
	c.wantEnd(t, "completed")

	c = e.mustSSE(ctx, run, "", "Last-Event-ID", fmt.Sprint(last))
	c.wantEnd(t, "completed")

	c = e.mustSSE(ctx, run, "start=latest")
	c.wantEnd(t, "completed")

	// A resume from before the completion event, but after the last
	// task_run_state event before it.
	c = e.mustSSE(ctx, run, "after=1")
	c.wantIDs(t, 2, last)
	c.wantEnd(t, "completed")
}

// TestSSEManySubscribersSameRun: several subscribers of one run each get
// every event once, and none outlives the stream end.
func TestSSEManySubscribersSameRun(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 20*time.Second)
	var cs []*sseConn
	for i := 0; i < 10; i++ {
		cs = append(cs, e.mustSSE(ctx, run, ""))
	}
	for i := 0; i < 20; i++ {
		e.appendN(run, i*5, 5)
	}
	e.setStatus(run, "completed")
	for _, c := range cs {
		c.wantIDs(t, 1, 102)
		c.wantEnd(t, "completed")
	}
	waitFor(t, 5*time.Second, "the hub to drop the run", func() bool {
		r, s := e.h.StateForTest()
		return r == 0 && s == 0
	})
}
