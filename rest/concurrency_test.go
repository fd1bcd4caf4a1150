package rest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
)

// concEntry is what the concurrency tests put in each entry.
type concEntry struct {
	G int `json:"g"`
	I int `json:"i"`
	J int `json:"j"`
}

// hammer runs goroutines×requests append_log requests of batch entries each
// against one run, all at once, and fails on any non-200.
func hammer(t *testing.T, e *env, f fixture, goroutines, requests, batch int) {
	t.Helper()
	path := f.path(e, "/append_log")
	var wg sync.WaitGroup
	errs := make(chan string, goroutines)
	start := make(chan struct{})
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			<-start
			for i := 0; i < requests; i++ {
				entries := make([]concEntry, batch)
				for j := range entries {
					entries[j] = concEntry{G: g, I: i, J: j}
				}
				body, _ := json.Marshal(map[string]any{"entries": entries})
				hr, _ := http.NewRequest("POST", e.srv.URL+path, bytesReader(body))
				hr.Header.Set("Authorization", "Bearer "+e.writeKey)
				hr.Header.Set("Content-Type", "application/json")
				res, err := e.client.Do(hr)
				if err != nil {
					errs <- fmt.Sprintf("g%d i%d: %v", g, i, err)
					return
				}
				b := drain(res)
				if res.StatusCode != http.StatusOK {
					errs <- fmt.Sprintf("g%d i%d: HTTP %d %s", g, i, res.StatusCode, b)
					return
				}
			}
		}(g)
	}
	close(start)
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// pageAll reads every stored entry through session_logs, 5000 at a time.
func pageAll(t *testing.T, e *env, f fixture) []concEntry {
	t.Helper()
	var out []concEntry
	for offset := 0; ; {
		res := e.do(req{Method: "GET", Path: f.path(e, "/session_logs") + "?limit=5000&offset=" + strconv.Itoa(offset), Key: e.readKey})
		wantStatus(t, res, http.StatusOK)
		var page []concEntry
		if err := json.Unmarshal(res.body, &page); err != nil {
			t.Fatalf("session_logs: %v", err)
		}
		out = append(out, page...)
		offset += len(page)
		if res.header.Get("X-Has-More") != "true" {
			if res.header.Get("X-Total-Count") != strconv.Itoa(len(out)) {
				t.Errorf("X-Total-Count %s, read %d", res.header.Get("X-Total-Count"), len(out))
			}
			return out
		}
		if len(page) == 0 {
			t.Fatal("X-Has-More with an empty page")
		}
	}
}

// checkSeqs checks the run's events: seq 1..n+1 with no gap, seq 1 the
// creation's task_run_state, then n log entries; per goroutine the (i, j)
// order is the order they were sent, and every request's entries are
// contiguous.
func checkSeqs(t *testing.T, e *env, f fixture, goroutines, requests, batch int) {
	t.Helper()
	n := goroutines * requests * batch
	evs := e.events(f.run)
	if len(evs) != n+1 {
		t.Fatalf("%d events, want %d", len(evs), n+1)
	}
	if evs[0].Seq != 1 || evs[0].Kind != "task_run_state" {
		t.Errorf("first event: seq %d kind %s", evs[0].Seq, evs[0].Kind)
	}
	next := make([]int, goroutines) // next expected i*batch+j per goroutine
	for k, ev := range evs {
		if ev.Seq != int64(k+1) {
			t.Fatalf("event %d has seq %d: gap or reuse", k, ev.Seq)
		}
		if k == 0 {
			continue
		}
		if ev.Kind != "log" {
			t.Fatalf("seq %d: kind %s", ev.Seq, ev.Kind)
		}
		var c concEntry
		if err := json.Unmarshal(ev.Data, &c); err != nil {
			t.Fatalf("seq %d: %v", ev.Seq, err)
		}
		if c.G < 0 || c.G >= goroutines {
			t.Fatalf("seq %d: goroutine %d", ev.Seq, c.G)
		}
		if got := c.I*batch + c.J; got != next[c.G] {
			t.Fatalf("seq %d: goroutine %d entry (i=%d, j=%d) out of order, want #%d", ev.Seq, c.G, c.I, c.J, next[c.G])
		}
		next[c.G]++
		// Within a request, entries are contiguous: entry j follows j-1 of
		// the same request directly.
		if c.J > 0 {
			var prev concEntry
			json.Unmarshal(evs[k-1].Data, &prev)
			if prev.G != c.G || prev.I != c.I || prev.J != c.J-1 {
				t.Fatalf("seq %d: entry %+v does not directly follow its request's previous entry (got %+v)", ev.Seq, c, prev)
			}
		}
	}
	for g, got := range next {
		if got != requests*batch {
			t.Errorf("goroutine %d: %d entries stored, want %d", g, got, requests*batch)
		}
	}
}

