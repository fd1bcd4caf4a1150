package migrate_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"runhub/store"
	"runhub/store/migrate"
	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
	"runhub/store/sqlite"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestTablesCoverSchemas: a table that either backend's migrations create
// and that migrate-store does not copy (nor knows as the backend's own
// bookkeeping) fails here, so a feature that adds a table cannot be lost
// in a move.
func TestTablesCoverSchemas(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "runhub.db")
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	have, err := migrate.SQLiteTables(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	sameSet(t, "SQLite", have, append(slices.Clone(migrate.Tables), migrate.SQLiteOwn...))

	url := pgtest.DB(t)
	pst, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	pst.Close()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
	if err != nil {
		t.Fatal(err)
	}
	pgTables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	sameSet(t, "PostgreSQL", pgTables, append(slices.Clone(migrate.Tables), migrate.PostgresOwn...))
}

func sameSet(t *testing.T, what string, got, want []string) {
	t.Helper()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("%s tables %v, migrate-store knows %v: add the new table to migrate.Tables (or to the backend's own list)", what, got, want)
	}
}

// TestCopyRefusesNonEmptyTarget: a database that holds anything is left
// as it is.
func TestCopyRefusesNonEmptyTarget(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "runhub.db")
	src, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.CreateProject(ctx, "source"); err != nil {
		t.Fatal(err)
	}
	src.Close()
	url := pgtest.DB(t)
	dst, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := dst.CreateProject(ctx, "already here"); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate.Copy(ctx, path, url, nil); !errors.Is(err, migrate.ErrTargetNotEmpty) {
		t.Fatalf("copy into a non-empty database: %v, want ErrTargetNotEmpty", err)
	}
	ps, err := dst.ListProjects(ctx)
	if err != nil || len(ps) != 1 || ps[0].Name != "already here" {
		t.Fatalf("target after the refusal: %+v %v", ps, err)
	}
}

// TestCopyKeepsEverything: ids, seqs, bytes, keys, idempotency records,
// artifacts manifests and relays come across; new rows continue after the
// copied ids; secrets land in the database.
func TestCopyKeepsEverything(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "runhub.db")
	src, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := src.CreateProject(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := src.CreateAPIKey(ctx, store.NewAPIKey{Label: "k", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true}); err != nil {
		t.Fatal(err)
	}
	task, err := src.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := src.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	if err != nil {
		t.Fatal(err)
	}
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: res.Run.ID}
	raw := []string{`{"b":1,"a":"é\u0000"}`, `{"type":"x",  "k":[1,2]}`}
	var entries []store.LogEntry
	for _, r := range raw {
		e, err := store.ParseLogEntry([]byte(r), res.Run.CreatedAt)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	if _, err := src.AppendLog(ctx, ref, entries, &store.Idempotency{Key: "once", RequestHash: []byte("h")}); err != nil {
		t.Fatal(err)
	}
	// The sender's ingest position comes across: a completed stream.
	ing, err := store.ParseLogEntry([]byte(`{"type":"ingested"}`), res.Run.CreatedAt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.IngestEvents(ctx, ref, []store.IngestLine{{Seq: 1, Entry: ing}}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.CompleteIngest(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	if err := src.CreateRelay(ctx, store.Relay{ID: "r1", RunID: res.Run.ID, Channel: "C1", ThreadTS: "1.2", Text: "hi",
		Status: store.RelayPending, NextAt: res.Run.CreatedAt, CreatedAt: res.Run.CreatedAt}); err != nil {
		t.Fatal(err)
	}
	queued, err := src.EnqueueUserMessage(ctx, ref, json.RawMessage(`{"content":"waiting"}`))
	if err != nil {
		t.Fatal(err)
	}
	want, err := src.Events(ctx, res.Run.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	srcRun, err := src.GetRun(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	src.Close()

	url := pgtest.DB(t)
	rep, err := migrate.Copy(ctx, path, url, map[string][]byte{"url-secret": []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Runs != 1 || rep.Rows["run_events"] != int64(len(want)) || rep.Rows["relays"] != 1 || rep.Rows["idempotency_keys"] != 1 {
		t.Fatalf("report %+v", rep)
	}
	dst, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	got, err := dst.Events(ctx, res.Run.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(eventsText(got)) != fmt.Sprint(eventsText(want)) {
		t.Fatalf("events after the copy:\n%v\nwant\n%v", eventsText(got), eventsText(want))
	}
	// The run's counters come across as the source answered them (SQLite
	// advances them from the events on read, see sqlite.CopiedColumns).
	if r, err := dst.GetRun(ctx, ref); err != nil || r.LastSeq != srcRun.LastSeq || r.LogCount != srcRun.LogCount {
		t.Fatalf("run after the copy: %+v %v, want last_seq %d, log_count %d", r, err, srcRun.LastSeq, srcRun.LogCount)
	}
	if k, err := dst.APIKeyByHash(ctx, store.HashAPIKey(secret)); err != nil || k.Label != "k" {
		t.Fatalf("the old key: %+v %v", k, err)
	}
	// The same append again is an idempotent replay on the new store.
	again, err := dst.AppendLog(ctx, ref, entries, &store.Idempotency{Key: "once", RequestHash: []byte("h")})
	if err != nil || !again.Replayed {
		t.Fatalf("replay after the copy: %+v %v", again, err)
	}
	// New rows take ids after the copied ones.
	p2, err := dst.CreateProject(ctx, "next")
	if err != nil || p2.ID != p.ID+1 {
		t.Fatalf("next project: %+v %v, want id %d", p2, err, p.ID+1)
	}
	if st, err := dst.IngestState(ctx, ref); err != nil || st != (store.IngestState{LastAccepted: 1, Complete: true}) {
		t.Fatalf("ingest state after the copy: %+v %v", st, err)
	}
	if r, err := dst.GetRelay(ctx, "r1"); err != nil || r.Text != "hi" {
		t.Fatalf("relay: %+v %v", r, err)
	}
	// The steering queue comes across, and new messages queue after it.
	if id, err := dst.EnqueueUserMessage(ctx, ref, json.RawMessage(`{"content":"next"}`)); err != nil || id <= queued {
		t.Fatalf("queue after the copy: id %d %v, want after %d", id, err, queued)
	}
	if m, err := dst.TakeUserMessage(ctx, res.Run.ID); err != nil || m.ID != queued || !strings.Contains(string(m.Params), "waiting") {
		t.Fatalf("queued message after the copy: %+v %v", m, err)
	}
	v, err := dst.Secret(ctx, "url-secret", func() ([]byte, error) { return nil, errors.New("generated") })
	if err != nil || string(v) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("secret: %q %v", v, err)
	}
}

func eventsText(evs []store.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprintf("%d %s %s %s", e.Seq, e.Kind, e.Type, e.Data)
	}
	return out
}
