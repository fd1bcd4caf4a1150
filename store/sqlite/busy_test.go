package sqlite_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
)

// testBusyTimeout is the busy timeout of the stores these tests lock out:
// long enough for SQLite to retry at least once, short enough to keep the
// test fast.
const testBusyTimeout = 50 * time.Millisecond

// holdWriteLock takes SQLite's write lock on the database at path from a
// connection of its own, as another process (`runhub keys`) would, and
// returns the function that releases it.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("take the write lock: %v", err)
	}
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
			t.Errorf("release the write lock: %v", err)
		}
		conn.Close()
		db.Close()
	}
	t.Cleanup(release)
	return release
}

// TestBusyIsErrBusy: a write that cannot take the lock another connection
// holds fails, once the busy timeout ran out, with store.ErrBusy (not
// ErrUnavailable, not a bare driver error); reads still answer (WAL), and
// once the lock is released the same writes succeed.
func TestBusyIsErrBusy(t *testing.T) {
	ctx := t.Context()
	s, path := openTemp(t, sqlite.WithBusyTimeout(testBusyTimeout))
	p, err := s.CreateProject(ctx, "Busy")
	must(t, err)
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	must(t, err)
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	must(t, err)
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	entry, err := store.ParseLogEntry([]byte(`{"type":"x"}`), time.Now())
	must(t, err)

	writes := []struct {
		name string
		do   func() error
	}{
		{"CreateProject", func() error { _, err := s.CreateProject(ctx, "Other"); return err }},
		{"CreateTask", func() error {
			_, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "u", OriginProduct: "user_created"})
			return err
		}},
		{"CreateRun", func() error { _, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{}); return err }},
		{"UpdateRun", func() error {
			_, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: ptrTo(store.StatusInProgress)}, nil)
			return err
		}},
		{"SetOutput", func() error {
			_, err := s.SetOutput(ctx, ref, map[string]json.RawMessage{"a": json.RawMessage("1")}, nil)
			return err
		}},
		{"AppendLog", func() error {
			_, err := s.AppendLog(ctx, ref, []store.LogEntry{entry}, &store.Idempotency{Key: "k", RequestHash: []byte("h")})
			return err
		}},
		{"AddArtifacts", func() error {
			_, err := s.AddArtifacts(ctx, ref, []json.RawMessage{json.RawMessage(`{"id":"a"}`)})
			return err
		}},
	}

	release := holdWriteLock(t, path)
	for _, w := range writes {
		start := time.Now()
		err := w.do()
		if !errors.Is(err, store.ErrBusy) || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s under another's write lock: %v, want store.ErrBusy", w.name, err)
		}
		if d := time.Since(start); d < testBusyTimeout {
			t.Errorf("%s failed after %v, before the busy timeout %v", w.name, d, testBusyTimeout)
		}
	}
	got, err := s.GetRun(ctx, ref)
	must(t, err)
	if got.LastSeq != 1 || got.Status != store.StatusNotStarted {
		t.Errorf("run after refused writes: last_seq %d status %s, want 1 not_started", got.LastSeq, got.Status)
	}

	release()
	for _, w := range writes {
		if err := w.do(); err != nil {
			t.Errorf("%s after the lock was released: %v", w.name, err)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
