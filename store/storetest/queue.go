package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"runhub/store"
)

// testUserMessageQueue checks the steering queue: messages come out in
// the order they went in, per run; a message taken is gone (taken once,
// also by racing takers); a requeued one is first again; the queue is
// bounded; an unknown run or another project's run is ErrNotFound.
func testUserMessageQueue(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	a, b := f.ref(), f.newRun(t)
	msg := func(n int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"content":"m%d"}`, n)) }

	_, err := s.TakeUserMessage(ctx, a.RunID)
	wantErr(t, err, store.ErrNotFound, "TakeUserMessage of an empty queue")
	for i := 1; i <= 3; i++ {
		_, err := s.EnqueueUserMessage(ctx, a, msg(i))
		noErr(t, err, "EnqueueUserMessage")
	}
	_, err = s.EnqueueUserMessage(ctx, b, msg(9))
	noErr(t, err, "EnqueueUserMessage b")
	if n, err := s.PendingUserMessages(ctx, a.RunID); err != nil || n != 3 {
		t.Fatalf("PendingUserMessages = %d, %v; want 3", n, err)
	}

	first, err := s.TakeUserMessage(ctx, a.RunID)
	noErr(t, err, "TakeUserMessage")
	if first.RunID != a.RunID || !sameJSON(t, string(first.Params), string(msg(1))) || first.CreatedAt.IsZero() {
		t.Fatalf("first taken = %+v, want m1 of run a", first)
	}
	noErr(t, s.RequeueUserMessage(ctx, first), "RequeueUserMessage")
	for i := 1; i <= 3; i++ {
		m, err := s.TakeUserMessage(ctx, a.RunID)
		noErr(t, err, "TakeUserMessage")
		if !sameJSON(t, string(m.Params), string(msg(i))) {
			t.Fatalf("take %d = %s, want m%d (arrival order, the requeued one first)", i, m.Params, i)
		}
	}
	_, err = s.TakeUserMessage(ctx, a.RunID)
	wantErr(t, err, store.ErrNotFound, "TakeUserMessage after draining")
	if m, err := s.TakeUserMessage(ctx, b.RunID); err != nil || !sameJSON(t, string(m.Params), string(msg(9))) {
		t.Fatalf("run b's queue: %+v, %v", m, err)
	}

	// Racing takers: each message goes to exactly one.
	const n = 20
	for i := range n {
		_, err := s.EnqueueUserMessage(ctx, a, msg(i))
		noErr(t, err, "EnqueueUserMessage")
	}
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				m, err := s.TakeUserMessage(ctx, a.RunID)
				if err != nil {
					if n, _ := s.PendingUserMessages(ctx, a.RunID); n == 0 {
						return
					}
					continue // lost a race: look again
				}
				mu.Lock()
				seen[m.ID]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("racing takers got %d distinct messages, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("message %d taken %d times", id, c)
		}
	}

	// The bound.
	for range store.MaxQueuedUserMessages {
		_, err := s.EnqueueUserMessage(ctx, a, msg(0))
		noErr(t, err, "EnqueueUserMessage up to the bound")
	}
	_, err = s.EnqueueUserMessage(ctx, a, msg(0))
	wantErr(t, err, store.ErrQueueFull, "EnqueueUserMessage beyond MaxQueuedUserMessages")

	_, err = s.EnqueueUserMessage(ctx, store.RunRef{ProjectID: a.ProjectID, TaskID: a.TaskID, RunID: "nope"}, msg(0))
	wantErr(t, err, store.ErrNotFound, "EnqueueUserMessage of an unknown run")
	_, err = s.EnqueueUserMessage(ctx, store.RunRef{ProjectID: a.ProjectID + 1000, TaskID: a.TaskID, RunID: a.RunID}, msg(0))
	wantErr(t, err, store.ErrNotFound, "EnqueueUserMessage through another project")
}

// testPatchQueuesMessage checks RunPatch.QueueMessage (start's first
// message): queued in the PATCH's own transaction exactly when the PATCH
// applies; a refused PATCH (RequireStatus), one that changes nothing
// (only_if_non_terminal on a finished run) and one whose message does not
// fit the queue queue nothing, and the last leaves the run unchanged too.
func testPatchQueuesMessage(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	first := json.RawMessage(`{"content":"go","artifact_ids":["a1"]}`)
	start := store.RunPatch{Status: ptr(store.StatusQueued), RequireStatus: store.StatusNotStarted, QueueMessage: first}
	pending := func(ref store.RunRef) int {
		t.Helper()
		n, err := s.PendingUserMessages(ctx, ref.RunID)
		noErr(t, err, "PendingUserMessages")
		return n
	}

	res, err := s.UpdateRun(ctx, f.ref(), start, nil)
	noErr(t, err, "UpdateRun with a message")
	if res.Run.Status != store.StatusQueued {
		t.Fatalf("status %s, want queued", res.Run.Status)
	}
	m, err := s.TakeUserMessage(ctx, f.run.ID)
	noErr(t, err, "TakeUserMessage of the first message")
	if !sameJSON(t, string(m.Params), string(first)) {
		t.Fatalf("queued %s, want %s", m.Params, first)
	}
	_, err = s.UpdateRun(ctx, f.ref(), start, nil)
	var ve *store.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("a second start: %v, want a ValidationError", err)
	}
	if n := pending(f.ref()); n != 0 {
		t.Fatalf("a refused start queued %d messages", n)
	}

	done := f.newRun(t)
	_, err = s.UpdateRun(ctx, done, store.RunPatch{Status: ptr(store.StatusCompleted)}, nil)
	noErr(t, err, "UpdateRun completed")
	_, err = s.UpdateRun(ctx, done, store.RunPatch{Status: ptr(store.StatusQueued), OnlyIfNonTerminal: true, QueueMessage: first}, nil)
	noErr(t, err, "UpdateRun only_if_non_terminal on a finished run")
	if n := pending(done); n != 0 {
		t.Fatalf("a PATCH that changed nothing queued %d messages", n)
	}

	full := f.newRun(t)
	for range store.MaxQueuedUserMessages {
		_, err := s.EnqueueUserMessage(ctx, full, json.RawMessage(`{"content":"x"}`))
		noErr(t, err, "EnqueueUserMessage up to the bound")
	}
	before := len(allEvents(t, s, full.RunID))
	_, err = s.UpdateRun(ctx, full, start, nil)
	wantErr(t, err, store.ErrQueueFull, "a start whose message does not fit the queue")
	r, err := s.GetRun(ctx, full)
	noErr(t, err, "GetRun")
	if r.Status != store.StatusNotStarted || len(allEvents(t, s, full.RunID)) != before || pending(full) != store.MaxQueuedUserMessages {
		t.Fatalf("a start refused for a full queue left status %s, %d events (had %d), %d queued: want it all unchanged",
			r.Status, len(allEvents(t, s, full.RunID)), before, pending(full))
	}
}
