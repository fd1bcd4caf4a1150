package postgres_test

import (
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// openTemp opens a Store on a fresh database.
func openTemp(t *testing.T, opts ...postgres.Option) (*postgres.Store, string) {
	t.Helper()
	url := pgtest.DB(t)
	s, err := postgres.Open(t.Context(), url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, url
}

// TestMigrateConcurrently: nodes that start together on an empty database
// all open it, and each migration is applied once (the advisory lock makes
// the others wait, then find it done); opening again applies nothing.
func TestMigrateConcurrently(t *testing.T) {
	const nodes = 6
	ctx := t.Context()
	url := pgtest.DB(t)
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	stores := make(chan *postgres.Store, nodes)
	for range nodes {
		wg.Go(func() {
			s, err := postgres.Open(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			stores <- s
		})
	}
	wg.Wait()
	close(errs)
	close(stores)
	for err := range errs {
		t.Error(err)
	}
	for s := range stores {
		if err := s.Ping(ctx); err != nil {
			t.Error(err)
		}
		s.Close()
	}
	s, err := postgres.Open(ctx, url) // a later start: nothing to apply
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range versions {
		if v != int32(i+1) {
			t.Fatalf("schema_migrations holds %v, want 1..n once each", versions)
		}
	}
	if len(versions) == 0 {
		t.Fatal("no migration recorded")
	}
	var tables int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'runs'").Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("runs tables: %d, %v", tables, err)
	}
}
