package sqlite_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	modsqlite "modernc.org/sqlite"

	"runhub/store"
	"runhub/store/sqlite"
)

// groupBusyTimeout is how long the leader of these tests waits for the
// write lock the test holds while it queues the others: far longer than
// queueing them takes, so the lock is released before it runs out.
const groupBusyTimeout = 20 * time.Second

// batchSizes records the size of every batch the store runs.
type batchSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchSizes) hook(n int) {
	b.mu.Lock()
	b.sizes = append(b.sizes, n)
	b.mu.Unlock()
}

func (b *batchSizes) seen() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.sizes)
}

// execSQL runs statements on the database at path from a connection of the
// test's own, as another process would.
func execSQL(t *testing.T, path string, stmts ...string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	must(t, err)
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// failStatementTrigger makes recording an idempotency key that starts with
// "fail" fail: the mutation's events and seq are written by then, so only
// undoing the mutation (its savepoint) keeps them out of the store.
var failStatementTrigger = `CREATE TRIGGER fail_key BEFORE INSERT ON idempotency_keys WHEN NEW.key LIKE 'fail%'
	BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`

// poisonCommitSQL makes the COMMIT of any transaction that stored an entry
// holding "poison" fail: the entry's row breaks a deferred foreign key,
// which SQLite checks at COMMIT only, so every statement succeeds and the
// commit itself is refused.
var poisonCommitSQL = []string{
	"CREATE TABLE poison_parent (id INTEGER PRIMARY KEY)",
	"CREATE TABLE poison (parent INTEGER REFERENCES poison_parent(id) DEFERRABLE INITIALLY DEFERRED)",
	`CREATE TRIGGER poison_commit AFTER INSERT ON run_events WHEN instr(NEW.data, '"poison":true') > 0
		BEGIN INSERT INTO poison VALUES (1); END`,
}

// groupFixture is a store with n runs of one task.
func groupFixture(t *testing.T, n int, opts ...sqlite.Option) (*sqlite.Store, string, []store.RunRef) {
	t.Helper()
	s, path := openTemp(t, opts...)
	ctx := t.Context()
	p, err := s.CreateProject(ctx, "Group")
	must(t, err)
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	must(t, err)
	refs := make([]store.RunRef, n)
	for i := range refs {
		res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
		must(t, err)
		refs[i] = store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	}
	return s, path, refs
}

// tagged is one log entry carrying a tag the test finds it by.
func tagged(t *testing.T, tag string, extra string) []store.LogEntry {
	t.Helper()
	e, err := store.ParseLogEntry([]byte(fmt.Sprintf(`{"type":"x","tag":%q%s}`, tag, extra)), time.Now())
	must(t, err)
	return []store.LogEntry{e}
}

// storedTags returns the seq of every stored log entry of the run by tag,
// and checks that the run's seqs are 1..last_seq without a gap.
func storedTags(t *testing.T, s *sqlite.Store, ref store.RunRef) map[string][]int64 {
	t.Helper()
	run, err := s.GetRun(t.Context(), ref)
	must(t, err)
	evs, err := s.Events(t.Context(), ref.RunID, 0, 100000)
	must(t, err)
	out := map[string][]int64{}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("run %s: event %d has seq %d: seqs not contiguous", ref.RunID, i, ev.Seq)
		}
		if ev.Kind != store.KindLog {
			continue
		}
		var e struct{ Tag string }
		must(t, json.Unmarshal(ev.Data, &e))
		out[e.Tag] = append(out[e.Tag], ev.Seq)
	}
	if n := int64(len(evs)); n != run.LastSeq {
		t.Fatalf("run %s: %d events stored, last_seq %d", ref.RunID, n, run.LastSeq)
	}
	return out
}

// queueBehindLeader holds the write lock, starts a leader mutation that
// blocks on it, starts the others (each a func that runs one mutation),
// waits until all of them are queued behind the leader, and releases the
// lock: the leader commits alone, then the others run as one batch. It
// returns when every mutation has answered.
func queueBehindLeader(t *testing.T, s *sqlite.Store, path string, batches *batchSizes, leader func(), others []func()) {
	t.Helper()
	release := holdWriteLock(t, path)
	before := len(batches.seen())
	var wg sync.WaitGroup
	wg.Go(leader)
	waitFor(t, "the leader to start its batch", func() bool { return len(batches.seen()) > before })
	for _, f := range others {
		wg.Go(f)
	}
	waitFor(t, "every mutation to queue", func() bool { return s.QueuedWrites() == len(others) })
	release()
	wg.Wait()
}

