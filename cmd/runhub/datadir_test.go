package main

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDataDirModes: a server started on a fresh data directory keeps it
// 0700 and every file in it 0600 (the database and its -wal and -shm, the
// signing keys, the bootstrap key, blobs and their folders) after writes of
// every kind; a directory left 0755/0644 by an earlier version is
// tightened at start.
func TestDataDirModes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	writeSome := func(srv *server) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		key := readKey(t, dataDir)
		var task, run struct{ ID string }
		if code, err := do(ctx, key, "POST", srv.base+"/api/projects/1/tasks/", map[string]any{"title": "modes"}, &task); err != nil || code != http.StatusCreated {
			t.Fatalf("create task: %d %v", code, err)
		}
		runs := fmt.Sprintf("%s/api/projects/1/tasks/%s/runs/", srv.base, task.ID)
		if code, err := do(ctx, key, "POST", runs, map[string]any{}, &run); err != nil || code != http.StatusCreated {
			t.Fatalf("create run: %d %v", code, err)
		}
		if code, err := do(ctx, key, "POST", runs+run.ID+"/append_log/", map[string]any{"entries": []any{map[string]any{"type": "x"}}}, nil); err != nil || code != http.StatusOK {
			t.Fatalf("append_log: %d %v", code, err)
		}
		if code, err := do(ctx, key, "POST", runs+run.ID+"/artifacts/", map[string]any{"artifacts": []any{
			map[string]any{"name": "a.txt", "type": "artifact", "content": "bytes"}}}, nil); err != nil || code != http.StatusOK {
			t.Fatalf("artifacts: %d %v", code, err)
		}
		if code, err := do(ctx, key, "GET", runs+run.ID+"/connection_token/", nil, nil); err != nil || code != http.StatusOK {
			t.Fatalf("connection_token: %d %v", code, err)
		}
	}
	checkModes := func(want ...string) {
		t.Helper()
		seen := map[string]bool{}
		err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dataDir, p)
			seen[rel] = true
			wantMode := fs.FileMode(0o600)
			if d.IsDir() {
				wantMode = 0o700
			}
			if info.Mode().Perm() != wantMode {
				t.Errorf("%s: mode %v, want %v", rel, info.Mode().Perm(), wantMode)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range want {
			if !seen[name] {
				t.Errorf("%s does not exist; the walk saw %v", name, seen)
			}
		}
	}
	files := []string{".", "runhub.db", "runhub.db-wal", "runhub.db-shm", "bootstrap-key", "url-secret", "jwt-key.pem", "blobs", "blobs/artifacts"}

	srv := startServer(t, dataDir)
	writeSome(srv)
	checkModes(files...)
	srv.cmd.Process.Kill()
	srv.cmd.Wait()

	// An earlier version's modes: everything open to group and others.
	filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			mode := fs.FileMode(0o644)
			if d.IsDir() {
				mode = 0o755
			}
			os.Chmod(p, mode)
		}
		return nil
	})
	srv = startServer(t, dataDir)
	checkModes(files...)
	writeSome(srv)
	checkModes(files...)
}
