package sqlite_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
)

// perfRuns opens a fresh store holding n runs (of one task) and returns it
// with their refs.
func perfRuns(tb testing.TB, n int, opts ...sqlite.Option) (*sqlite.Store, []store.RunRef) {
	tb.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, tb.TempDir()+"/runhub.db", opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	p, err := s.CreateProject(ctx, "Perf")
	if err != nil {
		tb.Fatal(err)
	}
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "perf", OriginProduct: "user_created"})
	if err != nil {
		tb.Fatal(err)
	}
	refs := make([]store.RunRef, n)
	for i := range refs {
		res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress})
		if err != nil {
			tb.Fatal(err)
		}
		refs[i] = store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	}
	return s, refs
}

// appendAllocBound is the most heap allocations one AppendLog of one entry
// on an existing run (no idempotency key) may make in the store, the
// driver and database/sql included. Measured 76 when the bound was set
// (136 to 138 before appends read the run from the writer's cache, see
// runCache: reading the whole row was ~55 of them; 83 before they stopped
// writing the run's row, see maxSeq; most of the rest is database/sql and
// the driver, ~15 per statement). Two over, so that one more statement
// per append, or a few more copies, fails.
const appendAllocBound = 78

// TestAppendAllocs: the allocations of the per-append path are counted
// (deterministic, unlike its time), so that a change that adds a
// statement, a copy or a map per append fails here.
func TestAppendAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's own allocations are counted too")
	}
	if testing.Short() {
		t.Skip("allocation count is measured without -short")
	}
	// AllocsPerRun counts the whole process's allocations: the store's
	// checkpointer, when its interval ends during the count, added its own
	// (a checkpoint's query) to the appends' and made the count move
	// between 77 and 79. It is kept from running here.
	s, refs := perfRuns(t, 1, sqlite.WithCheckpoints(time.Hour, 1<<30, nil))
	ctx := context.Background()
	batch := benchBatch(t, 0, 1)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := s.AppendLog(ctx, refs[0], batch, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("AppendLog of one entry: %.1f allocs", allocs)
	if allocs > appendAllocBound {
		t.Errorf("AppendLog of one entry made %.1f allocations, bound %d", allocs, appendAllocBound)
	}
}

// BenchmarkAppendPath measures the durable per-append path as append_log
// drives it: one entry of about 200 bytes per call, on an existing run.
// "single" is one caller after another (no concurrency: the latency of an
// uncontended append); "concurrent" is 64 callers appending to 2,000 runs
// at once, the many-runs shape, where appends of different runs may share
// a commit. ns/append is wall time per append over all callers, so it is
// the store's throughput cost, not one caller's latency; cpu-ns/append is
// the process's CPU time per append (the figure the many-runs goal is
// stated in), appends/commit how many appends shared a commit.
func BenchmarkAppendPath(b *testing.B) {
	b.Run("single", func(b *testing.B) {
		s, refs := perfRuns(b, 1)
		ctx := context.Background()
		batch := benchBatch(b, 0, 1)
		m := startMallocs()
		n := 0
		for b.Loop() {
			if _, err := s.AppendLog(ctx, refs[0], batch, nil); err != nil {
				b.Fatal(err)
			}
			n++
		}
		m.report(b, n)
	})
	b.Run("keyed", func(b *testing.B) {
		// An agent's append with a batch seq carries an idempotency key;
		// a long run has recorded many (kept 48 h), and recording the
		// next one also expires the run's old ones.
		const recorded = 5000
		s, refs := perfRuns(b, 1)
		ctx := context.Background()
		batch := benchBatch(b, 0, 1)
		for i := range recorded {
			if _, err := s.AppendLog(ctx, refs[0], batch, &store.Idempotency{Key: fmt.Sprint("pre-", i), RequestHash: []byte("h")}); err != nil {
				b.Fatal(err)
			}
		}
		m := startMallocs()
		n := 0
		for b.Loop() {
			if _, err := s.AppendLog(ctx, refs[0], batch, &store.Idempotency{Key: fmt.Sprint("k-", n), RequestHash: []byte("h")}); err != nil {
				b.Fatal(err)
			}
			n++
		}
		m.report(b, n)
	})
	b.Run("concurrent", func(b *testing.B) {
		const callers, runs = 64, 2000
		var batches, members atomic.Int64
		s, refs := perfRuns(b, runs, sqlite.WithBatchHook(func(n int) { batches.Add(1); members.Add(int64(n)) }))
		ctx := context.Background()
		pool := make([][]store.LogEntry, 64)
		for i := range pool {
			pool[i] = benchBatch(b, i, 1)
		}
		var next atomic.Int64
		batches.Store(0)
		members.Store(0)
		b.ResetTimer()
		m := startMallocs()
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(b.N) {
						return
					}
					if _, err := s.AppendLog(ctx, refs[i%runs], pool[i%64], nil); err != nil {
						errs <- fmt.Errorf("append %d: %w", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		m.report(b, b.N)
		b.ReportMetric(float64(members.Load())/float64(max(1, batches.Load())), "appends/commit")
	})
}

// meter counts heap allocations and the process's CPU time from a start
// point, for allocs/append and cpu-ns/append (CPU, not wall time: what an
// append costs the server, whatever else the machine runs).
type meter struct {
	mallocs uint64
	cpu     time.Duration
}

func startMallocs() meter {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return meter{mallocs: ms.Mallocs, cpu: cpuTime()}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// report adds ns/append (wall), cpu-ns/append and allocs/append over n appends.
func (m meter) report(b *testing.B, n int) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/append")
	b.ReportMetric(float64(cpuTime()-m.cpu)/float64(n), "cpu-ns/append")
	b.ReportMetric(float64(ms.Mallocs-m.mallocs)/float64(n), "allocs/append")
}
