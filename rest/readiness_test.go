package rest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/blob"
	"runhub/store/sqlite"
	"runhub/store/teststore"
)

// requireRoot skips a test that needs root (mounts), unless
// RUNHUB_REQUIRE_SERVERS=1 says every test must run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
		t.Fatal("this test mounts a tmpfs and needs root")
	}
	t.Skip("needs root to mount a tmpfs")
}

// smallDisk mounts a tmpfs of size bytes (rounded up to pages) on a fresh
// directory, unmounted when the test ends.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes path until the disk is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for {
		if _, err := f.Write(page); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return
		}
	}
}

// rawDo sends a request without the invariants of doWith (which refuse
// every 5xx).
func rawDo(t *testing.T, e *env, r req) *resp {
	t.Helper()
	var body io.Reader
	if r.Body != nil {
		b, _ := json.Marshal(r.Body)
		body = strings.NewReader(string(b))
	}
	hr, _ := http.NewRequest(r.Method, e.srv.URL+r.Path, body)
	if r.Key != "" {
		hr.Header.Set("Authorization", "Bearer "+r.Key)
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := e.client.Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.Path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return &resp{status: res.StatusCode, header: res.Header, body: b}
}

// wantUnavailable checks a 503 with the standard error body and no leak of
// internals.
func wantUnavailable(t *testing.T, where string, res *resp) {
	t.Helper()
	if res.status != http.StatusServiceUnavailable {
		t.Fatalf("%s: %s, want 503", where, res)
	}
	checkErrorShape(t, where, res)
	var m map[string]any
	json.Unmarshal(res.body, &m)
	if res.header.Get("Retry-After") != "5" {
		t.Errorf("%s: Retry-After %q, want 5", where, res.header.Get("Retry-After"))
	}
	if m["type"] != "server_error" || m["code"] != "unavailable" || m["attr"] != nil {
		t.Errorf("%s: body %s", where, res.body)
	}
	for _, leak := range leakMarkers {
		if strings.Contains(string(res.body), leak) {
			t.Errorf("%s: body leaks %q: %s", where, leak, res.body)
		}
	}
}

// TestStoreFullDisk: on a full disk /readyz is 503 (its write probe fails
// although the store still answers reads), append_log and artifact uploads
// are 503 with the standard body and store nothing; once space is free
// again, /readyz is 200 and the same writes succeed.
func TestStoreFullDisk(t *testing.T) {
	requireRoot(t)
	disk := smallDisk(t, "8m")
	st, err := sqlite.Open(context.Background(), filepath.Join(disk, "runhub.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	files, err := blob.NewFS(filepath.Join(disk, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := blob.LoadSigner(disk, nil)
	if err != nil {
		t.Fatal(err)
	}
	probeEvery := 50 * time.Millisecond
	e := envOn(t, st, Config{Runs: quietRuns(t, st), Blobs: files, Files: files, Signer: signer, WriteProbeInterval: probeEvery})
	f := e.fixture()

	readyz := func() *resp { return rawDo(t, e, req{Method: "GET", Path: "/readyz"}) }
	waitReady := func(status int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			res := readyz()
			if res.status == status {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz: %s, want %d", res, status)
			}
			time.Sleep(probeEvery / 2)
		}
	}
	// A batch bigger than anything written so far: SQLite must grow its
	// files to store it.
	big := strings.Repeat("x", 64<<10)
	var entries []any
	for range 24 {
		entries = append(entries, map[string]any{"type": "big", "text": big})
	}
	appendBig := func() *resp {
		return rawDo(t, e, req{Method: "POST", Path: f.path(e, "/append_log/"), Key: e.writeKey, Body: map[string]any{"entries": entries}})
	}
	upload := func() *resp {
		return rawDo(t, e, req{Method: "POST", Path: f.path(e, "/artifacts/"), Key: e.writeKey,
			Body: map[string]any{"artifacts": []any{map[string]any{"name": "a.txt", "type": "artifact", "content": big}}}})
	}

	waitReady(http.StatusOK)
	filler := filepath.Join(disk, "filler")
	fill(t, filler)
	waitReady(http.StatusServiceUnavailable)
	res := readyz()
	if !strings.Contains(string(res.body), `"reason":"store"`) {
		t.Errorf("/readyz body %s", res.body)
	}
	wantUnavailable(t, "append_log on a full disk", appendBig())
	wantUnavailable(t, "artifacts on a full disk", upload())
	if n := len(e.events(f.run)); n != 1 {
		t.Errorf("%d events after the refused writes, want 1 (the run's creation)", n)
	}
	// Reads still work.
	if res := rawDo(t, e, req{Method: "GET", Path: f.path(e, "/"), Key: e.writeKey}); res.status != http.StatusOK {
		t.Errorf("read on a full disk: %s", res)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitReady(http.StatusOK)
	if res := appendBig(); res.status != http.StatusOK {
		t.Fatalf("append_log after space came back: %s", res)
	}
	if res := upload(); res.status != http.StatusOK {
		t.Fatalf("artifacts after space came back: %s", res)
	}
	if n := len(e.events(f.run)); n != 1+len(entries)+1 {
		t.Errorf("%d events, want %d", n, 1+len(entries)+1)
	}
}

// probeCounter is the real store, counting its write probes.
type probeCounter struct {
	store.Store
	probes atomic.Int64
}

func (p *probeCounter) ProbeWrite(ctx context.Context) error {
	p.probes.Add(1)
	return p.Store.(writeProber).ProbeWrite(ctx)
}

// TestReadyzWriteProbeRateLimited: however often /readyz is called, the
// store is probed at most once per WriteProbeInterval (the default, 5 s);
// the callers in between get the cached answer.
func TestReadyzWriteProbeRateLimited(t *testing.T) {
	pc := &probeCounter{Store: teststore.Open(t)}
	e := newEnv(t, func(c *Config) { c.Store = pc })
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				if res := rawDo(t, e, req{Method: "GET", Path: "/readyz"}); res.status != http.StatusOK {
					t.Errorf("/readyz: %s", res)
				}
			}
		}()
	}
	wg.Wait()
	if n := pc.probes.Load(); n != 1 {
		t.Errorf("%d write probes for 40 /readyz within %v, want 1", n, WriteProbeInterval)
	}
}
