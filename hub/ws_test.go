package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

// TestWSStreamEvents: a WebSocket on .../stream gets JSON-RPC event
// notifications in seq order, exactly once (replay, then live), each
// carrying the stored event; after the run completes a stream_end
// notification, then a normal close.
func TestWSStreamEvents(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendN(run, 0, 30)
	ctx := testCtx(t, 20*time.Second)

	c := e.mustWS(ctx, run, "")
	notes := wantSeqs(t, ctx, c, run, 1, 31)
	waitFor(t, 5*time.Second, "the subscription to go live", func() bool { return e.h.LiveForTest() == 1 })
	e.appendN(run, 30, 5)
	e.appendLog(run, chunkEntry("hi")) // ephemeral: no seq, live subscribers only
	e.appendN(run, 35, 1)
	notes = append(notes, wantSeqs(t, ctx, c, run, 32, 36)...)

	n, b, err := readNote(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if n.Method != "event" || n.Params.Seq != nil || n.Params.RunID != run || n.ID != nil {
		t.Fatalf("chunk notification %s: want an event without seq", b)
	}
	var raw map[string]json.RawMessage
	json.Unmarshal(b, &raw)
	var params map[string]json.RawMessage
	json.Unmarshal(raw["params"], &params)
	if _, ok := params["seq"]; ok {
		t.Errorf("chunk notification has a seq: %s", b)
	}
	notes = append(notes, wantSeqs(t, ctx, c, run, 37, 37)...)

	stored := e.storedEvents(run)
	if len(stored) != len(notes) {
		t.Fatalf("stored %d events, got %d notifications", len(stored), len(notes))
	}
	for i, n := range notes {
		if string(n.Params.Event) != string(stored[i].Data) {
			t.Errorf("seq %d: event %s, stored %s", *n.Params.Seq, n.Params.Event, stored[i].Data)
		}
	}

	e.setStatus(run, "completed")
	final := wantSeqs(t, ctx, c, run, 38, 38)[0]
	var st struct{ Type, Status string }
	if json.Unmarshal(final.Params.Event, &st); st.Type != "task_run_state" || st.Status != "completed" {
		t.Errorf("final event %s", final.Params.Event)
	}
	n, b, err = readNote(ctx, c)
	if err != nil {
		t.Fatalf("reading stream_end: %v", err)
	}
	if n.JSONRPC != "2.0" || n.Method != "stream_end" || n.ID != nil || n.Params.RunID != run || n.Params.Status != "completed" {
		t.Fatalf("got %s, want stream_end notification", b)
	}
	_, b, err = c.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusNormalClosure {
		t.Fatalf("after stream_end: %s, err %v; want close 1000", b, err)
	}
	waitFor(t, 5*time.Second, "the hub to drop the run", func() bool {
		r, s := e.h.StateForTest()
		return r == 0 && s == 0
	})
}

// TestWSStreamResume: ?after=k, Last-Event-ID and start=latest work on the
// WebSocket too; a terminal run replays and ends.
func TestWSStreamResume(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendN(run, 0, 700) // seqs 2..701, more than one catch-up page
	ctx := testCtx(t, 20*time.Second)

	a := e.mustWS(ctx, run, "after=650")
	wantSeqs(t, ctx, a, run, 651, 701)
	latest := e.mustWS(ctx, run, "start=latest")
	b, err := e.dialWSHeader(ctx, run, "Last-Event-ID", "10")
	if err != nil {
		t.Fatal(err)
	}
	defer b.CloseNow()
	wantSeqs(t, ctx, b, run, 11, 701)
	time.Sleep(20 * time.Millisecond)
	e.appendN(run, 700, 2)
	for _, c := range []*websocket.Conn{a, latest, b} {
		wantSeqs(t, ctx, c, run, 702, 703)
	}
	e.setStatus(run, "failed")
	for _, c := range []*websocket.Conn{a, latest, b} {
		wantSeqs(t, ctx, c, run, 704, 704)
		n, raw, err := readNote(ctx, c)
		if err != nil || n.Method != "stream_end" || n.Params.Status != "failed" {
			t.Fatalf("got %s, %v; want stream_end failed", raw, err)
		}
	}

	// Terminal run: replay, stream_end, close 1000.
	c := e.mustWS(ctx, run, "after=700")
	wantSeqs(t, ctx, c, run, 701, 704)
	n, raw, err := readNote(ctx, c)
	if err != nil || n.Method != "stream_end" || n.Params.Status != "failed" {
		t.Fatalf("got %s, %v; want stream_end failed", raw, err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("want close 1000, got %v", err)
	}
}

// TestWSStreamBadAfter: a bad after is refused before the upgrade.
func TestWSStreamBadAfter(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)
	_, err := e.dialWS(ctx, run, "after=x", nil)
	if err == nil {
		t.Fatal("dial with after=x succeeded")
	}
	code, body, _ := e.do("GET", e.runPath(run)+"/stream?after=x", "")
	if code != 400 || !strings.Contains(string(body), `"attr":"after"`) {
		t.Fatalf("HTTP %d %s, want 400 on after", code, body)
	}
}

func (e *htEnv) dialWSHeader(ctx context.Context, run string, hdr ...string) (*websocket.Conn, error) {
	h := map[string][]string{"Authorization": {"Bearer " + e.key}}
	for i := 0; i+1 < len(hdr); i += 2 {
		h[hdr[i]] = []string{hdr[i+1]}
	}
	c, _, err := websocket.Dial(ctx, e.wsURL(run), &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		c.SetReadLimit(8 << 20)
	}
	return c, err
}

// TestWSPingTimeout: a WebSocket client that never answers pings is closed
// after PingInterval+PongTimeout; one that reads (and so answers) stays.
func TestWSPingTimeout(t *testing.T) {
	e := newHTEnv(t, hub.Config{PingInterval: 50 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	run := e.newRun()
	ctx := testCtx(t, 10*time.Second)

	deaf := dialRawWS(t, e, run, 64<<10)
	alive := readWSSeqs(ctx, e.mustWS(ctx, run, ""))
	alive.want(t, "reading client", 1, 1)
	start := time.Now()
	seqs, code, _, err := deaf.readAll(5 * time.Second)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("a client that never answers pings is still connected after %v", time.Since(start))
	}
	t.Logf("deaf client: seqs %v, close code %d, then %v after %v", seqs, code, err, time.Since(start).Round(time.Millisecond))
	if len(seqs) != 1 || seqs[0] != 1 {
		t.Errorf("deaf client got seqs %v", seqs)
	}
	// The reading client is still served.
	time.Sleep(300 * time.Millisecond)
	e.appendN(run, 0, 1)
	alive.want(t, "reading client", 2, 2)
	waitFor(t, 5*time.Second, "one subscription", func() bool { _, s := e.h.StateForTest(); return s == 1 })
}

// TestWSBatchMessages: notifications queued together arrive as JSON-RPC
// batches (arrays of notifications) of at most 16 KiB, in seq order; a
// notification larger than that arrives alone.
func TestWSBatchMessages(t *testing.T) {
	e := newHTEnv(t, hub.Config{})
	run := e.newRun()
	e.appendN(run, 0, 400)
	big := `{"type":"console","message":"` + strings.Repeat("b", 20<<10) + `"}`
	e.appendLog(run, big)
	ctx := testCtx(t, 20*time.Second)

	c := e.mustWS(ctx, run, "") // catch-up: 402 events queued at once
	next, batches := int64(1), 0
	for next <= 402 {
		typ, b, err := c.Read(ctx)
		if err != nil || typ != websocket.MessageText {
			t.Fatalf("read: %v", err)
		}
		var msgs []wsNote
		if b[0] == '[' {
			batches++
			if len(b) > 16<<10 {
				t.Fatalf("batch of %d bytes", len(b))
			}
			if err := json.Unmarshal(b, &msgs); err != nil || len(msgs) < 2 {
				t.Fatalf("batch: %v, %d members", err, len(msgs))
			}
		} else {
			var n wsNote
			if err := json.Unmarshal(b, &n); err != nil {
				t.Fatal(err)
			}
			msgs = []wsNote{n}
		}
		for _, n := range msgs {
			if n.JSONRPC != "2.0" || n.Method != "event" || n.Params.Seq == nil || *n.Params.Seq != next {
				t.Fatalf("got %+v, want event seq %d", n, next)
			}
			if next == 402 && len(b) < 20<<10 {
				t.Fatalf("the 20 KiB event came in a message of %d bytes", len(b))
			}
			next++
		}
	}
	if batches == 0 {
		t.Fatal("402 queued events came one message each")
	}
}
