package runs

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"runhub/store"
	"runhub/store/blob"
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
	svc, err := New(Config{Store: st, Publisher: NoPublisher{}})
	if err != nil {
		t.Fatal(err)
	}
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

func (r *ctxRecorder) Publish(ctx context.Context, _ string, _ []store.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, ctx.Err())
	return nil
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
	svc, err := New(Config{Store: cancelAfterCommit{Store: f.st, cancel: cancel}, Publisher: rec})
	if err != nil {
		t.Fatal(err)
	}
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

// TestNewRequiresDependencies: a service without a store or a publisher is
// a construction error, never one that quietly publishes nothing.
func TestNewRequiresDependencies(t *testing.T) {
	f := newFixture(t, nil)
	for name, cfg := range map[string]Config{
		"no store":     {Publisher: NoPublisher{}},
		"no publisher": {Store: f.st},
	} {
		if svc, err := New(cfg); err == nil || svc != nil {
			t.Errorf("%s: New = %v, %v; want an error", name, svc, err)
		}
	}
}

// TestServiceRefusesInvalidUTF8: whoever calls the service (REST refuses
// such bodies first; the agent's JSON-RPC layer re-encodes them), raw
// values and strings with bytes that are not UTF-8 are refused on their
// field and nothing is stored.
func TestServiceRefusesInvalidUTF8(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	blobs, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	bad := json.RawMessage("\"caf\xc3\"")
	for _, c := range []struct {
		attr string
		call func() error
	}{
		{"entries", func() error {
			_, err := f.svc.AppendLog(ctx, f.ref, []json.RawMessage{json.RawMessage(`{"type":"x"}`), json.RawMessage("{\"text\":\"\xff\"}")}, nil)
			return err
		}},
		{"Idempotency-Key", func() error {
			_, err := f.svc.AppendLog(ctx, f.ref, []json.RawMessage{json.RawMessage(`{"type":"x"}`)}, &store.Idempotency{Key: "k\xff"})
			return err
		}},
		{"output", func() error {
			_, err := f.svc.SetOutput(ctx, f.ref, map[string]json.RawMessage{"a": bad}, nil)
			return err
		}},
		{"state", func() error {
			_, err := f.svc.UpdateRun(ctx, f.ref, store.RunPatch{State: map[string]json.RawMessage{"a": bad}}, nil)
			return err
		}},
		{"output", func() error {
			_, err := f.svc.UpdateRun(ctx, f.ref, store.RunPatch{Output: map[string]json.RawMessage{"a": bad}}, nil)
			return err
		}},
		{"artifacts.0.name", func() error {
			_, err := f.svc.AddArtifacts(ctx, blobs, f.ref, []ArtifactInput{{Name: "a\xff", Type: "plan", Content: "x"}})
			return err
		}},
		{"artifacts.0.content_type", func() error {
			_, err := f.svc.AddArtifacts(ctx, blobs, f.ref, []ArtifactInput{{Name: "a", Type: "plan", Content: "x", ContentType: "text/\xff"}})
			return err
		}},
		{"artifacts.0.source", func() error {
			src := "ag\xffent"
			_, err := f.svc.AddArtifacts(ctx, blobs, f.ref, []ArtifactInput{{Name: "a", Type: "plan", Content: "x", Source: &src}})
			return err
		}},
	} {
		var ve *store.ValidationError
		if err := c.call(); !errors.As(err, &ve) || ve.Attr != c.attr {
			t.Fatalf("%s: %v, want a validation error on %s", c.attr, err, c.attr)
		}
	}
	run, err := f.st.GetRun(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	if run.LastSeq != 1 {
		t.Fatalf("refused changes stored events: last seq %d, want 1 (the run's creation)", run.LastSeq)
	}
}
