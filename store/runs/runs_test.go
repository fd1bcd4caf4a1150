package runs

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"

	"runhub/store"
	"runhub/store/sqlite"
)

// fixture is a run service on a fresh SQLite store with one task and run.
type fixture struct {
	st   *sqlite.Store
	svc  *Service
	task *store.Task
	ref  store.RunRef
}

func newFixture(t *testing.T, schema json.RawMessage) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	p, err := st.CreateProject(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	task, err := st.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created", JSONSchema: schema})
	if err != nil {
		t.Fatal(err)
	}
	svc := &Service{Store: st}
	run, err := svc.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{st: st, svc: svc, task: task, ref: store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: run.ID}}
}

// ctxRecorder is a Publisher that records whether the context each publish
// received was already done.
type ctxRecorder struct {
	mu   sync.Mutex
	errs []error
}

func (r *ctxRecorder) Publish(ctx context.Context, _ string, _ []store.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, ctx.Err())
}

// cancelAfterCommit is the real store, with the request's context
// cancelled right after each append commits: a client that disconnected
// just after its write.
type cancelAfterCommit struct {
	store.Store
	cancel context.CancelFunc
}

func (s cancelAfterCommit) AppendLog(ctx context.Context, ref store.RunRef, entries []store.LogEntry, idem *store.Idempotency) (*store.MutationResult, error) {
	res, err := s.Store.AppendLog(ctx, ref, entries, idem)
	s.cancel()
	return res, err
}

// TestPublishOutlivesRequest: a mutation committed by a request whose
// client went away right after the commit is still published with a live
// context (bounded by PublishTimeout), so subscribers get it at once.
func TestPublishOutlivesRequest(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &ctxRecorder{}
	svc := &Service{Store: cancelAfterCommit{Store: f.st, cancel: cancel}, Pub: rec}
	if _, err := svc.AppendLog(ctx, f.ref, []json.RawMessage{json.RawMessage(`{"type":"x"}`)}, nil); err != nil {
		t.Fatalf("append: %v", err)
	}
	if ctx.Err() == nil {
		t.Fatal("the request context was not cancelled after the commit")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.errs) != 1 {
		t.Fatalf("%d publishes, want 1", len(rec.errs))
	}
	if rec.errs[0] != nil {
		t.Fatalf("publish got a context that was already done: %v", rec.errs[0])
	}
}