func TestConcurrentAppendLogSingles(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	const goroutines, requests = 16, 250
	e := newEnv(t, nil)
	f := e.fixture()
	hammer(t, e, f, goroutines, requests, 1)
	entries := pageAll(t, e, f)
	if len(entries) != goroutines*requests {
		t.Fatalf("session_logs shows %d entries, want %d", len(entries), goroutines*requests)
	}
	// session_logs order is seq order: per goroutine, i increases.
	last := make([]int, goroutines)
	for g := range last {
		last[g] = -1
	}
	for _, c := range entries {
		if c.I != last[c.G]+1 {
			t.Fatalf("session_logs: goroutine %d entry %d after %d", c.G, c.I, last[c.G])
		}
		last[c.G] = c.I
	}
	checkSeqs(t, e, f, goroutines, requests, 1)
}

func TestConcurrentAppendLogBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	const goroutines, requests, batch = 16, 25, 10
	e := newEnv(t, nil)
	f := e.fixture()
	hammer(t, e, f, goroutines, requests, batch)
	if entries := pageAll(t, e, f); len(entries) != goroutines*requests*batch {
		t.Fatalf("session_logs shows %d entries, want %d", len(entries), goroutines*requests*batch)
	}
	checkSeqs(t, e, f, goroutines, requests, batch)
}

// Concurrent PATCHes and appends share one gap-free seq.
func TestConcurrentMixedMutations(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				var r req
				switch i % 3 {
				case 0:
					r = req{Method: "PATCH", Path: f.path(e, ""), Body: map[string]any{"state": map[string]any{fmt.Sprint("g", g): i}}}
				case 1:
					r = req{Method: "POST", Path: f.path(e, "/append_log"), Body: map[string]any{"entries": []any{map[string]any{"g": g, "i": i}}}}
				default:
					r = req{Method: "PATCH", Path: f.path(e, "/set_output"), Body: map[string]any{"output": map[string]any{"g": g}}}
				}
				r.Key = e.writeKey
				res := doWith(t, e.client, e.srv.URL, r)
				if res.status != http.StatusOK {
					t.Errorf("%s %s: %s", r.Method, r.Path, res)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	evs := e.events(f.run)
	if len(evs) != 1+8*20 {
		t.Fatalf("%d events, want %d", len(evs), 1+8*20)
	}
	for k, ev := range evs {
		if ev.Seq != int64(k+1) {
			t.Fatalf("event %d has seq %d", k, ev.Seq)
		}
	}
	// The merged state has every goroutine's last value.
	run := obj(t, e.do(req{Method: "GET", Path: f.path(e, ""), Key: e.readKey}))
	state := run["state"].(map[string]any)
	for g := 0; g < 8; g++ {
		if fmt.Sprint(state[fmt.Sprint("g", g)]) != "18" {
			t.Errorf("state g%d = %v, want 18", g, state[fmt.Sprint("g", g)])
		}
	}
}
