package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"runhub/store/postgres/pgtest"
)

// TestMigrateStoreMovesAnInstall (issue 11, acceptance 3): an embedded
// install with 20,000 log entries over 50 runs, an artifact, a connection
// token and a presigned link is copied with `runhub migrate-store`; a node
// on PostgreSQL with the same data directory (for the blobs) then returns
// byte-identical /logs and the same last seqs, the old key works, and the
// token and the link made before the move still open.
func TestMigrateStoreMovesAnInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const runsN, perRun = 50, 400
	dir := t.TempDir()
	old := startServer(t, dir)
	key := readKey(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	call := func(s *server, method, path string, body, out any) {
		t.Helper()
		if st, err := do(ctx, key, method, s.base+path, body, out); err != nil || st >= 300 {
			t.Fatalf("%s %s: %d %v", method, path, st, err)
		}
	}
	var task struct{ ID string }
	call(old, "POST", "/api/projects/1/tasks/", map[string]any{"title": "moving"}, &task)
	prefix := fmt.Sprintf("/api/projects/1/tasks/%s/runs/", task.ID)
	ids := make([]string, runsN)
	for i := range ids {
		var run struct{ ID string }
		call(old, "POST", prefix, map[string]any{"status": "in_progress"}, &run)
		ids[i] = run.ID
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < runsN; i += 4 {
				entries := make([]map[string]any, perRun)
				for j := range entries {
					entries[j] = map[string]any{"type": "console", "n": j, "text": fmt.Sprintf("run %d line %d é", i, j)}
				}
				if st, err := do(ctx, key, "POST", old.base+prefix+ids[i]+"/append_log/", map[string]any{"entries": entries}, nil); err != nil || st != 200 {
					t.Errorf("append: %d %v", st, err)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var arts struct {
		Artifacts []struct {
			StoragePath string `json:"storage_path"`
		}
	}
	call(old, "POST", prefix+ids[0]+"/artifacts/", map[string]any{"artifacts": []map[string]any{
		{"name": "plan.md", "type": "plan", "content": "# the plan\n", "content_type": "text/markdown"}}}, &arts)
	var link struct{ URL string }
	call(old, "POST", prefix+ids[0]+"/artifacts/presign/", map[string]any{"storage_path": arts.Artifacts[0].StoragePath}, &link)
	var tok struct{ Token string }
	call(old, "GET", prefix+ids[0]+"/connection_token/", nil, &tok)

	logs := func(s *server, id string) []byte {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", s.base+prefix+id+"/logs/", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 {
			t.Fatalf("logs: %d %s", res.StatusCode, b)
		}
		return b
	}
	lastSeq := func(s *server, id string) int64 {
		t.Helper()
		var r struct {
			LastSeq int64 `json:"last_seq"`
		}
		call(s, "GET", prefix+id+"/", nil, &r)
		return r.LastSeq
	}
	before := make([][]byte, runsN)
	seqs := make([]int64, runsN)
	entries := 0
	for i, id := range ids {
		before[i], seqs[i] = logs(old, id), lastSeq(old, id)
		entries += bytes.Count(before[i], []byte("\n"))
	}
	if entries < runsN*perRun {
		t.Fatalf("%d entries before the move, want at least %d", entries, runsN*perRun)
	}
	old.cmd.Process.Signal(syscall.SIGTERM)
	old.cmd.Wait()

	url := pgtest.DB(t)
	out := runCLI(t, "migrate-store", "--from", dir, "--to", url)
	if !strings.Contains(out, "verified:") || !strings.Contains(out, fmt.Sprintf("of %d runs match", runsN)) {
		t.Fatalf("migrate-store printed:\n%s", out)
	}
	// A second copy into the same database is refused.
	if err := exec.Command(runhubBinary(t), "migrate-store", "--from", dir, "--to", url).Run(); err == nil {
		t.Fatal("a second migrate-store into the filled database succeeded")
	}

	moved := startServerArgs(t, dir, "--database-url", url)
	for i, id := range ids {
		if got := logs(moved, id); !bytes.Equal(got, before[i]) {
			t.Fatalf("run %d: /logs differs after the move (%d bytes, want %d)", i, len(got), len(before[i]))
		}
		if got := lastSeq(moved, id); got != seqs[i] {
			t.Fatalf("run %d: last_seq %d after the move, want %d", i, got, seqs[i])
		}
	}
	// The token minted before the move opens the stream on the new node.
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	req, _ := http.NewRequestWithContext(sctx, "GET", moved.base+prefix+ids[0]+"/stream?token="+tok.Token+"&start=latest", nil)
	req.Header.Set("Accept", "text/event-stream")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("a token minted before the move: %d", res.StatusCode)
	}
	// The artifact link signed before the move downloads the same bytes.
	dl, err := http.Get(moved.base + link.URL[strings.Index(link.URL, "/blobs/"):])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(dl.Body)
	dl.Body.Close()
	if dl.StatusCode != 200 || string(b) != "# the plan\n" {
		t.Fatalf("artifact link made before the move: %d %q", dl.StatusCode, b)
	}
}
