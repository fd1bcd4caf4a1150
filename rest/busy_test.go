package rest

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/sqlite"
)

// busyBody is the standard error body of a write the store could not lock.
const busyBody = `{"type":"server_error","code":"unavailable","detail":"The store is busy; retry shortly.","attr":null}`

// TestStoreBusy: while another process holds SQLite's write lock past the
// busy timeout, a write is answered 503 with the standard body and
// Retry-After: 1 and stores nothing; once the lock is released the same
// request succeeds.
func TestStoreBusy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runhub.db")
	st, err := sqlite.Open(context.Background(), path, sqlite.WithBusyTimeout(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := envOn(t, st, Config{})
	f := e.fixture()

	// Another process (`runhub keys create`) holds the write lock.
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	appendOne := req{Method: "POST", Path: f.path(e, "/append_log/"), Key: e.writeKey,
		Body: map[string]any{"entries": []any{map[string]any{"type": "x"}}}}
	res := rawDo(t, e, appendOne)
	if res.status != http.StatusServiceUnavailable || string(res.body) != busyBody || res.header.Get("Retry-After") != "1" {
		t.Fatalf("append under another's lock: %s Retry-After %q, want 503 %s Retry-After 1", res, res.header.Get("Retry-After"), busyBody)
	}
	checkErrorShape(t, "append under lock", res)

	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, e.do(appendOne), http.StatusOK)
	if page, _ := e.sessionLogs(f, ""); page.header.Get("X-Total-Count") != "1" {
		t.Errorf("entries stored: %s, want 1 (the refused append stored nothing)", page.header.Get("X-Total-Count"))
	}
}

// TestBusyIsNotAStringMatch: rest maps store.ErrBusy, wrapped at any
// depth, to the busy 503, and an error that merely says "database is
// locked" (no sentinel) to the bare 500: no driver message is parsed.
func TestBusyIsNotAStringMatch(t *testing.T) {
	s := New(fullConfig(t))
	for _, c := range []struct {
		err    error
		status int
		body   string
	}{
		{store.ErrBusy, http.StatusServiceUnavailable, busyBody},
		{errors.Join(errors.New("begin"), store.ErrBusy), http.StatusServiceUnavailable, busyBody},
		{errors.New("database is locked (5) (SQLITE_BUSY)"), http.StatusInternalServerError,
			`{"type":"server_error","code":"error","detail":"A server error occurred.","attr":null}`},
	} {
		rec := httptest.NewRecorder()
		s.writeError(rec, httptest.NewRequest("POST", "/x", nil), c.err)
		if rec.Code != c.status || rec.Body.String() != c.body {
			t.Errorf("%v: %d %s, want %d %s", c.err, rec.Code, rec.Body, c.status, c.body)
		}
	}
}
