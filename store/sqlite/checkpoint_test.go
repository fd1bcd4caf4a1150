package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
)

// TestCheckpointBoundsWAL: under sustained appends, while readers that
// overlap one another keep a snapshot of the WAL open at every moment (so
// that it can never restart from its start, and SQLite's own automatic
// checkpoint lets it grow without end), the store's checkpointer keeps the
// WAL file bounded; everything appended is intact after Close and reopen.
func TestCheckpointBoundsWAL(t *testing.T) {
	const (
		hardFrames = 200 // 800 KiB of 4 KiB pages
		appends    = 2000
		runs       = 50
		interval   = 20 * time.Millisecond
		// Each of 4 callers waits 2 ms between appends: at most 2,000
		// appends/s, so that what an interval adds is known.
		callers = 4
		pause   = 2 * time.Millisecond
		// maxWAL is what the WAL file may reach: the hard bound, and what
		// the appends of an interval and of a TRUNCATE's wait for the
		// readers (10 ms) add past it: about 8 KiB per append, so 0.5 MiB
		// at 2,000 appends/s; 4 MiB leaves room for a slow machine's
		// late checkpoints. SQLite's own checkpoint lets the WAL reach
		// 17 MiB here (and grow with every append).
		maxWAL = 4 << 20
	)
	var passive, truncate atomic.Int64
	path := t.TempDir() + "/runhub.db"
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path, sqlite.WithCheckpoints(interval, hardFrames, func(mode string, frames int) {
		switch mode {
		case "PASSIVE":
			passive.Add(1)
		case "TRUNCATE":
			truncate.Add(1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.CreateProject(ctx, "WAL")
	if err != nil {
		t.Fatal(err)
	}
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "wal", OriginProduct: "user_created"})
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]store.RunRef, runs)
	for i := range refs {
		res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress})
		if err != nil {
			t.Fatal(err)
		}
		refs[i] = store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	}

	// Two readers on their own connections, each holding a read
	// transaction 10 ms and starting its next at once, staggered by 5 ms:
	// some reader always holds a snapshot of the WAL.
	rdb, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	rdb.SetMaxOpenConns(2)
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readErrs := make(chan error, 2)
	for i := range 2 {
		time.Sleep(time.Duration(i) * 5 * time.Millisecond)
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tx, err := rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
				if err != nil {
					readErrs <- err
					return
				}
				var n int
				if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM runs").Scan(&n); err != nil {
					tx.Rollback()
					readErrs <- err
					return
				}
				time.Sleep(10 * time.Millisecond)
				tx.Rollback()
			}
		})
	}

	var largest int64
	appended := appendSteadily(ctx, t, s, refs, callers, appends, pause)
	watch := make(chan struct{})
	go func() {
		defer close(watch)
		for {
			if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > atomic.LoadInt64(&largest) {
				atomic.StoreInt64(&largest, fi.Size())
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	appendErr := <-appended
	close(stop)
	readers.Wait()
	<-watch
	close(readErrs)
	if appendErr != nil {
		t.Fatal(appendErr)
	}
	for err := range readErrs {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > largest {
		largest = fi.Size()
	}
	t.Logf("largest WAL %d KiB; %d passive and %d truncate checkpoints", largest>>10, passive.Load(), truncate.Load())
	if largest > maxWAL {
		t.Errorf("the WAL reached %d KiB, bound %d KiB", largest>>10, maxWAL>>10)
	}
	if passive.Load() == 0 {
		t.Error("no checkpoint ran while appends went on")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, ref := range refs {
		r, err := s.GetRun(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(appends/runs + 1) // the entries, after the run's first event
		if r.LastSeq != want {
			t.Fatalf("run %d: last_seq %d after reopen, want %d", i, r.LastSeq, want)
		}
		evs, err := s.Events(ctx, ref.RunID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(evs)) != want {
			t.Fatalf("run %d: %d events after reopen, want %d", i, len(evs), want)
		}
	}
}

// TestCloseStopsCheckpointer: Close waits for the checkpointer's goroutine
// (and every other the store started), even while a checkpoint is due.
func TestCloseStopsCheckpointer(t *testing.T) {
	ctx := context.Background()
	before := runtime.NumGoroutine()
	for range 5 {
		var ran atomic.Int64
		s, err := sqlite.Open(ctx, t.TempDir()+"/runhub.db",
			sqlite.WithCheckpoints(time.Millisecond, 1<<20, func(string, int) { ran.Add(1) }))
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.CreateProject(ctx, "Leak")
		if err != nil {
			t.Fatal(err)
		}
		task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "leak", OriginProduct: "user_created"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for ran.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if ran.Load() == 0 {
			t.Fatal("the checkpointer never ran after a commit")
		}
		if _, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress}); err != nil { // a checkpoint is due again
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// database/sql's goroutines end asynchronously after Close; give
	// them a moment, but the store's own must be gone.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before Open", n, before)
	}
}

// TestCheckpointRestartsWAL: under appends that never pause for as long
// as a checkpoint takes (its syncs), so that a PASSIVE checkpoint never
// copies the whole WAL before the next commit and SQLite never starts it
// over, and with no reader holding it, the checkpointer still keeps the WAL
// near its restart bound: it finishes the copy with writes held, and the
// next write starts the WAL over. No TRUNCATE checkpoint is needed (it
// would hold writes while it waits for readers). Without that, the WAL
// grows with every append until the hard bound.
func TestCheckpointRestartsWAL(t *testing.T) {
	const (
		restartFrames = 100
		hardFrames    = 1 << 30 // never: the restart alone must bound the WAL
		interval      = 20 * time.Millisecond
		appends       = 3000
		runs          = 50
		// 4 callers, 1 ms between appends each: at most 4,000 appends/s,
		// a commit every 0.25 ms, far less than two syncs take.
		callers = 4
		pause   = time.Millisecond
		// maxFrames is what a checkpoint may find: the restart bound and
		// what an interval and a checkpoint add, about 2 frames per append
		// at 4,000/s (160 per 20 ms), with room for a slow machine's late
		// checkpoints. Without the restart, the WAL reaches several
		// thousand here.
		maxFrames = 1000
	)
	var largest, passive, truncate atomic.Int64
	ctx := context.Background()
	s, refs := perfRuns(t, runs, sqlite.WithWALRestart(restartFrames),
		sqlite.WithCheckpoints(interval, hardFrames, func(mode string, frames int) {
			switch mode {
			case "PASSIVE":
				passive.Add(1)
			case "TRUNCATE":
				truncate.Add(1)
			}
			for {
				l := largest.Load()
				if int64(frames) <= l || largest.CompareAndSwap(l, int64(frames)) {
					break
				}
			}
		}))
	if err := <-appendSteadily(ctx, t, s, refs, callers, appends, pause); err != nil {
		t.Fatal(err)
	}
	t.Logf("largest WAL a checkpoint found: %d frames; %d passive and %d truncate checkpoints", largest.Load(), passive.Load(), truncate.Load())
	if largest.Load() > maxFrames {
		t.Errorf("the WAL reached %d frames, bound %d", largest.Load(), maxFrames)
	}
	if truncate.Load() != 0 {
		t.Errorf("%d TRUNCATE checkpoints, want none", truncate.Load())
	}
	if passive.Load() == 0 {
		t.Error("no checkpoint ran while appends went on")
	}
	for i, ref := range refs {
		r, err := s.GetRun(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(appends/runs + 1); r.LastSeq != want {
			t.Fatalf("run %d: last_seq %d, want %d", i, r.LastSeq, want)
		}
	}
}

// appendSteadily has callers append one entry each, pause apart, to refs in
// turn until appends were made; the channel it returns is told the first
// error (or nil) once all of them are done.
func appendSteadily(ctx context.Context, t *testing.T, s *sqlite.Store, refs []store.RunRef, callers, appends int, pause time.Duration) <-chan error {
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			for {
				time.Sleep(pause)
				i := int(next.Add(1) - 1)
				if i >= appends {
					return
				}
				if _, err := s.AppendLog(ctx, refs[i%len(refs)], benchBatch(t, i, 1), nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	done := make(chan error, 1)
	go func() {
		wg.Wait()
		close(errs)
		done <- <-errs // the first error, or nil once closed
	}()
	return done
}
