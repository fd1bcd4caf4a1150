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
	"testing"

	"runhub/cmd/node"
	"runhub/store"
	"runhub/store/sqlite"
)

// BenchmarkAppendLogHTTP measures append_log through the whole HTTP stack
// (auth, decode, validation, SQLite transaction) with concurrent clients.
func BenchmarkAppendLogHTTP(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "runhub.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			p, _ := st.CreateProject(ctx, "bench")
			secret, prefix, hash := store.GenerateAPIKey()
			if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Prefix: prefix, Hash: hash, Scopes: []string{"*"}, Projects: []int64{p.ID}}); err != nil {
				b.Fatal(err)
			}
			task, _ := st.CreateTask(ctx, p.ID, store.NewTask{Title: "bench", OriginProduct: "user_created"})
			run, _ := st.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
			n, err := node.New(ctx, node.Config{Store: st, DataDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			if err := n.Start(ctx); err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(n.Handler())
			defer srv.Close()
			url := fmt.Sprintf("%s/api/projects/%d/tasks/%s/runs/%s/append_log/", srv.URL, p.ID, task.ID, run.Run.ID)
			entry := map[string]any{"type": "notification", "timestamp": "2026-11-28T21:04:05.123456Z",
				"notification": map[string]any{"jsonrpc": "2.0", "method": "session/update",
					"params": map[string]any{"update": map[string]any{"sessionUpdate": "agent_message",
						"content": map[string]any{"type": "text", "text": "Reading src/auth/login.py to find where the session cookie is set"}}}}}
			entries := make([]any, batch)
			for i := range entries {
				entries[i] = entry
			}
			body, _ := json.Marshal(map[string]any{"entries": entries})
			client := srv.Client()
			client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
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
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
