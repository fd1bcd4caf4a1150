package sqlite_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
)

// TestBoundedReadsScanLittle: with 40 entries of 200 KiB and a row limit of
// 5,000, QueryLog, EventsBefore and Events copy out of SQLite no more than their
// byte budget plus the one entry that crossed it; they do not read the log
// and trim afterwards. Counted through the scan hook, not timed.
func TestBoundedReadsScanLittle(t *testing.T) {
	const n, size = 40, 200 << 10
	var scanned atomic.Int64
	s, _ := openTemp(t, sqlite.WithScanHook(func(b int) { scanned.Add(int64(b)) }))
	ctx := t.Context()
	p, err := s.CreateProject(ctx, "p")
	must(t, err)
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	must(t, err)
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	must(t, err)
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	es := make([]store.LogEntry, n)
	for i := range es {
		es[i], err = store.ParseLogEntry([]byte(fmt.Sprintf(`{"type":"x","n":%d,"pad":%q}`, i, strings.Repeat("y", size))), time.Now())
		must(t, err)
	}
	_, err = s.AppendLog(ctx, ref, es, nil)
	must(t, err)

	limit := int64(store.ReadPageBytes + size + 100) // the budget and one entry (with its JSON around the pad)
	scanned.Store(0)
	page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 5000})
	must(t, err)
	if got := scanned.Load(); got > limit || len(page.Entries) == 0 || len(page.Entries) >= n {
		t.Fatalf("QueryLog: %d entries returned, %d bytes scanned; want a partial page and at most %d bytes", len(page.Entries), got, limit)
	}
	scanned.Store(0)
	evs, err := s.EventsBefore(ctx, ref.RunID, int64(n+2), 1000, store.ReadPageBytes)
	must(t, err)
	if got := scanned.Load(); got > limit || len(evs) == 0 || len(evs) >= n {
		t.Fatalf("EventsBefore: %d events returned, %d bytes scanned; want a partial reply and at most %d bytes", len(evs), got, limit)
	}
	// The hub's catch-up page asks for 500 events: the budget stops it too.
	scanned.Store(0)
	evs, err = s.Events(ctx, ref.RunID, 0, 500)
	must(t, err)
	if got := scanned.Load(); got > limit || len(evs) == 0 || len(evs) >= n {
		t.Fatalf("Events: %d events returned, %d bytes scanned; want a partial page and at most %d bytes", len(evs), got, limit)
	}
}
