package teststore_test

import (
	"testing"

	"runhub/store/postgres"
	"runhub/store/sqlite"
	"runhub/store/teststore"
)

func TestMain(m *testing.M) { teststore.Main(m) }

// TestOpen: the store is of the backend RUNHUB_TEST_BACKEND names, and
// fresh: no project from another test's store.
func TestOpen(t *testing.T) {
	ctx := t.Context()
	a := teststore.Open(t)
	switch b := teststore.Backend(t); b {
	case teststore.SQLite:
		if _, ok := a.(*sqlite.Store); !ok {
			t.Fatalf("%s store is a %T", b, a)
		}
	case teststore.Postgres:
		if _, ok := a.(*postgres.Store); !ok {
			t.Fatalf("%s store is a %T", b, a)
		}
	}
	if _, err := a.CreateProject(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	ps, err := teststore.Open(t).ListProjects(ctx)
	if err != nil || len(ps) != 0 {
		t.Fatalf("a second store lists %v, %v: want none", ps, err)
	}
}

// TestOpenShared: handles of one OpenShared are separate connections to
// one database: a write through one is read through another, and closing
// one leaves the other working.
func TestOpenShared(t *testing.T) {
	ctx := t.Context()
	open := teststore.OpenShared(t)
	a, b := open(t), open(t)
	p, err := a.CreateProject(ctx, "shared")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := b.GetProject(ctx, p.ID)
	if err != nil || got.Name != "shared" {
		t.Fatalf("the other handle reads %+v, %v", got, err)
	}
	if _, err := a.ListProjects(ctx); err == nil {
		t.Error("a closed handle still reads")
	}
}

// TestBackendUnknown: a misspelt backend is a failure, not SQLite again.
func TestBackendUnknown(t *testing.T) {
	t.Setenv(teststore.EnvBackend, "postgress")
	ft := &fatalT{T: t}
	func() {
		defer func() { recover() }()
		teststore.Backend(ft)
	}()
	if !ft.failed {
		t.Fatal("an unknown backend did not fail the test")
	}
}

// fatalT records a Fatalf instead of ending the test.
type fatalT struct {
	*testing.T
	failed bool
}

func (f *fatalT) Fatalf(string, ...any) { f.failed = true; panic("fatal") }
