package pgtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"runhub/store/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestDB: every call gives a database of its own, empty and writable, on
// the binary's one server.
func TestDB(t *testing.T) {
	ctx := t.Context()
	a, b := pgtest.DB(t), pgtest.DB(t)
	if a == b {
		t.Fatalf("two calls gave the same database %s", a)
	}
	ca, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(ctx)
	if _, err := ca.Exec(ctx, "CREATE TABLE x (n int); INSERT INTO x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(ctx)
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'x'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the second database sees the first's table: %d, %v", n, err)
	}
}

// TestServerRestart: a test's own server keeps its URL and its committed
// data across Stop and Restart, refuses connections while stopped, and
// Stop cuts the connections that were open.
func TestServerRestart(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.Start(t)
	url := srv.URL()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := c.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a connection opened before Stop still answers")
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c2, err := pgx.Connect(cctx, url); err == nil {
		c2.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	srv.Stop() // stopping twice does nothing
	srv.Restart()
	if srv.URL() != url {
		t.Fatalf("URL changed across a restart: %s, then %s", url, srv.URL())
	}
	c3, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	defer c3.Close(ctx)
	var n int
	if err := c3.QueryRow(ctx, "SELECT n FROM kept").Scan(&n); err != nil || n != 42 {
		t.Fatalf("committed row after the restart: %d, %v", n, err)
	}
}
