package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"runhub/store"
)

// testManyRuns: many callers append to many runs at once (the many-runs
// shape, where a backend may let appends of different runs share a
// commit), some of them failing (an idempotency mismatch, an unknown run);
// every successful answer's entry is stored exactly once, at the seq it was
// answered, every failed one nowhere, and every run's seqs stay contiguous.
func testManyRuns(t *testing.T, s store.Store) {
	const callers, perCaller, runs = 16, 30, 8
	ctx := t.Context()
	f := newFixture(t, s)
	refs := []store.RunRef{f.ref()}
	for len(refs) < runs {
		refs = append(refs, f.newRun(t))
	}
	for _, ref := range refs {
		_, err := s.AppendLog(ctx, ref, entries(t, `{"type":"x","tag":"keyed"}`), &store.Idempotency{Key: "taken", RequestHash: sum("1")})
		noErr(t, err, "record a key")
	}
	unknown := refs[0]
	unknown.RunID = unknownUUID

	type outcome struct {
		run  string
		tag  string
		seq  int64 // 0: failed
		fail bool
	}
	results := make([][]outcome, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range perCaller {
				ref := refs[(c*7+i)%runs]
				tag := fmt.Sprintf("c%d-%d", c, i)
				var idem *store.Idempotency
				var want error
				switch i % 6 {
				case 1:
					idem, want = &store.Idempotency{Key: "taken", RequestHash: sum("2")}, store.ErrIdempotencyMismatch
				case 2:
					ref, want = unknown, store.ErrNotFound
				case 3:
					idem = &store.Idempotency{Key: "k-" + tag, RequestHash: sum(tag)}
				}
				res, err := s.AppendLog(ctx, ref, entries(t, fmt.Sprintf(`{"type":"x","tag":%q}`, tag)), idem)
				o := outcome{run: ref.RunID, tag: tag, fail: want != nil}
				switch {
				case want != nil && !errors.Is(err, want):
					t.Errorf("%s: %v, want %v", tag, err, want)
				case want == nil && err != nil:
					t.Errorf("%s: %v", tag, err)
				case err == nil && (len(res.Events) != 1 || res.Replayed || res.Run.LastSeq != res.Events[0].Seq):
					t.Errorf("%s: answered events %v replayed %v last_seq %d", tag, seqsOf(res.Events), res.Replayed, res.Run.LastSeq)
				case err == nil:
					o.seq = res.Events[0].Seq
				}
				results[c] = append(results[c], o)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	stored := map[string]map[string][]int64{}
	total := 0
	for _, ref := range refs {
		evs := allEvents(t, s, ref.RunID)
		if got := seqsOf(evs); !slices.Equal(got, seqRange(1, int64(len(evs)))) {
			t.Fatalf("run %s: seqs %v not contiguous from 1", ref.RunID, got)
		}
		tags := map[string][]int64{}
		for _, ev := range evs {
			if ev.Kind != store.KindLog {
				continue
			}
			var e struct{ Tag string }
			noErr(t, json.Unmarshal(ev.Data, &e), "decode entry")
			tags[e.Tag] = append(tags[e.Tag], ev.Seq)
			total++
		}
		stored[ref.RunID] = tags
	}
	successes := 0
	for _, rs := range results {
		for _, o := range rs {
			got := stored[o.run][o.tag]
			switch {
			case o.fail && len(got) > 0:
				t.Errorf("%s failed but is stored at %v", o.tag, got)
			case !o.fail && !slices.Equal(got, []int64{o.seq}):
				t.Errorf("%s answered seq %d, stored at %v", o.tag, o.seq, got)
			}
			if !o.fail {
				successes++
			}
		}
	}
	if want := successes + runs; total != want { // each run's "keyed" entry too
		t.Errorf("%d log entries stored, want %d", total, want)
	}
}
