package rest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"runhub/cmd/node"
	"runhub/store"
	"runhub/store/sqlite"
)

// BenchmarkAppendLogHTTP measures append_log through the whole HTTP stack
// (auth, decode, validation, SQLite transaction, publication to the hub)
// with concurrent clients: batches on one run, and one 200 B entry per
// request spread over many runs (the shape of runhub-bench many-runs).
// ns/op, cpu-ns/op and allocs/op are per request, client and server
// together (both run in this process).
func BenchmarkAppendLogHTTP(b *testing.B) {
	entry := map[string]any{"type": "notification", "timestamp": "2026-11-28T21:04:05.123456Z",
		"notification": map[string]any{"jsonrpc": "2.0", "method": "session/update",
			"params": map[string]any{"update": map[string]any{"sessionUpdate": "agent_message",
				"content": map[string]any{"type": "text", "text": "Reading src/auth/login.py to find where the session cookie is set"}}}}}
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			entries := make([]any, batch)
			for i := range entries {
				entries[i] = entry
			}
			body, _ := json.Marshal(map[string]any{"entries": entries})
			benchAppend(b, 1, batch, func(int) []byte { return body })
		})
	}
	// One entry of 200 bytes per request, the k-th request to run k mod
	// runs, as many-runs offers them.
	b.Run("runs=500/entry=200B", func(b *testing.B) {
		pad := strings.Repeat("x", 200-len(`{"type":"bench","t":1234567890123456789,"pad":""}`))
		body := []byte(`{"entries":[{"type":"bench","t":1234567890123456789,"pad":"` + pad + `"}]}`)
		benchAppend(b, 500, 1, func(int) []byte { return body })
	})
}

// appendServer is a node on SQLite in a temporary directory (the real
// handler, hub included) with one API key and runs runs, each of its own
// task; urls are their append_log paths.
type appendServer struct {
	handler http.Handler
	secret  string
	urls    []string
}

func newAppendServer(tb testing.TB, runs int) *appendServer {
	tb.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(tb.TempDir(), "runhub.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	p, _ := st.CreateProject(ctx, "bench")
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Prefix: prefix, Hash: hash, Scopes: []string{"*"}, Projects: []int64{p.ID}}); err != nil {
		tb.Fatal(err)
	}
	urls := make([]string, runs)
	for i := range urls {
		task, err := st.CreateTask(ctx, p.ID, store.NewTask{Title: "bench", OriginProduct: "user_created"})
		if err != nil {
			tb.Fatal(err)
		}
		run, err := st.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
		if err != nil {
			tb.Fatal(err)
		}
		urls[i] = fmt.Sprintf("/api/projects/%d/tasks/%s/runs/%s/append_log/", p.ID, task.ID, run.Run.ID)
	}
	n, err := node.New(ctx, node.Config{Store: st, DataDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.Close() })
	if err := n.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	return &appendServer{handler: n.Handler(), secret: secret, urls: urls}
}

// benchAppend runs b.N append_log requests (body(k) for the k-th) over
// runs runs with 4×GOMAXPROCS clients.
func benchAppend(b *testing.B, runs, batch int, body func(k int) []byte) {
	as := newAppendServer(b, runs)
	secret, urls := as.secret, as.urls
	srv := httptest.NewServer(as.handler)
	defer srv.Close()
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(4)
	var m0, m1 runtime.MemStats
	var ru0, ru1 syscall.Rusage
	runtime.ReadMemStats(&m0)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := int(next.Add(1) - 1)
			req, _ := http.NewRequest("POST", srv.URL+urls[k%runs], bytes.NewReader(body(k)))
			req.Header.Set("Authorization", "Bearer "+secret)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	runtime.ReadMemStats(&m1)
	// CPU time, unlike ns/op, barely moves with the other load of a
	// shared machine.
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(b.N), "allocs/op")
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "entries/s")
}
