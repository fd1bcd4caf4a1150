package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"runhub/proxy/tokens"
)

// binary builds runhub once per test run.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func runhubBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "runhub-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "runhub")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// server is a runhub process under test.
type server struct {
	cmd  *exec.Cmd
	base string
	logs *bytes.Buffer
	mu   *sync.Mutex
}

func startServer(t *testing.T, dataDir string) *server {
	t.Helper()
	return startServerArgs(t, dataDir)
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// do sends a JSON request with the key and decodes a JSON answer into out.
func do(ctx context.Context, key, method, url string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s: %w", data, err)
		}
	}
	return resp.StatusCode, nil
}

func readKey(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, bootstrapKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestCrashKeepsAcknowledgedAppends kills the server with SIGKILL while four
// clients append as fast as they can, restarts it on the same data directory,
// and checks that every batch that got a 2xx is stored exactly once, whole
// and contiguous, and that no batch is stored in part.
func TestCrashKeepsAcknowledgedAppends(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	key := readKey(t, dataDir)
	ctx := context.Background()
	api := srv.base + "/api/projects/1"

	var task, run struct{ ID string }
	if code, err := do(ctx, key, "POST", api+"/tasks/", map[string]any{"title": "crash"}, &task); err != nil || code != 201 {
		t.Fatalf("create task: %d %v", code, err)
	}
	runsURL := api + "/tasks/" + task.ID + "/runs/"
	if code, err := do(ctx, key, "POST", runsURL, map[string]any{}, &run); err != nil || code != 201 {
		t.Fatalf("create run: %d %v", code, err)
	}
	appendURL := runsURL + run.ID + "/append_log/"

	const clients, batch = 4, 3
	type ack struct{ client, n int }
	var mu sync.Mutex
	var acked []ack
	sent := map[ack]bool{}
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for n := 0; ; n++ {
				entries := make([]map[string]any, batch)
				for i := range entries {
					entries[i] = map[string]any{"type": "crash", "c": c, "n": n, "i": i}
				}
				mu.Lock()
				sent[ack{c, n}] = true
				mu.Unlock()
				code, err := do(ctx, key, "POST", appendURL, map[string]any{"entries": entries}, nil)
				if err != nil {
					return // the server is gone
				}
				if code != 200 {
					t.Errorf("append: status %d", code)
					return
				}
				mu.Lock()
				acked = append(acked, ack{c, n})
				mu.Unlock()
			}
		}(c)
	}
	time.Sleep(2 * time.Second)
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Wait()
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("no append was acknowledged before the kill")
	}

	srv2 := startServer(t, dataDir)
	req, _ := http.NewRequest("GET", srv2.base+"/api/projects/1/tasks/"+task.ID+"/runs/"+run.ID+"/logs/", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	type entry struct{ C, N, I int }
	var stored []entry
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		stored = append(stored, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	// Each batch must appear whole, contiguous, in order, at most once.
	seen := map[ack]bool{}
	for i := 0; i < len(stored); {
		e := stored[i]
		k := ack{e.C, e.N}
		if seen[k] {
			t.Fatalf("batch %v stored twice", k)
		}
		if !sent[k] {
			t.Fatalf("batch %v stored but never sent", k)
		}
		seen[k] = true
		for j := 0; j < batch; j++ {
			if i+j >= len(stored) || stored[i+j] != (entry{e.C, e.N, j}) {
				t.Fatalf("batch %v half-written or interleaved at line %d", k, i+j)
			}
		}
		i += batch
	}
	for _, a := range acked {
		if !seen[a] {
			t.Fatalf("acknowledged batch %v lost after the crash", a)
		}
	}
	t.Logf("%d batches acknowledged before SIGKILL, %d stored after restart (at most %d in flight)", len(acked), len(seen), clients)
}

// TestBootstrapAndAdminCommands checks the first-start bootstrap (a 0600
// key file, the key never logged) and that keys/projects commands work while
// the server runs and print only what the contract says.
func TestBootstrapAndAdminCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	key := readKey(t, dataDir)
	fi, err := os.Stat(filepath.Join(dataDir, bootstrapKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap key mode %v, want 0600", fi.Mode().Perm())
	}
	logs := srv.output()
	if strings.Contains(logs, key) {
		t.Fatal("the bootstrap key appears in the logs")
	}
	if !strings.Contains(logs, filepath.Join(dataDir, bootstrapKeyFile)) {
		t.Fatalf("the bootstrap key path is not logged:\n%s", logs)
	}

	cli := func(args ...string) string { t.Helper(); return runCLI(t, args...) }
	id := strings.TrimSpace(cli("projects", "create", "Acme", "--data-dir", dataDir))
	if id != "2" {
		t.Fatalf("projects create printed %q, want 2", id)
	}
	newKey := cli("keys", "create", "--project", "2", "--scopes", "task:read", "--data-dir", dataDir)
	if strings.Count(newKey, "\n") != 1 || !strings.HasPrefix(newKey, "rh_") {
		t.Fatalf("keys create printed %q, want only the key", newKey)
	}
	newKey = strings.TrimSpace(newKey)
	ctx := context.Background()
	var list struct{ Count int }
	if code, err := do(ctx, newKey, "GET", srv.base+"/api/projects/2/tasks/", nil, &list); err != nil || code != 200 {
		t.Fatalf("new key on its project: %d %v", code, err)
	}
	if code, _ := do(ctx, newKey, "GET", srv.base+"/api/projects/1/tasks/", nil, nil); code != 403 {
		t.Fatalf("new key on another project: %d, want 403", code)
	}
	if code, _ := do(ctx, newKey, "POST", srv.base+"/api/projects/2/tasks/", map[string]any{"title": "x"}, nil); code != 403 {
		t.Fatalf("read-only key creating a task: %d, want 403", code)
	}
	listing := cli("keys", "list", "--data-dir", dataDir)
	if strings.Contains(listing, newKey) || strings.Contains(listing, key) {
		t.Fatal("keys list shows a secret")
	}
	cli("keys", "revoke", "2", "--data-dir", dataDir)
	// The server believes a key it verified for a moment (rest.KeyCacheTTL):
	// the contract gives a revocation 5 s.
	revoked := time.Now()
	code, _ := do(ctx, newKey, "GET", srv.base+"/api/projects/2/tasks/", nil, nil)
	for code == 200 && time.Since(revoked) < tokens.RevocationWindow {
		time.Sleep(50 * time.Millisecond)
		code, _ = do(ctx, newKey, "GET", srv.base+"/api/projects/2/tasks/", nil, nil)
	}
	if code != 401 {
		t.Fatalf("revoked key: %d %v after keys revoke, want 401", code, time.Since(revoked))
	}
	if out := cli("projects", "list", "--data-dir", dataDir); !strings.Contains(out, "Acme") {
		t.Fatalf("projects list: %q", out)
	}
}
