package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"runhub/hub"
	"runhub/store"
)

// TestWSMuxHistoryByteCap: history over a log larger than the byte cap,
// asking for 1,000 events, replies with at most store.ReadPageBytes of
// events (the newest before `before`, in order, at least one); asking again
// with before = the first seq returned reads every event once, down to 1.
func TestWSMuxHistoryByteCap(t *testing.T) {
	// 2.7 MiB: over the cap, and small, as megabytes of JSON through the
	// WebSocket take seconds under the race detector.
	const n, size = 14, 200 << 10
	e := newHTEnv(t, hub.Config{})
	c := dialMux(t, e)
	c.SetReadLimit(32 << 20) // so that an uncapped reply is seen, not a read error
	run := e.newRun()
	// Straight into the store: history reads only the store, and the REST
	// path would spend seconds on megabytes of JSON under the race detector.
	entries := make([]store.LogEntry, n)
	for i := range entries {
		var err error
		if entries[i], err = store.ParseLogEntry([]byte(logEntry(i, size)), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.st.AppendLog(context.Background(), e.ref(run), entries, nil); err != nil { // seqs 2..n+1
		t.Fatal(err)
	}
	var seqs []int64
	before, id := int64(n+2), 1
	for before > 1 {
		if id > n+2 {
			t.Fatal("history paging does not end")
		}
		send(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"history","params":{"run_id":%q,"before":%d,"limit":1000}}`, id, run, before))
		m := readMsg(t, c)
		var res struct {
			Events []struct {
				Seq   int64           `json:"seq"`
				Event json.RawMessage `json:"event"`
			} `json:"events"`
		}
		if m.Error != nil || json.Unmarshal(m.Result, &res) != nil || len(res.Events) == 0 {
			t.Fatalf("history before %d: %+v", before, m.Error)
		}
		bytes := 0
		for i, ev := range res.Events {
			bytes += len(ev.Event)
			if want := before - int64(len(res.Events)) + int64(i); ev.Seq != want {
				t.Fatalf("history before %d: event %d has seq %d, want %d", before, i, ev.Seq, want)
			}
		}
		if bytes > store.ReadPageBytes {
			t.Fatalf("history before %d: %d events, %d bytes; want at most %d bytes", before, len(res.Events), bytes, store.ReadPageBytes)
		}
		if id == 1 && len(res.Events) > store.ReadPageBytes/size {
			t.Fatalf("the first reply holds %d of %d events: not cut at the cap", len(res.Events), n+1)
		}
		page := make([]int64, len(res.Events))
		for i, ev := range res.Events {
			page[i] = ev.Seq
		}
		seqs = append(page, seqs...)
		before = res.Events[0].Seq
		id++
	}
	if len(seqs) != n+1 || seqs[0] != 1 || seqs[n] != n+1 {
		t.Fatalf("paged seqs %v, want 1..%d", seqs, n+1)
	}
}
