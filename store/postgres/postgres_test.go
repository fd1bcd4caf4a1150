package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"runhub/store"
	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
	"runhub/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// openTemp opens a Store on a fresh database.
func openTemp(t *testing.T, opts ...postgres.Option) (*postgres.Store, string) {
	t.Helper()
	url := pgtest.DB(t)
	s, err := postgres.Open(t.Context(), url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, url
}

// TestMigrateConcurrently: nodes that start together on an empty database
// all open it, and each migration is applied once (the advisory lock makes
// the others wait, then find it done); opening again applies nothing.
func TestMigrateConcurrently(t *testing.T) {
	const nodes = 6
	ctx := t.Context()
	url := pgtest.DB(t)
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	stores := make(chan *postgres.Store, nodes)
	for range nodes {
		wg.Go(func() {
			s, err := postgres.Open(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			stores <- s
		})
	}
	wg.Wait()
	close(errs)
	close(stores)
	for err := range errs {
		t.Error(err)
	}
	for s := range stores {
		if err := s.Ping(ctx); err != nil {
			t.Error(err)
		}
		s.Close()
	}
	s, err := postgres.Open(ctx, url) // a later start: nothing to apply
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	// Every embedded migration once, by its number (the numbers need not
	// be contiguous: branches take numbers apart).
	files, err := os.ReadDir("migrations")
	if err != nil {
		t.Fatal(err)
	}
	var want []int32
	for _, f := range files {
		n, err := strconv.Atoi(strings.SplitN(f.Name(), "_", 2)[0])
		if err != nil {
			t.Fatalf("migration %s: %v", f.Name(), err)
		}
		want = append(want, int32(n))
	}
	if !slices.Equal(versions, want) {
		t.Fatalf("schema_migrations holds %v, want each of %v once", versions, want)
	}
	if len(versions) == 0 {
		t.Fatal("no migration recorded")
	}
	var tables int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'runs'").Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("runs tables: %d, %v", tables, err)
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openTemp(t)
		return s
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixture creates a project, a task and a run in s.
func fixture(t *testing.T, s store.Store) store.RunRef {
	t.Helper()
	ctx := t.Context()
	p, err := s.CreateProject(ctx, "Acme")
	must(t, err)
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	must(t, err)
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	must(t, err)
	return store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
}

// TestAppendFromSeveralNodes: several Stores on one database, each with
// its own pool as separate processes would have, append batches to one run
// at once (and patch it, which shares the seq counter). The run's seqs are
// 1..N exactly: no gap, no duplicate, every batch contiguous, every entry
// stored once.
func TestAppendFromSeveralNodes(t *testing.T) {
	const nodes, writersPerNode, batches, size = 4, 3, 8, 25
	ctx := t.Context()
	url := pgtest.DB(t)
	stores := make([]*postgres.Store, nodes)
	for i := range stores {
		s, err := postgres.Open(ctx, url)
		must(t, err)
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	ref := fixture(t, stores[0])
	type tag struct{ N, W, B, I int }
	var wg sync.WaitGroup
	errs := make(chan error, nodes*writersPerNode)
	var patches atomic.Int64
	for n, s := range stores {
		for w := range writersPerNode {
			wg.Go(func() {
				for b := range batches {
					in := make([]store.LogEntry, size)
					for i := range in {
						e, err := store.ParseLogEntry(fmt.Appendf(nil, `{"type":"x","n":%d,"w":%d,"b":%d,"i":%d}`, n, w, b, i), time.Now())
						if err != nil {
							errs <- err
							return
						}
						in[i] = e
					}
					res, err := s.AppendLog(ctx, ref, in, nil)
					if err != nil {
						errs <- fmt.Errorf("node %d writer %d batch %d: %w", n, w, b, err)
						return
					}
					first := res.Events[0].Seq
					for i, ev := range res.Events {
						if ev.Seq != first+int64(i) {
							errs <- fmt.Errorf("node %d writer %d batch %d: seqs not contiguous: %d at %d", n, w, b, ev.Seq, i)
							return
						}
					}
					if b%4 == 0 {
						if _, err := s.UpdateRun(ctx, ref, store.RunPatch{State: map[string]json.RawMessage{"n": json.RawMessage(strconv.Itoa(n))}}, nil); err != nil {
							errs <- err
							return
						}
						patches.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	logs := int64(nodes * writersPerNode * batches * size)
	want := 1 + logs + patches.Load() // the create's event, the entries, the patches
	var seqs []int64
	seen := map[tag]bool{}
	for after := int64(0); ; {
		evs, err := stores[1].Events(ctx, ref.RunID, after, 500)
		must(t, err)
		if len(evs) == 0 {
			break
		}
		for _, ev := range evs {
			seqs = append(seqs, ev.Seq)
			if ev.Kind != store.KindLog {
				continue
			}
			var tg tag
			must(t, json.Unmarshal(ev.Data, &tg))
			if seen[tg] {
				t.Fatalf("entry %+v stored twice", tg)
			}
			seen[tg] = true
		}
		after = evs[len(evs)-1].Seq
	}
	if int64(len(seqs)) != want || int64(len(seen)) != logs {
		t.Fatalf("%d events (%d entries), want %d (%d)", len(seqs), len(seen), want, logs)
	}
	for i, sq := range seqs {
		if sq != int64(i+1) {
			t.Fatalf("event %d has seq %d: the seqs are not 1..%d", i, sq, want)
		}
	}
	run, err := stores[2].GetRun(ctx, ref)
	must(t, err)
	if run.LastSeq != want || run.LogCount != logs {
		t.Fatalf("run last_seq %d log_count %d, want %d %d", run.LastSeq, run.LogCount, want, logs)
	}
}

// TestEntriesByteForByte: an entry comes back from every read exactly as
// appended: key order, spacing inside strings, escapes (\u0000, which jsonb
// refuses, and an escaped lone surrogate), and non-ASCII text.
func TestEntriesByteForByte(t *testing.T) {
	ctx := t.Context()
	s, _ := openTemp(t)
	ref := fixture(t, s)
	lines := []string{
		`{"z":1,"a":2,"type":"x","timestamp":"2026-01-01T00:00:00Z","m":{"b":1,"a":[3,2,1]}}`,
		`{"timestamp":"2026-01-01T00:00:00.5+02:00","type":"x","nul":"a\u0000b","lone":"\ud800","uni":"žluť 🐙","esc":"\"\\\/\n","num":1.50e+10}`,
		`{"type":"x","a":1,"a":2,"timestamp":"not a time"}`,
	}
	in := make([]store.LogEntry, len(lines))
	for i, l := range lines {
		e, err := store.ParseLogEntry([]byte(l), time.Now())
		must(t, err)
		if string(e.Data) != l {
			t.Fatalf("ParseLogEntry changed %s into %s", l, e.Data)
		}
		in[i] = e
	}
	_, err := s.AppendLog(ctx, ref, in, nil)
	must(t, err)

	page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 10})
	must(t, err)
	evs, err := s.Events(ctx, ref.RunID, 1, 10)
	must(t, err)
	before, err := s.EventsBefore(ctx, ref.RunID, 100, 10, store.ReadPageBytes)
	must(t, err)
	var streamed []string
	must(t, s.StreamLog(ctx, ref, func(e []byte) error { streamed = append(streamed, string(e)); return nil }))
	if len(page.Entries) != len(lines) || len(evs) != len(lines) || len(before) != len(lines)+1 || len(streamed) != len(lines) {
		t.Fatalf("QueryLog %d, Events %d, EventsBefore %d, StreamLog %d entries; want %d", len(page.Entries), len(evs), len(before), len(streamed), len(lines))
	}
	for i, l := range lines {
		for what, got := range map[string]string{
			"QueryLog": string(page.Entries[i]), "Events": string(evs[i].Data),
			"EventsBefore": string(before[i+1].Data), "StreamLog": streamed[i],
		} {
			if got != l {
				t.Errorf("%s: entry %d is %s, appended %s", what, i, got, l)
			}
		}
	}
}

// TestBoundedReadsTransferLittle: with 40 entries of 200 KiB and a row
// limit of 5,000, QueryLog, EventsBefore and Events receive from the
// server no more than their byte budget plus the one entry that crossed
// it: the server stops, not only the client. Counted through the scan
// hook, which sees every row the server sent, not timed.
func TestBoundedReadsTransferLittle(t *testing.T) {
	const n, size = 40, 200 << 10
	var scanned atomic.Int64
	s, _ := openTemp(t, postgres.WithScanHook(func(b int) { scanned.Add(int64(b)) }))
	ctx := t.Context()
	ref := fixture(t, s)
	es := make([]store.LogEntry, n)
	for i := range es {
		var err error
		es[i], err = store.ParseLogEntry([]byte(fmt.Sprintf(`{"type":"x","n":%d,"pad":%q}`, i, strings.Repeat("y", size))), time.Now())
		must(t, err)
	}
	_, err := s.AppendLog(ctx, ref, es, nil)
	must(t, err)

	limit := int64(store.ReadPageBytes + size + 100) // the budget and one entry (with its JSON around the pad)
	for _, tc := range []struct {
		name string
		read func() (int, error)
	}{
		{"QueryLog", func() (int, error) {
			page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 5000})
			return len(page.Entries), err
		}},
		{"QueryLog offset", func() (int, error) {
			page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 5000, Offset: 5})
			return len(page.Entries), err
		}},
		{"EventsBefore", func() (int, error) {
			evs, err := s.EventsBefore(ctx, ref.RunID, int64(n+2), 1000, store.ReadPageBytes)
			return len(evs), err
		}},
		{"Events", func() (int, error) { // the hub's catch-up page asks for 500 events
			evs, err := s.Events(ctx, ref.RunID, 0, 500)
			return len(evs), err
		}},
	} {
		scanned.Store(0)
		got, err := tc.read()
		must(t, err)
		if b := scanned.Load(); b > limit || got == 0 || got >= n {
			t.Errorf("%s: %d entries returned, %d bytes received; want a partial page and at most %d bytes", tc.name, got, b, limit)
		}
	}
}

// TestRelayLease: the relay workers of several nodes share the outbox. A
// relay that one node took in DueRelays is not handed to another before
// its lease ends, whatever the timing of their calls; recording an attempt
// keeps the lease; an outcome (a retry at a new time) ends it.
func TestRelayLease(t *testing.T) {
	const nodes, relays = 4, 30
	ctx := t.Context()
	url := pgtest.DB(t)
	stores := make([]*postgres.Store, nodes)
	for i := range stores {
		s, err := postgres.Open(ctx, url)
		must(t, err)
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	base := time.Now().UTC().Truncate(time.Millisecond)
	for i := range relays {
		must(t, stores[0].CreateRelay(ctx, store.Relay{ID: fmt.Sprintf("r%02d", i), RunID: "run", Channel: "C1", ThreadTS: "1.2",
			Text: "hi", NextAt: base.Add(-time.Duration(relays-i) * time.Second)}))
	}
	// Every node polls at once, in small pages, until nothing is due: with
	// leases that hold, all the pages together hand out each relay once,
	// so a node needs at most relays/3 polls; polls beyond are a failure.
	var mu sync.Mutex
	taken := map[string]int{}
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Go(func() {
			for range relays/3 + 1 {
				due, err := s.DueRelays(ctx, base, 3)
				if err != nil {
					t.Error(err)
					return
				}
				if len(due) == 0 {
					return
				}
				mu.Lock()
				for _, r := range due {
					taken[r.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(taken) != relays {
		t.Fatalf("%d relays taken, want %d", len(taken), relays)
	}
	for id, n := range taken {
		if n != 1 {
			t.Fatalf("relay %s handed out %d times", id, n)
		}
	}

	// Recording an attempt keeps the lease; a retry at a new time ends it.
	r, err := stores[0].GetRelay(ctx, "r00")
	must(t, err)
	r.Attempts = 1
	must(t, stores[0].UpdateRelay(ctx, *r))
	if due, err := stores[1].DueRelays(ctx, base.Add(time.Second), 50); err != nil || len(due) != 0 {
		t.Fatalf("after an attempt was recorded, due %+v, %v; want none (every relay is leased)", due, err)
	}
	r.LastError, r.NextAt = "HTTP 500", base.Add(time.Second)
	must(t, stores[0].UpdateRelay(ctx, *r))
	due, err := stores[1].DueRelays(ctx, base.Add(time.Second), 50)
	must(t, err)
	if len(due) != 1 || due[0].ID != "r00" || due[0].Attempts != 1 {
		t.Fatalf("after a retry was scheduled, due %+v; want r00 alone", due)
	}
	// Leases end: a node that died mid-delivery does not hold a relay for ever.
	due, err = stores[2].DueRelays(ctx, base.Add(time.Hour), 50)
	must(t, err)
	if len(due) != relays {
		t.Fatalf("after the leases ended, %d relays due, want %d", len(due), relays)
	}
	for i := 1; i < len(due); i++ {
		if due[i].NextAt.Before(due[i-1].NextAt) {
			t.Fatalf("due relays not oldest first: %v before %v", due[i-1].NextAt, due[i].NextAt)
		}
	}
}

// TestRelayLeaseOption: WithRelayLease sets how long DueRelays gives a
// node its relays (serve's --slack-lease): another node gets them once
// that time has passed and not before; without the option the lease is
// DefaultRelayLease.
func TestRelayLeaseOption(t *testing.T) {
	ctx := t.Context()
	const lease = 7 * time.Second
	short, url := openTemp(t, postgres.WithRelayLease(lease))
	other, err := postgres.Open(ctx, url)
	must(t, err)
	t.Cleanup(func() { other.Close() })
	base := time.Now().UTC().Truncate(time.Millisecond)
	for _, id := range []string{"a", "b"} {
		must(t, short.CreateRelay(ctx, store.Relay{ID: id, RunID: "run", Channel: "C1", ThreadTS: "1.2", Text: "hi", NextAt: base}))
	}
	if due, err := short.DueRelays(ctx, base, 1); err != nil || len(due) != 1 || due[0].ID != "a" {
		t.Fatalf("short lease: due %+v, %v", due, err)
	}
	if due, err := other.DueRelays(ctx, base, 1); err != nil || len(due) != 1 || due[0].ID != "b" {
		t.Fatalf("default lease: due %+v, %v", due, err)
	}
	if due, err := other.DueRelays(ctx, base.Add(lease-time.Millisecond), 10); err != nil || len(due) != 0 {
		t.Fatalf("before the %v lease ended: due %+v, %v; want none", lease, due, err)
	}
	if due, err := other.DueRelays(ctx, base.Add(lease), 10); err != nil || len(due) != 1 || due[0].ID != "a" {
		t.Fatalf("when the %v lease ended: due %+v, %v; want a alone (b is leased for %v)", lease, due, err, postgres.DefaultRelayLease)
	}
	if due, err := short.DueRelays(ctx, base.Add(postgres.DefaultRelayLease-time.Millisecond), 10); err != nil || len(due) != 0 {
		t.Fatalf("before the default lease ended: due %+v, %v; want none", due, err)
	}
	if due, err := short.DueRelays(ctx, base.Add(postgres.DefaultRelayLease), 10); err != nil || len(due) != 1 || due[0].ID != "b" {
		t.Fatalf("when the default lease ended: due %+v, %v; want b", due, err)
	}
}

// TestReadOnlyIsUnavailable: a database that refuses writes (a read-only
// transaction, as on a hot standby) fails writes and ProbeWrite with
// store.ErrUnavailable, the 503 of the REST layer, while reads go on.
func TestReadOnlyIsUnavailable(t *testing.T) {
	ctx := t.Context()
	s, url := openTemp(t)
	ref := fixture(t, s)
	must(t, s.ProbeWrite(ctx))
	c, err := pgx.Connect(ctx, url)
	must(t, err)
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "ALTER DATABASE "+c.Config().Database+" SET default_transaction_read_only = on")
	must(t, err)
	s.Close() // its connections predate the setting
	// An up-to-date database opens without a write.
	s, err = postgres.Open(ctx, url)
	must(t, err)
	defer s.Close()
	if err := s.ProbeWrite(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("ProbeWrite: %v, want ErrUnavailable", err)
	}
	e, err := store.ParseLogEntry([]byte(`{"type":"x"}`), time.Now())
	must(t, err)
	if _, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, nil); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("AppendLog: %v, want ErrUnavailable", err)
	}
	if _, err := s.CreateProject(ctx, "p"); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("CreateProject: %v, want ErrUnavailable", err)
	}
	if _, err := s.GetRun(ctx, ref); err != nil {
		t.Errorf("GetRun: %v", err)
	}
}

// TestClock checks the rules that need a controlled clock: completed_at
// times and how long idempotency keys are kept.
func TestClock(t *testing.T) {
	ctx := t.Context()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s, _ := openTemp(t, postgres.WithClock(func() time.Time { return now }))
	ref := fixture(t, s)
	status := func(st string) *store.Run {
		t.Helper()
		now = now.Add(time.Minute)
		res, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: &st}, nil)
		must(t, err)
		if !res.Run.UpdatedAt.Equal(now) {
			t.Errorf("updated_at = %v, want %v", res.Run.UpdatedAt, now)
		}
		return res.Run
	}
	steps := []struct {
		status string
		want   time.Duration // completed_at minus the start; -1 for null
	}{
		{store.StatusInProgress, -1},
		{store.StatusCompleted, 2 * time.Minute},
		{store.StatusFailed, 2 * time.Minute},
		{store.StatusCancelled, 2 * time.Minute}, // a finished run never reopens: completed_at stays
	}
	start := now
	for _, st := range steps {
		r := status(st.status)
		switch {
		case st.want < 0 && r.CompletedAt != nil:
			t.Errorf("%s: completed_at %v, want null", st.status, r.CompletedAt)
		case st.want >= 0 && (r.CompletedAt == nil || !r.CompletedAt.Equal(start.Add(st.want))):
			t.Errorf("%s: completed_at %v, want %v", st.status, r.CompletedAt, start.Add(st.want))
		}
	}

	// A key is remembered for at least 24 h, and forgotten after the TTL.
	idem := &store.Idempotency{Namespace: store.IdemREST, Key: "k", RequestHash: []byte("h")}
	e, err := store.ParseLogEntry([]byte(`{"type":"x"}`), now)
	must(t, err)
	first, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
	must(t, err)
	now = now.Add(24*time.Hour - time.Second)
	_, err = s.AppendLog(ctx, ref, []store.LogEntry{e}, &store.Idempotency{Namespace: store.IdemREST, Key: "other", RequestHash: []byte("h")})
	must(t, err)
	rep, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
	must(t, err)
	if !rep.Replayed || rep.Run.LastSeq != first.Run.LastSeq {
		t.Errorf("key applied 24 h ago: replayed %v last_seq %d, want replay of %d", rep.Replayed, rep.Run.LastSeq, first.Run.LastSeq)
	}
	// The same key in the other namespace is another request.
	agent, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, &store.Idempotency{Namespace: store.IdemAgent, Key: "k", RequestHash: []byte("h")})
	must(t, err)
	if agent.Replayed {
		t.Error("an agent key replayed a REST key of the same name")
	}
	now = now.Add(72 * time.Hour)
	_, err = s.AppendLog(ctx, ref, []store.LogEntry{e}, &store.Idempotency{Namespace: store.IdemREST, Key: "third", RequestHash: []byte("h")})
	must(t, err)
	again, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
	must(t, err)
	if again.Replayed {
		t.Error("a key applied 4 days ago was still replayed")
	}
}

// TestStalledLockIsBusy: a writer that finds the run locked by a stalled
// holder (another node's transaction that does not end) gives up after
// the lock timeout with store.ErrBusy, a 503 to retry, rather than
// waiting for ever; writes to other runs are not held up meanwhile.
func TestStalledLockIsBusy(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ctx := t.Context()
	s, url := openTemp(t, postgres.WithLockTimeout(timeout))
	ref, other := fixture(t, s), fixture(t, s)
	c, err := pgx.Connect(ctx, url)
	must(t, err)
	defer c.Close(ctx)
	tx, err := c.Begin(ctx)
	must(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, "SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", ref.RunID)
	must(t, err)

	e, err := store.ParseLogEntry([]byte(`{"type":"x"}`), time.Now())
	must(t, err)
	start := time.Now()
	wait, cancel := context.WithTimeout(ctx, 25*timeout) // a bound for the test, not the store
	defer cancel()
	_, err = s.AppendLog(wait, ref, []store.LogEntry{e}, nil)
	if !errors.Is(err, store.ErrBusy) {
		t.Fatalf("AppendLog on a locked run: %v, want ErrBusy", err)
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("gave up after %v, before the lock timeout %v", took, timeout)
	}
	if _, err := s.AppendLog(ctx, other, []store.LogEntry{e}, nil); err != nil {
		t.Fatalf("AppendLog on another run: %v", err)
	}
	must(t, tx.Rollback(ctx))
	res, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, nil)
	must(t, err)
	if res.Events[0].Seq != 2 {
		t.Errorf("after the holder ended, seq %d, want 2", res.Events[0].Seq)
	}
}
