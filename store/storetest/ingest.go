package storetest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"runhub/store"
)

// ingestLines builds sender lines seqs, each a logLine numbered by its seq
// (chunk: the ephemeral chunkLine instead).
func ingestLines(t testing.TB, seqs ...int64) []store.IngestLine {
	t.Helper()
	out := make([]store.IngestLine, len(seqs))
	for i, q := range seqs {
		out[i] = store.IngestLine{Seq: q, Entry: entries(t, logLine(int(q)))[0]}
	}
	return out
}

// ingestedNumbers are the "n" of the run's stored log entries, in seq order.
func ingestedNumbers(t testing.TB, s store.Store, runID string) []int {
	t.Helper()
	var out []int
	for _, ev := range allEvents(t, s, runID) {
		if ev.Kind == store.KindLog {
			out = append(out, numberOf(t, ev.Data))
		}
	}
	return out
}

func checkIngest(t testing.TB, what string, res *store.IngestResult, accepted, dup int, last int64, conflict string) {
	t.Helper()
	got := ""
	if res.Conflict != nil {
		got = res.Conflict.Reason
		if res.Conflict.LastAccepted != res.State.LastAccepted {
			t.Errorf("%s: conflict last_accepted %d, state %d", what, res.Conflict.LastAccepted, res.State.LastAccepted)
		}
	}
	if res.Accepted != accepted || res.Duplicate != dup || res.State.LastAccepted != last || got != conflict {
		t.Errorf("%s: accepted %d duplicate %d last %d conflict %q, want %d %d %d %q",
			what, res.Accepted, res.Duplicate, res.State.LastAccepted, got, accepted, dup, last, conflict)
	}
}

