package sqlite_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"runhub/store"
	"runhub/store/sqlite"
)

// TestAppendSeesEveryWrite: an append answers the run as it is now, however
// it was last changed: by a mutation of the same store, by another process
// on the same file (a second Store), or by a rolled-back write. The writer
// caches the rows appends read (runCache), so a row served from the cache
// after any of these changes would fail here.
func TestAppendSeesEveryWrite(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir() + "/runhub.db"
	s1, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := sqlite.Open(ctx, path) // another process, as far as s1 knows
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	p, err := s1.CreateProject(ctx, "Cache")
	if err != nil {
		t.Fatal(err)
	}
	task, err := s1.CreateTask(ctx, p.ID, store.NewTask{Title: "cache", OriginProduct: "user_created"})
	if err != nil {
		t.Fatal(err)
	}
	created, err := s1.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress})
	if err != nil {
		t.Fatal(err)
	}
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: created.Run.ID}
	entry := benchBatch(t, 0, 1)
	seq := created.Run.LastSeq
	appendOutput := func(s *sqlite.Store, want string) {
		t.Helper()
		res, err := s.AppendLog(ctx, ref, entry, nil)
		if err != nil {
			t.Fatal(err)
		}
		seq++
		if res.Run.LastSeq != seq || len(res.Events) != 1 || res.Events[0].Seq != seq {
			t.Fatalf("append: last_seq %d, events %v; want seq %d", res.Run.LastSeq, res.Events, seq)
		}
		if got := string(res.Run.Output["v"]); got != want {
			t.Fatalf("append answered output v=%q, the run has %q", got, want)
		}
	}
	setOutput := func(s *sqlite.Store, v string) {
		t.Helper()
		res, err := s.SetOutput(ctx, ref, map[string]json.RawMessage{"v": json.RawMessage(v)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		seq = res.Run.LastSeq
	}

	appendOutput(s1, "")
	appendOutput(s1, "") // from the cache now
	setOutput(s1, "1")   // the same store
	appendOutput(s1, "1")
	appendOutput(s1, "1")
	setOutput(s2, "2") // another process
	appendOutput(s1, "2")
	appendOutput(s2, "2")
	setOutput(s1, "3")
	appendOutput(s2, "3")
	appendOutput(s1, "3")

	// A write rolled back (its mutation failed after writing the row)
	// leaves the row as it was, and a later write is seen.
	err = s1.WriteRunFunc(ctx, ref, func() error { return errors.New("refused") })
	if err == nil {
		t.Fatal("the failing mutation succeeded")
	}
	appendOutput(s1, "3")
	setOutput(s2, "4")
	appendOutput(s1, "4")

	if err := s2.DeleteTask(ctx, p.ID, task.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.AppendLog(ctx, ref, entry, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("append to a run of a deleted task: %v, want ErrNotFound", err)
	}
}

// TestRunCountersFromEvents: appends do not write the run's row; every read
// of a run (GetRun, RunByID, ListRuns, the mutations, after a reopen)
// still answers its last_seq and log_count as of its last append, across
// writes of the row in between.
func TestRunCountersFromEvents(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir() + "/runhub.db"
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	p, err := s.CreateProject(ctx, "Counters")
	if err != nil {
		t.Fatal(err)
	}
	task, err := s.CreateTask(ctx, p.ID, store.NewTask{Title: "counters", OriginProduct: "user_created"})
	if err != nil {
		t.Fatal(err)
	}
	created, err := s.CreateRun(ctx, p.ID, task.ID, store.NewRun{Status: store.StatusInProgress})
	if err != nil {
		t.Fatal(err)
	}
	ref := store.RunRef{ProjectID: p.ID, TaskID: task.ID, RunID: created.Run.ID}
	lastSeq, logs := created.Run.LastSeq, created.Run.LogCount
	check := func(when string) {
		t.Helper()
		runs := map[string]*store.Run{}
		var err error
		if runs["GetRun"], err = s.GetRun(ctx, ref); err != nil {
			t.Fatal(err)
		}
		if runs["RunByID"], err = s.RunByID(ctx, ref.RunID); err != nil {
			t.Fatal(err)
		}
		list, _, err := s.ListRuns(ctx, p.ID, task.ID, 10, 0)
		if err != nil || len(list) != 1 {
			t.Fatalf("ListRuns: %v, %d runs", err, len(list))
		}
		runs["ListRuns"] = &list[0]
		for name, r := range runs {
			if r.LastSeq != lastSeq || r.LogCount != logs {
				t.Errorf("%s: %s answered last_seq %d, log_count %d; want %d, %d", when, name, r.LastSeq, r.LogCount, lastSeq, logs)
			}
		}
	}
	appendN := func(n int) {
		t.Helper()
		res, err := s.AppendLog(ctx, ref, benchBatch(t, 0, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		lastSeq += int64(n)
		logs += int64(n)
		if res.Run.LastSeq != lastSeq || res.Run.LogCount != logs {
			t.Fatalf("append answered last_seq %d, log_count %d; want %d, %d", res.Run.LastSeq, res.Run.LogCount, lastSeq, logs)
		}
	}
	check("created")
	appendN(3)
	check("after appends")
	res, err := s.SetOutput(ctx, ref, map[string]json.RawMessage{"v": json.RawMessage("1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lastSeq++ // the output event, not a log entry
	if res.Run.LastSeq != lastSeq || res.Run.LogCount != logs {
		t.Fatalf("SetOutput answered last_seq %d, log_count %d; want %d, %d", res.Run.LastSeq, res.Run.LogCount, lastSeq, logs)
	}
	check("after a write of the row")
	appendN(2)
	appendN(70) // more than one insert statement
	check("after more appends")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = sqlite.Open(ctx, path); err != nil {
		t.Fatal(err)
	}
	check("after reopen")
	appendN(1)
	check("after reopen and an append")
}
