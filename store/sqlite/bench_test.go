package sqlite_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
)

// templateDir holds prefilled database files shared by the benchmarks of
// one `go test` process; building the 1M-entry one takes a while, so it is
// built once and copied for each benchmark that needs it.
var (
	templateMu  sync.Mutex
	templateDir string
	templates   = map[int]template{}
)

// template is a closed database file whose run holds n log entries.
type template struct {
	path string
	ref  store.RunRef
}

func TestMain(m *testing.M) {
	code := m.Run()
	templateMu.Lock()
	if templateDir != "" {
		os.RemoveAll(templateDir)
	}
	templateMu.Unlock()
	os.Exit(code)
}

// benchEntry is a realistic agent notification of about 200 bytes.
func benchEntry(i int) []byte {
	return fmt.Appendf(nil, `{"type":"notification","timestamp":"2026-11-28T21:%02d:%02d.%06dZ","notification":{`+
		`"method":"session/update","params":{"update":{"sessionUpdate":"tool_call_update",`+
		`"toolCallId":"toolu_%08d","status":"completed"}}}}`, i/60%60, i%60, i%1000000, i)
}

// benchBatch parses n entries numbered from first.
func benchBatch(tb testing.TB, first, n int) []store.LogEntry {
	tb.Helper()
	now := time.Now()
	out := make([]store.LogEntry, n)
	for i := range out {
		e, err := store.ParseLogEntry(benchEntry(first+i), now)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = e
	}
	return out
}

// prefilled returns the template database with n entries in one run,
// building it on first use.
func prefilled(b *testing.B, n int) template {
	templateMu.Lock()
	defer templateMu.Unlock()
	if tpl, ok := templates[n]; ok {
		return tpl
	}
	if templateDir == "" {
		dir, err := os.MkdirTemp("", "runhub-bench-")
		if err != nil {
			b.Fatal(err)
		}
		templateDir = dir
	}
	ctx := context.Background()
	path := filepath.Join(templateDir, fmt.Sprintf("prefill-%d.db", n))
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	p, err := s.CreateProject(ctx, "Bench")
	if err != nil {
		b.Fatal(err)
	}
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "bench", OriginProduct: "user_created"})
	if err != nil {
		b.Fatal(err)
	}
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress})
	if err != nil {
		b.Fatal(err)
	}
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	const prefillBatch = 1000
	start := time.Now()
	for done := 0; done < n; done += prefillBatch {
		if _, err := s.AppendLog(ctx, ref, benchBatch(b, done, min(prefillBatch, n-done)), nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.Logf("prefilled %d entries in %v", n, time.Since(start).Round(time.Millisecond))
	tpl := template{path: path, ref: ref}
	templates[n] = tpl
	return tpl
}

// copyFile copies src to dst; a missing src is not an error when optional.
func copyFile(dst, src string, optional bool) error {
	in, err := os.Open(src)
	if optional && os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BenchmarkAppendLog measures append_log on a run that already holds many
// entries: one op is one AppendLog call of `batch` entries; entries/s is the
// store's write throughput. Each benchmark starts from a fresh copy of the
// prefilled file, so the run holds exactly `prefill` entries at the start.
func BenchmarkAppendLog(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			for _, prefill := range []int{10_000, 1_000_000} {
				b.Run(fmt.Sprintf("prefill=%d", prefill), func(b *testing.B) {
					if prefill > 10_000 && testing.Short() {
						b.Skip("1M-entry prefill skipped in -short mode")
					}
					benchAppend(b, prefill, batch)
				})
			}
		})
	}
}

func benchAppend(b *testing.B, prefill, batch int) {
	tpl := prefilled(b, prefill)
	path := filepath.Join(b.TempDir(), "runhub.db")
	for _, suffix := range []string{"", "-wal"} {
		if err := copyFile(path+suffix, tpl.path+suffix, suffix != ""); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// Parse a pool of batches up front: parsing is the REST layer's cost,
	// not the store's.
	pool := make([][]store.LogEntry, 64)
	for i := range pool {
		pool[i] = benchBatch(b, prefill+i*batch, batch)
	}
	calls := 0
	for b.Loop() {
		if _, err := s.AppendLog(ctx, tpl.ref, pool[calls%len(pool)], nil); err != nil {
			b.Fatal(err)
		}
		calls++
	}
	b.ReportMetric(float64(calls*batch)/b.Elapsed().Seconds(), "entries/s")
}
