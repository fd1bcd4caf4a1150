package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
	"runhub/store/storetest"
)

func openTemp(t *testing.T, opts ...sqlite.Option) (*sqlite.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runhub.db")
	s, err := sqlite.Open(t.Context(), path, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openTemp(t)
		return s
	})
}

// TestReopen checks that data survives closing and reopening the file and
// that opening an up-to-date database applies no migration twice.
func TestReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "data", "runhub.db") // the data dir is created
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	p, err := s.CreateProject(ctx, "Acme")
	must(t, err)
	key, err := s.CreateAPIKey(ctx, store.NewAPIKey{Prefix: "phx_", Hash: []byte("hash"), Scopes: []string{store.ScopeAll}, AllProjects: true})
	must(t, err)
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	must(t, err)
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	must(t, err)
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	e, err := store.ParseLogEntry([]byte(`{"type":"x","n":1}`), time.Now())
	must(t, err)
	idem := &store.Idempotency{Key: "k", RequestHash: []byte("h")}
	_, err = s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
	must(t, err)
	must(t, s.Close())

	for round := range 3 {
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			t.Fatalf("reopen %d: %v", round, err)
		}
		if got, err := s.APIKeyByHash(ctx, []byte("hash")); err != nil || got.ID != key.ID {
			t.Fatalf("reopen %d: key = %+v, %v", round, got, err)
		}
		run, err := s.GetRun(ctx, ref)
		must(t, err)
		if run.LastSeq != int64(2+round) || run.LogCount != int64(1+round) {
			t.Fatalf("reopen %d: last_seq %d log_count %d", round, run.LastSeq, run.LogCount)
		}
		// The idempotency key survived too.
		rep, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
		must(t, err)
		if !rep.Replayed || rep.Run.LastSeq != 2 {
			t.Fatalf("reopen %d: replay = %+v", round, rep)
		}
		next, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, nil)
		must(t, err)
		if got := next.Events[0].Seq; got != int64(3+round) {
			t.Fatalf("reopen %d: next seq %d, want %d", round, got, 3+round)
		}
		t2, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
		must(t, err)
		if t2.Number != int64(2+round) {
			t.Fatalf("reopen %d: task number %d, want %d", round, t2.Number, 2+round)
		}
		must(t, s.Close())
	}

	// The schema version is the newest migration, and no table was created twice.
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	must(t, err)
	defer db.Close()
	var version, tables int
	must(t, db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version))
	must(t, db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'").Scan(&tables))
	if version < 1 || tables != 1 {
		t.Errorf("user_version %d, %d runs tables", version, tables)
	}
}

// TestClock checks the rules that need a controlled clock: completed_at
// times and how long idempotency keys are kept.
func TestClock(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s, _ := openTemp(t, sqlite.WithClock(clock))
	p, err := s.CreateProject(ctx, "Acme")
	must(t, err)
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	must(t, err)
	res, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	must(t, err)
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	status := func(st string) *store.Run {
		t.Helper()
		now = now.Add(time.Minute)
		res, err := s.UpdateRun(ctx, ref, store.RunPatch{Status: &st}, nil)
		must(t, err)
		if !res.Run.UpdatedAt.Equal(now) {
			t.Errorf("updated_at = %v, want %v", res.Run.UpdatedAt, now)
		}
		return res.Run
	}
	steps := []struct {
		status string
		want   time.Duration // completed_at minus the start; -1 for null
	}{
		{store.StatusInProgress, -1},
		{store.StatusCompleted, 2 * time.Minute},
		{store.StatusFailed, 2 * time.Minute},
		{store.StatusCancelled, 2 * time.Minute}, // a finished run never reopens: completed_at stays
	}
	start := now
	for _, st := range steps {
		r := status(st.status)
		switch {
		case st.want < 0 && r.CompletedAt != nil:
			t.Errorf("%s: completed_at %v, want null", st.status, r.CompletedAt)
		case st.want >= 0 && (r.CompletedAt == nil || !r.CompletedAt.Equal(start.Add(st.want))):
			t.Errorf("%s: completed_at %v, want %v", st.status, r.CompletedAt, start.Add(st.want))
		}
	}

	// A key is remembered for at least 24 h.
	idem := &store.Idempotency{Key: "k", RequestHash: []byte("h")}
	e, err := store.ParseLogEntry([]byte(`{"type":"x"}`), now)
	must(t, err)
	first, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
	must(t, err)
	now = now.Add(24*time.Hour - time.Second)
	_, err = s.AppendLog(ctx, ref, []store.LogEntry{e}, &store.Idempotency{Key: "other", RequestHash: []byte("h")})
	must(t, err)
	rep, err := s.AppendLog(ctx, ref, []store.LogEntry{e}, idem)
	must(t, err)
	if !rep.Replayed || rep.Run.LastSeq != first.Run.LastSeq {
		t.Errorf("key applied 24 h ago: replayed %v last_seq %d, want replay of %d", rep.Replayed, rep.Run.LastSeq, first.Run.LastSeq)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRefusesNewerSchema: a database a newer binary migrated (its schema
// version past this binary's newest migration) is refused at Open, not
// used with rules it does not know.
func TestRefusesNewerSchema(t *testing.T) {
	ctx := t.Context()
	s, path := openTemp(t)
	must(t, s.Close())
	db, err := sql.Open("sqlite", "file:"+path)
	must(t, err)
	var version int
	must(t, db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version))
	_, err = db.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version+1))
	must(t, err)
	must(t, db.Close())
	if s, err := sqlite.Open(ctx, path); err == nil {
		s.Close()
		t.Fatalf("Open of a database at schema %d (this binary's newest: %d) succeeded", version+1, version)
	} else if !strings.Contains(err.Error(), "newer runhub") {
		t.Errorf("Open: %v, want the newer-schema refusal", err)
	}
}