// testIngest checks the sequenced ingest: the sender's seq is kept per run
// beside the run's own seq, a seq already accepted is a duplicate that is
// never stored again (also when sent at once through several handles), a
// gap stops the write after the lines before it, and a completed stream
// takes no more events.
func testIngest(t *testing.T, s store.Store) {
	ctx := context.Background()
	f := newFixture(t, s)
	ref := f.ref()

	st, err := s.IngestState(ctx, ref)
	noErr(t, err, "IngestState")
	if st != (store.IngestState{}) {
		t.Fatalf("fresh run ingest state = %+v, want zero", st)
	}
	_, err = s.IngestState(ctx, store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: unknownUUID})
	wantErr(t, err, store.ErrNotFound, "IngestState of an unknown run")
	_, err = s.IngestEvents(ctx, store.RunRef{ProjectID: f.project.ID, TaskID: f.task.ID, RunID: unknownUUID}, ingestLines(t, 1))
	wantErr(t, err, store.ErrNotFound, "IngestEvents of an unknown run")

	res, err := s.IngestEvents(ctx, ref, ingestLines(t, 1, 2, 3))
	noErr(t, err, "IngestEvents 1..3")
	checkIngest(t, "1..3", res, 3, 0, 3, "")
	// The run's own seq goes on from its create event (seq 1).
	if got := seqsOf(res.Events); !slices.Equal(got, []int64{2, 3, 4}) || res.Run.LastSeq != 4 {
		t.Errorf("events of 1..3 have seqs %v (run last_seq %d), want [2 3 4]", got, res.Run.LastSeq)
	}

	res, err = s.IngestEvents(ctx, ref, ingestLines(t, 2, 3, 4, 5))
	noErr(t, err, "IngestEvents 2..5")
	checkIngest(t, "2..5 resent", res, 2, 2, 5, "")

	// An ephemeral chunk is accepted (its seq counts) but never stored.
	chunk := store.IngestLine{Seq: 6, Entry: entries(t, chunkLine)[0]}
	res, err = s.IngestEvents(ctx, ref, []store.IngestLine{chunk})
	noErr(t, err, "IngestEvents chunk")
	checkIngest(t, "chunk", res, 1, 0, 6, "")
	if len(res.Events) != 1 || res.Events[0].Seq != 0 {
		t.Errorf("chunk events = %+v, want one with seq 0", res.Events)
	}

	// A gap: 7 is stored, 9 and what follows are not.
	res, err = s.IngestEvents(ctx, ref, ingestLines(t, 7, 9, 10))
	noErr(t, err, "IngestEvents gap")
	checkIngest(t, "7, 9, 10", res, 1, 0, 7, store.IngestGap)
	if res.Conflict != nil && res.Conflict.Got != 9 {
		t.Errorf("gap conflict got %d, want 9", res.Conflict.Got)
	}
	if got := ingestedNumbers(t, s, ref.RunID); !slices.Equal(got, []int{1, 2, 3, 4, 5, 7}) {
		t.Errorf("stored lines %v, want [1 2 3 4 5 7]", got)
	}
	st, err = s.IngestState(ctx, ref)
	noErr(t, err, "IngestState")
	if st != (store.IngestState{LastAccepted: 7}) {
		t.Errorf("ingest state = %+v, want last 7", st)
	}

	// Completion: a final_seq that is not the last accepted is refused.
	res, err = s.CompleteIngest(ctx, ref, 6)
	noErr(t, err, "CompleteIngest 6")
	checkIngest(t, "complete 6", res, 0, 0, 7, store.IngestFinalSeq)
	res, err = s.CompleteIngest(ctx, ref, 7)
	noErr(t, err, "CompleteIngest 7")
	checkIngest(t, "complete 7", res, 0, 0, 7, "")
	if !res.State.Complete {
		t.Errorf("state after completion = %+v, want complete", res.State)
	}
	res, err = s.CompleteIngest(ctx, ref, 7)
	noErr(t, err, "CompleteIngest 7 again")
	checkIngest(t, "complete 7 again", res, 0, 0, 7, "")
	for _, lines := range [][]store.IngestLine{ingestLines(t, 8), ingestLines(t, 7)} {
		res, err = s.IngestEvents(ctx, ref, lines)
		noErr(t, err, "IngestEvents after completion")
		checkIngest(t, "after completion", res, 0, 0, 7, store.IngestComplete)
	}
	if got := ingestedNumbers(t, s, ref.RunID); !slices.Equal(got, []int{1, 2, 3, 4, 5, 7}) {
		t.Errorf("stored lines after completion %v, want [1 2 3 4 5 7]", got)
	}

	// Another run's sequence is its own.
	other := f.newRun(t)
	res, err = s.IngestEvents(ctx, other, ingestLines(t, 1))
	noErr(t, err, "IngestEvents other run")
	checkIngest(t, "other run", res, 1, 0, 1, "")

	// Senders racing with the same lines (a retried upload reaching two
	// nodes): every seq is stored once, in order, and accepted once.
	race := f.newRun(t)
	const senders, total, batch = 6, 60, 7
	var mu sync.Mutex
	accepted, dups := 0, 0
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := int64(1); from <= total; from += batch {
				var seqs []int64
				for q := from; q < from+batch && q <= total; q++ {
					seqs = append(seqs, q)
				}
				res, err := s.IngestEvents(ctx, race, ingestLines(t, seqs...))
				if errors.Is(err, store.ErrBusy) {
					from -= batch // the lock was not free in time: send again
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				if res.Conflict != nil {
					errs <- res.Conflict
					return
				}
				mu.Lock()
				accepted, dups = accepted+res.Accepted, dups+res.Duplicate
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("racing sender: %v", err)
	}
	want := make([]int, total)
	for i := range want {
		want[i] = i + 1
	}
	if got := ingestedNumbers(t, s, race.RunID); !slices.Equal(got, want) {
		t.Errorf("racing senders stored %v, want 1..%d once each", got, total)
	}
	if accepted != total || dups != (senders-1)*total {
		t.Errorf("racing senders: accepted %d duplicate %d, want %d and %d", accepted, dups, total, (senders-1)*total)
	}
}
