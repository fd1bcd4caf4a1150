package postgres_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
)

// outageBound is the longest a call may take while the server is down: a
// refused connection fails at once, so this is slack for a loaded machine,
// and well under the connect timeout a black-holed host would take.
const outageBound = 3 * time.Second

// TestServerRestart: with PostgreSQL down, every kind of call fails fast
// with store.ErrUnavailable (the REST layer's 503), including those handed
// a pooled connection that died with the server; once the server is back,
// the same Store (no reopening) works again, and the first writes do not
// fail on connections that died in the restart.
func TestServerRestart(t *testing.T) {
	ctx := t.Context()
	srv := pgtest.Start(t)
	s, err := postgres.Open(ctx, srv.URL())
	must(t, err)
	defer s.Close()
	ref := fixture(t, s)
	entry := func(n int) []store.LogEntry {
		e, err := store.ParseLogEntry(fmt.Appendf(nil, `{"type":"x","n":%d}`, n), time.Now())
		must(t, err)
		return []store.LogEntry{e}
	}
	calls := map[string]func() error{
		"AppendLog": func() error { _, err := s.AppendLog(ctx, ref, entry(0), nil); return err },
		"CreateRun": func() error { _, err := s.CreateRun(ctx, ref.ProjectID, ref.TaskID, store.NewRun{}); return err },
		"UpdateRun": func() error {
			b := new(string)
			*b = "main"
			_, err := s.UpdateRun(ctx, ref, store.RunPatch{Branch: &b}, nil)
			return err
		},
		"GetRun":   func() error { _, err := s.GetRun(ctx, ref); return err },
		"RunByID":  func() error { _, err := s.RunByID(ctx, ref.RunID); return err },
		"QueryLog": func() error { _, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 10}); return err },
		"Events":   func() error { _, err := s.Events(ctx, ref.RunID, 0, 10); return err },
		"ListRuns": func() error { _, _, err := s.ListRuns(ctx, ref.ProjectID, ref.TaskID, 10, 0); return err },
		"APIKey": func() error {
			_, err := s.APIKeyByHash(ctx, make([]byte, 32))
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		},
		"Ping":  func() error { return s.Ping(ctx) },
		"Probe": func() error { return s.ProbeWrite(ctx) },
		"CreateTask": func() error {
			_, err := s.CreateTask(ctx, ref.ProjectID, store.NewTask{Title: "t", OriginProduct: "user_created"})
			return err
		},
	}
	// warm fills the pool with idle connections: every call, several at once.
	const conc = 8
	warm := func() {
		var wg sync.WaitGroup
		for range conc {
			for name, call := range calls {
				wg.Go(func() {
					if err := call(); err != nil {
						t.Errorf("%s: %v", name, err)
					}
				})
			}
		}
		wg.Wait()
	}
	warm()
	if t.Failed() {
		t.FailNow()
	}

	srv.Stop()
	// Each call, several at once, so that the pool's idle connections (all
	// dead now) are handed out as well as new ones refused.
	var wg sync.WaitGroup
	for range conc {
		for name, call := range calls {
			wg.Go(func() {
				start := time.Now()
				err := call()
				if took := time.Since(start); took > outageBound {
					t.Errorf("%s took %v with the server down, want < %v", name, took, outageBound)
				}
				if !errors.Is(err, store.ErrUnavailable) {
					t.Errorf("%s with the server down: %v, want store.ErrUnavailable", name, err)
				}
			})
		}
	}
	wg.Wait()

	// A quick restart after a warm-up: the pool's connections died with
	// the server while idle; the first writes after it must not fail.
	srv.Restart()
	warm()
	srv.Stop()
	srv.Restart()
	var ok sync.WaitGroup
	for i := range 2 * conc {
		ok.Go(func() {
			if _, err := s.AppendLog(ctx, ref, entry(i), nil); err != nil {
				t.Errorf("AppendLog right after the restart: %v", err)
			}
		})
	}
	ok.Wait()
	warm()
}