// waitFor polls cond until it holds, failing the test after a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGroupCommitIsolation: mutations queued behind a running one run as
// one batch and one commit, and a member that fails (an idempotency
// mismatch, an unknown run, a refused status change, a statement that
// fails after the member wrote its events, a caller that gave up) leaves
// nothing in the store and does not hurt the others: each succeeding
// member's events are stored exactly once, with contiguous seqs, and its
// answer is what it would have been alone.
func TestGroupCommitIsolation(t *testing.T) {
	var batches batchSizes
	s, path, refs := groupFixture(t, 8, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	execSQL(t, path, failStatementTrigger)
	// A key recorded with another request: reusing it must fail.
	_, err := s.AppendLog(ctx, refs[1], tagged(t, "first", ""), &store.Idempotency{Key: "k", RequestHash: []byte("h1")})
	must(t, err)
	// A key recorded with this request: reusing it replays.
	_, err = s.AppendLog(ctx, refs[2], tagged(t, "replayed", ""), &store.Idempotency{Key: "r", RequestHash: []byte("h")})
	must(t, err)
	lastBefore := map[string]int64{}
	for _, ref := range refs {
		run, err := s.GetRun(ctx, ref)
		must(t, err)
		lastBefore[ref.RunID] = run.LastSeq
	}

	type answer struct {
		res *store.MutationResult
		err error
	}
	answers := map[string]*answer{}
	var mu sync.Mutex
	record := func(name string, res *store.MutationResult, err error) {
		mu.Lock()
		answers[name] = &answer{res, err}
		mu.Unlock()
	}
	appendAs := func(name string, ref store.RunRef, idem *store.Idempotency) func() {
		return func() {
			res, err := s.AppendLog(ctx, ref, tagged(t, name, ""), idem)
			record(name, res, err)
		}
	}
	unknown := refs[0]
	unknown.RunID = "00000000-0000-4000-8000-000000000000"
	others := []func(){
		appendAs("ok-0", refs[0], nil),
		appendAs("mismatch", refs[1], &store.Idempotency{Key: "k", RequestHash: []byte("h2")}),
		appendAs("ok-3a", refs[3], nil),
		appendAs("replay", refs[2], &store.Idempotency{Key: "r", RequestHash: []byte("h")}),
		appendAs("unknown", unknown, nil),
		appendAs("failed-statement", refs[4], &store.Idempotency{Key: "fail-1", RequestHash: []byte("h")}),
		appendAs("ok-3b", refs[3], &store.Idempotency{Key: "fresh", RequestHash: []byte("h")}),
		func() {
			res, err := s.UpdateRun(ctx, refs[5], store.RunPatch{Status: ptrTo(store.StatusInProgress), RequireStatus: store.StatusQueued}, nil)
			record("refused-update", res, err)
		},
		func() {
			res, err := s.UpdateRun(ctx, refs[6], store.RunPatch{Status: ptrTo(store.StatusInProgress)}, nil)
			record("update", res, err)
		},
		appendAs("ok-4", refs[4], nil),
	}
	queueBehindLeader(t, s, path, &batches, appendAs("leader", refs[7], nil), others)

	if sizes := batches.seen(); !slices.Contains(sizes, len(others)) {
		t.Fatalf("batch sizes %v: the %d queued mutations did not share one batch", sizes, len(others))
	}
	wantErr := map[string]func(error) bool{
		"mismatch":         func(err error) bool { return errors.Is(err, store.ErrIdempotencyMismatch) },
		"unknown":          func(err error) bool { return errors.Is(err, store.ErrNotFound) },
		"failed-statement": func(err error) bool { return err != nil && strings.Contains(err.Error(), "refused by the test") },
		"refused-update":   func(err error) bool { var ve *store.ValidationError; return errors.As(err, &ve) },
	}
	for name, a := range answers {
		if check, ok := wantErr[name]; ok {
			if !check(a.err) || a.res != nil {
				t.Errorf("%s: answered %+v, %v; want its own error", name, a.res, a.err)
			}
			continue
		}
		if a.err != nil {
			t.Errorf("%s: %v", name, a.err)
		}
	}
	if t.Failed() {
		return
	}
	if !answers["replay"].res.Replayed {
		t.Errorf("replay: not answered as a replay")
	}
	if got := answers["update"].res; got.Run.Status != store.StatusInProgress || len(got.Events) != 1 {
		t.Errorf("update: %+v", got)
	}

	// Every succeeding append is stored once, at the seq it was answered.
	for name, ref := range map[string]store.RunRef{"leader": refs[7], "ok-0": refs[0], "ok-3a": refs[3], "ok-3b": refs[3], "ok-4": refs[4]} {
		a := answers[name]
		seqs := storedTags(t, s, ref)[name]
		if len(a.res.Events) != 1 || !slices.Equal(seqs, []int64{a.res.Events[0].Seq}) {
			t.Errorf("%s: answered seqs %v, stored at %v", name, seqsOf(a.res.Events), seqs)
		}
		if a.res.Run.LastSeq != a.res.Events[0].Seq {
			t.Errorf("%s: answered run last_seq %d, its event seq %d", name, a.res.Run.LastSeq, a.res.Events[0].Seq)
		}
	}
	// Failed members left nothing: their runs hold exactly what succeeded.
	wantLast := map[int]int64{0: 1, 1: 0, 2: 0, 3: 2, 4: 1, 5: 0, 6: 1, 7: 1} // events added to each run
	for i, ref := range refs {
		run, err := s.GetRun(ctx, ref)
		must(t, err)
		if want := lastBefore[ref.RunID] + wantLast[i]; run.LastSeq != want {
			t.Errorf("run %d: last_seq %d, want %d", i, run.LastSeq, want)
		}
		tags := storedTags(t, s, ref)
		for _, failed := range []string{"mismatch", "replay", "unknown", "failed-statement"} {
			if len(tags[failed]) > 0 {
				t.Errorf("run %d: the failed %q is stored at %v", i, failed, tags[failed])
			}
		}
	}
	// The failed statement's key was not recorded: the same key, once the
	// trigger is gone, applies rather than replays.
	execSQL(t, path, "DROP TRIGGER fail_key")
	res, err := s.AppendLog(ctx, refs[4], tagged(t, "retry", ""), &store.Idempotency{Key: "fail-1", RequestHash: []byte("h")})
	must(t, err)
	if res.Replayed {
		t.Errorf("the key of the failed mutation was recorded")
	}
}

// TestGroupCommitCallerGivesUp: a caller whose context ends while it waits
// in the queue is answered with the context's error and stores nothing;
// the rest of the queue commits.
func TestGroupCommitCallerGivesUp(t *testing.T) {
	var batches batchSizes
	s, path, refs := groupFixture(t, 3, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	giveUp, cancel := context.WithCancel(ctx)
	var gaveUp, other error
	release := holdWriteLock(t, path)
	before := len(batches.seen())
	var wg sync.WaitGroup
	var leader error
	wg.Go(func() { _, leader = s.AppendLog(ctx, refs[0], tagged(t, "leader", ""), nil) })
	waitFor(t, "the leader to start its batch", func() bool { return len(batches.seen()) > before })
	wg.Go(func() { _, gaveUp = s.AppendLog(giveUp, refs[1], tagged(t, "gave-up", ""), nil) })
	waitFor(t, "the first to queue", func() bool { return s.QueuedWrites() == 1 })
	wg.Go(func() { _, other = s.AppendLog(ctx, refs[2], tagged(t, "other", ""), nil) })
	waitFor(t, "the second to queue", func() bool { return s.QueuedWrites() == 2 })
	cancel()
	waitFor(t, "the caller that gave up to leave the queue", func() bool { return s.QueuedWrites() == 1 })
	release()
	wg.Wait()
	if !errors.Is(gaveUp, context.Canceled) {
		t.Errorf("caller that gave up: %v, want context.Canceled", gaveUp)
	}
	must(t, leader)
	must(t, other)
	if tags := storedTags(t, s, refs[1]); len(tags) != 0 {
		t.Errorf("the caller that gave up stored %v", tags)
	}
	if tags := storedTags(t, s, refs[2]); len(tags["other"]) != 1 {
		t.Errorf("the other queued caller stored %v", tags)
	}
}

// cancelCaller is the cancel function the SQL function
// test_cancel_caller() calls (TestWriteOutlivesCallerContext).
var (
	cancelCallerOnce sync.Once
	cancelCaller     atomic.Pointer[context.CancelFunc]
)

// TestWriteOutlivesCallerContext: a mutation whose turn began runs to its
// commit even when its caller's context ends meanwhile (the transaction is
// detached, alone as in a batch), and the caller is told it is stored. A
// trigger cancels the caller's context from inside the mutation's INSERT:
// with the caller's context on the transaction, the commit that follows
// was refused (and database/sql rolled the transaction back).
func TestWriteOutlivesCallerContext(t *testing.T) {
	cancelCallerOnce.Do(func() {
		err := modsqlite.RegisterScalarFunction("test_cancel_caller", 0, func(*modsqlite.FunctionContext, []driver.Value) (driver.Value, error) {
			if f := cancelCaller.Load(); f != nil {
				(*f)()
			}
			return nil, nil
		})
		must(t, err)
	})
	s, path, refs := groupFixture(t, 1)
	execSQL(t, path, `CREATE TRIGGER cancel_caller AFTER INSERT ON run_events WHEN instr(NEW.data, '"cancel":true') > 0
		BEGIN SELECT test_cancel_caller(); END`)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cancelCaller.Store(&cancel)
	defer cancelCaller.Store(nil)
	res, err := s.AppendLog(ctx, refs[0], tagged(t, "cancelled", `,"cancel":true`), nil)
	if ctx.Err() == nil {
		t.Fatal("the trigger did not cancel the caller's context")
	}
	if err != nil {
		t.Fatalf("append whose caller gave up during its turn: %v, want it stored", err)
	}
	if tags := storedTags(t, s, refs[0]); len(tags["cancelled"]) != 1 || res.Run.LastSeq != tags["cancelled"][0] {
		t.Errorf("stored %v, answered last_seq %d", tags, res.Run.LastSeq)
	}
	// A caller whose context ended before its turn is refused, and stores nothing.
	if _, err := s.AppendLog(ctx, refs[0], tagged(t, "late", ""), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("append with an ended context: %v, want context.Canceled", err)
	}
	if tags := storedTags(t, s, refs[0]); len(tags["late"]) != 0 {
		t.Errorf("an append with an ended context stored %v", tags["late"])
	}
}

// TestGroupCommitFailedCommit: when the COMMIT of a batch fails, every
// member is answered with that error and none of the batch is stored (not
// even members that did nothing wrong); the writer connection is left
// usable, so the same appends succeed afterwards, at contiguous seqs. An
// uncontended mutation whose commit fails leaves the connection usable too.
func TestGroupCommitFailedCommit(t *testing.T) {
	var batches batchSizes
	s, path, refs := groupFixture(t, 6, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	execSQL(t, path, poisonCommitSQL...)

	// Alone.
	_, err := s.AppendLog(ctx, refs[0], tagged(t, "poison-alone", `,"poison":true`), nil)
	if err == nil || !strings.Contains(err.Error(), "FOREIGN KEY") {
		t.Fatalf("a poisoned commit: %v, want its commit's error", err)
	}
	res, err := s.AppendLog(ctx, refs[0], tagged(t, "after-alone", ""), nil)
	if err != nil {
		t.Fatalf("an append after a failed commit: %v", err)
	}
	if res.Events[0].Seq != 2 {
		t.Errorf("append after a failed commit has seq %d, want 2", res.Events[0].Seq)
	}

	// In a batch.
	errs := make([]error, len(refs))
	others := make([]func(), 0, len(refs)-1)
	for i := 1; i < len(refs); i++ {
		extra := ""
		if i == 3 {
			extra = `,"poison":true`
		}
		others = append(others, func() {
			_, errs[i] = s.AppendLog(ctx, refs[i], tagged(t, fmt.Sprintf("batch-%d", i), extra), &store.Idempotency{Key: "b", RequestHash: []byte("h")})
		})
	}
	queueBehindLeader(t, s, path, &batches, func() {
		_, errs[0] = s.AppendLog(ctx, refs[0], tagged(t, "leader", ""), nil)
	}, others)
	if sizes := batches.seen(); !slices.Contains(sizes, len(others)) {
		t.Fatalf("batch sizes %v: the %d queued appends did not share one batch", sizes, len(others))
	}
	must(t, errs[0])
	for i := 1; i < len(refs); i++ {
		if errs[i] == nil || !strings.Contains(errs[i].Error(), "commit") {
			t.Errorf("member %d of the failed batch: %v, want the commit's error", i, errs[i])
		}
		if tags := storedTags(t, s, refs[i]); len(tags) != 0 {
			t.Errorf("member %d of the failed batch stored %v", i, tags)
		}
	}
	// Nothing of the batch was kept, idempotency keys included: the same
	// requests apply (not replay), at the next seqs.
	execSQL(t, path, "DROP TRIGGER poison_commit")
	for i := 1; i < len(refs); i++ {
		res, err := s.AppendLog(ctx, refs[i], tagged(t, fmt.Sprintf("batch-%d", i), ""), &store.Idempotency{Key: "b", RequestHash: []byte("h")})
		must(t, err)
		if res.Replayed || res.Events[0].Seq != 2 {
			t.Errorf("member %d retried: replayed %v seq %v, want applied at 2", i, res.Replayed, seqsOf(res.Events))
		}
		if tags := storedTags(t, s, refs[i]); !slices.Equal(tags[fmt.Sprintf("batch-%d", i)], []int64{2}) {
			t.Errorf("member %d retried: stored %v", i, tags)
		}
	}
}

// TestGroupCommitConcurrent: many callers append to many runs at once,
// some of them failing (an idempotency mismatch, an unknown run, a
// statement refused after the entry was written); every successful answer's
// entry is stored exactly once, at the seq it was answered, every failed
// one nowhere, and every run's seqs stay contiguous. Some batches held
// more than one mutation, so the failures happened inside shared commits.
func TestGroupCommitConcurrent(t *testing.T) {
	const callers, perCaller, runs = 24, 40, 16
	var batches batchSizes
	s, path, refs := groupFixture(t, runs, sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	execSQL(t, path, failStatementTrigger)
	for _, ref := range refs {
		_, err := s.AppendLog(ctx, ref, tagged(t, "keyed", ""), &store.Idempotency{Key: "taken", RequestHash: []byte("h1")})
		must(t, err)
	}
	unknown := refs[0]
	unknown.RunID = "00000000-0000-4000-8000-000000000000"

	type outcome struct {
		ref  store.RunRef
		tag  string
		seq  int64 // 0: failed
		fail bool  // expected to fail
	}
	results := make([][]outcome, callers)
	var wrongAnswers atomic.Int64
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for i := range perCaller {
				ref := refs[rng.IntN(runs)]
				tag := fmt.Sprintf("c%d-%d", c, i)
				var idem *store.Idempotency
				fail := true
				switch rng.IntN(8) {
				case 0:
					idem = &store.Idempotency{Key: "taken", RequestHash: []byte("h2")}
				case 1:
					ref = unknown
				case 2:
					idem = &store.Idempotency{Key: "fail-" + tag, RequestHash: []byte("h")}
				case 3:
					idem = &store.Idempotency{Key: "ok-" + tag, RequestHash: []byte("h")}
					fail = false
				default:
					fail = false
				}
				res, err := s.AppendLog(ctx, ref, tagged(t, tag, ""), idem)
				o := outcome{ref: ref, tag: tag, fail: fail}
				if err == nil {
					if len(res.Events) != 1 || res.Replayed {
						wrongAnswers.Add(1)
					} else {
						o.seq = res.Events[0].Seq
					}
				}
				if (err != nil) != fail {
					t.Errorf("%s: error %v, expected to fail: %v", tag, err, fail)
				}
				results[c] = append(results[c], o)
			}
		})
	}
	wg.Wait()
	if n := wrongAnswers.Load(); n > 0 {
		t.Fatalf("%d successful answers without exactly one event", n)
	}
	stored := map[string]map[string][]int64{}
	for _, ref := range refs {
		stored[ref.RunID] = storedTags(t, s, ref)
	}
	successes := 0
	for _, rs := range results {
		for _, o := range rs {
			got := stored[o.ref.RunID][o.tag]
			switch {
			case o.seq == 0 && len(got) > 0:
				t.Errorf("%s failed but is stored at %v", o.tag, got)
			case o.seq != 0 && !slices.Equal(got, []int64{o.seq}):
				t.Errorf("%s answered seq %d, stored at %v", o.tag, o.seq, got)
			}
			if o.seq != 0 {
				successes++
			}
		}
	}
	stray := 0
	for _, tags := range stored {
		stray += len(tags) - 1 // "keyed" is each run's first entry
	}
	if stray != successes {
		t.Errorf("%d entries stored, %d appends succeeded", stray, successes)
	}
	shared := 0
	for _, n := range batches.seen() {
		if n > 1 {
			shared++
		}
	}
	t.Logf("%d appends succeeded; %d batches, %d of them shared", successes, len(batches.seen()), shared)
	if shared == 0 {
		t.Errorf("no batch held more than one mutation: group commit was not exercised")
	}
}

func seqsOf(evs []store.Event) []int64 {
	out := make([]int64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

// TestGroupCommitPanic: a mutation that panics makes its own caller panic
// (with the original message), alone or inside a batch; the batch's other
// members are answered and stored as if it had failed, and the writer goes
// on taking writes rather than waiting forever for a batch that died.
func TestGroupCommitPanic(t *testing.T) {
	var batches batchSizes
	s, path, refs := groupFixture(t, 2, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	panicking := func() (recovered any) {
		defer func() { recovered = recover() }()
		s.WriteFunc(ctx, func() { panic("boom") })
		return nil
	}

	if r := panicking(); r == nil || !strings.Contains(fmt.Sprint(r), "boom") {
		t.Fatalf("a lone panicking mutation: its caller recovered %v, want the panic", r)
	}
	done := make(chan error, 1)
	go func() { _, err := s.AppendLog(ctx, refs[0], tagged(t, "after-alone", ""), nil); done <- err }()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the writer is stuck after a panicking mutation")
	}

	var recovered any
	var appended error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		queueBehindLeader(t, s, path, &batches, func() {
			if _, err := s.AppendLog(ctx, refs[0], tagged(t, "leader", ""), nil); err != nil {
				t.Errorf("leader: %v", err)
			}
		}, []func(){
			func() { recovered = panicking() },
			func() { _, appended = s.AppendLog(ctx, refs[1], tagged(t, "beside-the-panic", ""), nil) },
		})
	}()
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		t.Fatal("a batch holding a panicking mutation never answered")
	}
	if sizes := batches.seen(); !slices.Contains(sizes, 2) {
		t.Fatalf("batch sizes %v: the panicking mutation did not share a batch", sizes)
	}
	if recovered == nil || !strings.Contains(fmt.Sprint(recovered), "boom") {
		t.Errorf("the panicking member's caller recovered %v, want the panic", recovered)
	}
	must(t, appended)
	if tags := storedTags(t, s, refs[1]); len(tags["beside-the-panic"]) != 1 {
		t.Errorf("the member beside the panic stored %v", tags)
	}
	_, err := s.AppendLog(ctx, refs[1], tagged(t, "after-batch", ""), nil)
	must(t, err)
}

// TestGroupCommitBound: no batch carries more than MaxGroupCommit
// mutations; the callers past it wait for the next batch, and all of them
// are stored.
func TestGroupCommitBound(t *testing.T) {
	const extra = 5
	var batches batchSizes
	n := sqlite.MaxGroupCommit + extra
	s, path, refs := groupFixture(t, n+1, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	errs := make([]error, n)
	others := make([]func(), n)
	for i := range others {
		others[i] = func() { _, errs[i] = s.AppendLog(ctx, refs[i+1], tagged(t, "queued", ""), nil) }
	}
	before := len(batches.seen())
	queueBehindLeader(t, s, path, &batches, func() {
		if _, err := s.AppendLog(ctx, refs[0], tagged(t, "leader", ""), nil); err != nil {
			t.Errorf("leader: %v", err)
		}
	}, others)
	if got, want := batches.seen()[before:], []int{1, sqlite.MaxGroupCommit, extra}; !slices.Equal(got, want) {
		t.Errorf("batch sizes %v, want %v", got, want)
	}
	for i, err := range errs {
		must(t, err)
		if tags := storedTags(t, s, refs[i+1]); len(tags["queued"]) != 1 {
			t.Errorf("queued %d stored %v", i, tags)
		}
	}
}

// TestGroupCommitLeaderGoesOn: the leader runs the batches queued behind
// it itself, up to MaxLeaderBatches in all, rather than wake a queued
// caller for each (a wake-up that waits for a CPU under load while the
// writer idles); only the rest is handed to a queued caller, and every
// mutation is stored once.
func TestGroupCommitLeaderGoesOn(t *testing.T) {
	const extra = 2 // batches past what the leader runs
	var batches batchSizes
	n := (sqlite.MaxLeaderBatches - 1 + extra) * sqlite.MaxGroupCommit
	s, path, refs := groupFixture(t, n+1, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	errs := make([]error, n)
	others := make([]func(), n)
	for i := range others {
		others[i] = func() { _, errs[i] = s.AppendLog(ctx, refs[i+1], tagged(t, "queued", ""), nil) }
	}
	before, handOffs := len(batches.seen()), s.HandOffs()
	queueBehindLeader(t, s, path, &batches, func() {
		if _, err := s.AppendLog(ctx, refs[0], tagged(t, "leader", ""), nil); err != nil {
			t.Errorf("leader: %v", err)
		}
	}, others)
	want := []int{1}
	for range sqlite.MaxLeaderBatches - 1 + extra {
		want = append(want, sqlite.MaxGroupCommit)
	}
	if got := batches.seen()[before:]; !slices.Equal(got, want) {
		t.Errorf("batch sizes %v, want %v", got, want)
	}
	// The leader ran its own and MaxLeaderBatches-1 more; the next leader
	// runs the extra ones.
	if got := s.HandOffs() - handOffs; got != 1 {
		t.Errorf("%d hand-offs, want 1", got)
	}
	for i, err := range errs {
		must(t, err)
		if tags := storedTags(t, s, refs[i+1]); len(tags["queued"]) != 1 {
			t.Errorf("queued %d stored %v", i, tags)
		}
	}
}

// tryWriteLock takes and releases the write lock of the database at path
// from a connection of its own, without waiting: it fails when another
// connection has a write transaction open.
func tryWriteLock(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(0)")
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, "ROLLBACK")
	return err
}

// TestExclusiveRunsAlone: a function run in the group's exclusive section
// (the checkpointer's, see walRestartFrames) runs while the store's writer
// has no transaction open (another connection takes the write lock at
// once), after the batch that ran when it asked and before the writes
// queued behind it, and never in a batch with them: they run together
// after it.
func TestExclusiveRunsAlone(t *testing.T) {
	var batches batchSizes
	s, path, refs := groupFixture(t, 3, sqlite.WithBusyTimeout(groupBusyTimeout), sqlite.WithBatchHook(batches.hook))
	ctx := t.Context()
	release := holdWriteLock(t, path)
	before := len(batches.seen())
	var mu sync.Mutex
	var order []string
	note := func(what string) {
		mu.Lock()
		order = append(order, what)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := s.AppendLog(ctx, refs[0], tagged(t, "leader", ""), nil); err != nil {
			t.Errorf("leader: %v", err)
		}
	})
	waitFor(t, "the leader to start its batch", func() bool { return len(batches.seen()) > before })
	var lockErr error
	wg.Go(func() {
		if err := s.Exclusive(ctx, func() {
			note("exclusive")
			lockErr = tryWriteLock(ctx, path)
		}); err != nil {
			t.Errorf("exclusive: %v", err)
		}
	})
	waitFor(t, "the exclusive section to queue", func() bool { return s.QueuedWrites() == 1 })
	for i := 1; i <= 2; i++ {
		wg.Go(func() {
			if _, err := s.AppendLog(ctx, refs[i], tagged(t, "after", ""), nil); err != nil {
				t.Errorf("append %d: %v", i, err)
			}
			note("after")
		})
	}
	waitFor(t, "the appends to queue behind it", func() bool { return s.QueuedWrites() == 3 })
	release()
	wg.Wait()
	if got, want := batches.seen()[before:], []int{1, 1, 2}; !slices.Equal(got, want) {
		t.Errorf("batch sizes %v, want %v (leader, exclusive section, the appends behind it)", got, want)
	}
	if want := []string{"exclusive", "after", "after"}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if lockErr != nil {
		t.Errorf("the writer had a transaction open during the exclusive section: %v", lockErr)
	}
	for i := 1; i <= 2; i++ {
		if tags := storedTags(t, s, refs[i]); len(tags["after"]) != 1 {
			t.Errorf("run %d stored %v", i, tags)
		}
	}
}
