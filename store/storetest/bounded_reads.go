package storetest

import (
	"fmt"
	"strings"
	"testing"

	"runhub/store"
)

// bigEntries are the run of testBoundedReads: 40 entries of 200 KiB, 8 MiB
// in all, four times the read cap.
const (
	bigEntryCount = 40
	bigEntryBytes = 200 << 10
)

// bigLine is a stored entry numbered n of about bigEntryBytes.
func bigLine(n int) string {
	return fmt.Sprintf(`{"type":"notification","n":%d,"pad":"%s"}`, n, strings.Repeat("x", bigEntryBytes))
}

// testBoundedReads: QueryLog, Events and EventsBefore stop at their byte budget
// whatever their row limit asks for, return at least one entry when an
// entry alone is over the budget, and page through the whole log in order
// without loss; QueryLog's Matching still counts everything so that
// Offset+len(Entries) < Matching tells that more follows.
func testBoundedReads(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	ref := f.ref()
	raws := make([]string, bigEntryCount)
	for i := range raws {
		raws[i] = bigLine(i + 1)
	}
	_, err := s.AppendLog(ctx, ref, entries(t, raws...), nil)
	noErr(t, err, "AppendLog")
	// seqs: run 1, entries n=1..40 at seqs 2..41.

	size := func(es [][]byte) int {
		n := 0
		for _, e := range es {
			n += len(e)
		}
		return n
	}

	t.Run("QueryLog", func(t *testing.T) {
		for _, budget := range []int{0, store.ReadPageBytes} {
			page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 5000, MaxBytes: budget})
			noErr(t, err, "QueryLog")
			got := make([][]byte, len(page.Entries))
			for i, e := range page.Entries {
				got[i] = e
			}
			if n := size(got); n > store.ReadPageBytes || len(got) == 0 {
				t.Fatalf("MaxBytes %d: %d entries, %d bytes; want 1.. entries within %d bytes", budget, len(got), n, store.ReadPageBytes)
			}
			if page.Matching != bigEntryCount || page.Total != bigEntryCount || int64(len(got)) >= page.Matching {
				t.Fatalf("MaxBytes %d: %d entries, matching %d, total %d: want a partial page with more to come",
					budget, len(got), page.Matching, page.Total)
			}
		}
		one, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 5000, MaxBytes: 1})
		noErr(t, err, "QueryLog(MaxBytes 1)")
		if len(one.Entries) != 1 || numberOf(t, one.Entries[0]) != 1 {
			t.Fatalf("an entry over the budget: got %d entries, want the first one alone", len(one.Entries))
		}
		// Paging by offset reads everything, in order, each page bounded.
		next, offset := 1, 0
		for offset < bigEntryCount {
			page, err := s.QueryLog(ctx, ref, store.LogQuery{Limit: 5000, Offset: offset, MaxBytes: store.ReadPageBytes})
			noErr(t, err, "QueryLog page")
			if len(page.Entries) == 0 {
				t.Fatalf("empty page at offset %d of %d", offset, page.Matching)
			}
			for _, e := range page.Entries {
				if n := numberOf(t, e); n != next {
					t.Fatalf("offset %d: entry n=%d, want %d", offset, n, next)
				}
				next++
			}
			offset += len(page.Entries)
		}
		if next != bigEntryCount+1 {
			t.Fatalf("paging read %d entries, want %d", next-1, bigEntryCount)
		}
	})

	t.Run("Events", func(t *testing.T) {
		evs, err := s.Events(ctx, f.run.ID, 0, 500)
		noErr(t, err, "Events")
		data := make([][]byte, len(evs))
		for i, ev := range evs {
			data[i] = ev.Data
		}
		if n := size(data); len(evs) == 0 || len(evs) >= bigEntryCount || n > store.ReadPageBytes {
			t.Fatalf("%d events, %d bytes: want a non-empty partial page within %d bytes", len(evs), n, store.ReadPageBytes)
		}
		// Paging forward after the last seq returned reads every event once.
		var all []int64
		for after := int64(0); ; {
			page, err := s.Events(ctx, f.run.ID, after, 500)
			noErr(t, err, "Events page")
			if len(page) == 0 {
				break
			}
			all = append(all, seqsOf(page)...)
			after = page[len(page)-1].Seq
		}
		if want := seqRange(1, 41); fmt.Sprint(all) != fmt.Sprint(want) {
			t.Fatalf("paged seqs %v, want 1..41", all)
		}
	})

	t.Run("EventsBefore", func(t *testing.T) {
		evs, err := s.EventsBefore(ctx, f.run.ID, 42, 1000, store.ReadPageBytes)
		noErr(t, err, "EventsBefore")
		data := make([][]byte, len(evs))
		for i, ev := range evs {
			data[i] = ev.Data
		}
		if n := size(data); len(evs) == 0 || len(evs) >= bigEntryCount || n > store.ReadPageBytes {
			t.Fatalf("%d events, %d bytes: want a non-empty partial reply within %d bytes", len(evs), n, store.ReadPageBytes)
		}
		// The newest are kept, in order, ending just before `before`.
		for i, ev := range evs {
			if want := int64(42 - len(evs) + i); ev.Seq != want || ev.RunID != f.run.ID || ev.Kind != store.KindLog {
				t.Fatalf("event %d: seq %d kind %q, want seq %d", i, ev.Seq, ev.Kind, want)
			}
		}
		one, err := s.EventsBefore(ctx, f.run.ID, 42, 1000, 1)
		noErr(t, err, "EventsBefore(maxBytes 1)")
		if len(one) != 1 || one[0].Seq != 41 {
			t.Fatalf("an event over the budget: %v, want seq 41 alone", seqsOf(one))
		}
		few, err := s.EventsBefore(ctx, f.run.ID, 42, 3, store.ReadPageBytes)
		noErr(t, err, "EventsBefore(limit 3)")
		if got := seqsOf(few); len(got) != 3 || got[0] != 39 || got[2] != 41 {
			t.Fatalf("limit 3: seqs %v, want [39 40 41]", got)
		}
		// Paging backwards with before = the first seq returned reads every
		// event once, the run's state event last.
		var all []int64
		for before := int64(42); before > 1; {
			page, err := s.EventsBefore(ctx, f.run.ID, before, 1000, store.ReadPageBytes)
			noErr(t, err, "EventsBefore page")
			if len(page) == 0 {
				t.Fatalf("empty page before %d", before)
			}
			all = append(seqsOf(page), all...)
			before = page[0].Seq
		}
		if want := seqRange(1, 41); fmt.Sprint(all) != fmt.Sprint(want) {
			t.Fatalf("paged seqs %v, want 1..41", all)
		}
		if none, err := s.EventsBefore(ctx, f.run.ID, 1, 1000, store.ReadPageBytes); err != nil || len(none) != 0 {
			t.Fatalf("before 1: %v %v, want nothing", seqsOf(none), err)
		}
		_, err = s.EventsBefore(ctx, unknownUUID, 5, 10, store.ReadPageBytes)
		wantErr(t, err, store.ErrNotFound, "EventsBefore(unknown run)")
	})
}
