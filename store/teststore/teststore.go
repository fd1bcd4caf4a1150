// Package teststore gives the integration tests of rest, hub, proxy and
// the node a fresh store of the backend under test, so the same suites run
// on SQLite and on PostgreSQL. RUNHUB_TEST_BACKEND selects it: "sqlite"
// (the default: a file in the test's temp dir) or "postgres" (a fresh
// database on pgtest's throwaway server). Tests of behaviour only one
// backend has (SQLite's busy timeout, a full disk under the database file)
// open that backend directly instead.
//
// A test package that uses it stops the PostgreSQL server with TestMain:
//
//	func TestMain(m *testing.M) { teststore.Main(m) }
package teststore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
	"runhub/store/sqlite"
)

// EnvBackend is the environment variable that selects the backend.
const EnvBackend = "RUNHUB_TEST_BACKEND"

// The backends EnvBackend may name.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// openTimeout bounds opening a store: SQLite's migrations take
// milliseconds, PostgreSQL's a fraction of a second (the server itself is
// started by pgtest under its own bound); past this the machine is stuck.
const openTimeout = 30 * time.Second

// Backend is the backend the tests run on. An unknown value is a failure
// (a typo must not quietly test SQLite again).
func Backend(t testing.TB) string {
	t.Helper()
	switch b := os.Getenv(EnvBackend); b {
	case "", SQLite:
		return SQLite
	case Postgres:
		return Postgres
	default:
		t.Fatalf("%s=%q: want %q or %q", EnvBackend, b, SQLite, Postgres)
		return ""
	}
}

// Open returns a store of the selected backend on a fresh, empty database;
// it is closed when t ends.
func Open(t testing.TB) store.Store {
	t.Helper()
	return OpenShared(t)(t)
}

// OpenShared creates a fresh, empty database and returns a function that
// opens a handle on it, closed when the t given to that call ends. Every
// handle is a separate connection (pool), as a separate process's would
// be: nodes that share a store, or a writer that the node under test does
// not know about, each open their own.
func OpenShared(t testing.TB) func(t testing.TB) store.Store {
	t.Helper()
	var open func(context.Context) (store.Store, error)
	switch Backend(t) {
	case Postgres:
		url := pgtest.DB(t)
		open = func(ctx context.Context) (store.Store, error) { return postgres.Open(ctx, url) }
	default:
		path := filepath.Join(t.TempDir(), "runhub.db")
		open = func(ctx context.Context) (store.Store, error) { return sqlite.Open(ctx, path) }
	}
	return func(t testing.TB) store.Store {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
		defer cancel()
		st, err := open(ctx)
		if err != nil {
			t.Fatalf("open %s store: %v", Backend(t), err)
		}
		// Closing twice is harmless on both backends, so a test may also
		// close the store itself (a node's Close does).
		t.Cleanup(func() { st.Close() })
		return st
	}
}

// Main runs the tests and then stops PostgreSQL's throwaway server, if
// one was started.
func Main(m *testing.M) {
	if os.Getenv(EnvBackend) == Postgres {
		pgtest.Main(m)
		return
	}
	os.Exit(m.Run())
}
