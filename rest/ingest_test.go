package rest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/teststore"
)

// evLine is the NDJSON line of sender seq n; its event carries n.
func evLine(n int) string {
	return fmt.Sprintf(`{"seq":%d,"event":{"type":"notification","timestamp":"2026-01-01T00:00:00.000001Z","n":%d,`+
		`"notification":{"jsonrpc":"2.0","method":"_posthog/console","params":{"message":"line %d"}}}}`, n, n, n)
}

// evLines joins the lines of seqs, each ended by "\n".
func evLines(seqs ...int) string {
	var b strings.Builder
	for _, n := range seqs {
		b.WriteString(evLine(n))
		b.WriteByte('\n')
	}
	return b.String()
}

func completeLine(final int) string {
	return fmt.Sprintf(`{"type":"_posthog/stream_complete","final_seq":%d}`+"\n", final)
}

// ingest POSTs body to the run's event_stream with key (an API key or an
// ingest token); project "" is p1.
func (e *env) ingest(f fixture, project, key, body string) *resp {
	e.t.Helper()
	path := f.path(e, "/event_stream/")
	if project != "" {
		path = fmt.Sprintf("/api/projects/%s/tasks/%s/runs/%s/event_stream/", project, f.task, f.run)
	}
	return e.do(req{Method: "POST", Path: path, Key: key, Body: body,
		Headers: map[string]string{"Content-Type": "application/x-ndjson"}})
}

// ingestCounts decodes a 200 answer.
func ingestCounts(t testing.TB, res *resp) (accepted, duplicate, last int64) {
	t.Helper()
	wantStatus(t, res, http.StatusOK)
	var b map[string]int64
	if err := json.Unmarshal(res.body, &b); err != nil || len(b) != 3 {
		t.Fatalf("want {accepted, duplicate, last_accepted_seq}: %s", res)
	}
	return b["accepted"], b["duplicate"], b["last_accepted_seq"]
}

func wantCounts(t testing.TB, res *resp, accepted, duplicate, last int64) {
	t.Helper()
	a, d, l := ingestCounts(t, res)
	if a != accepted || d != duplicate || l != last {
		t.Errorf("accepted %d duplicate %d last %d, want %d %d %d", a, d, l, accepted, duplicate, last)
	}
}

// wantIngestError checks a {"error", "last_accepted_seq"?} answer; last
// < 0: the body has no last_accepted_seq.
func wantIngestError(t testing.TB, res *resp, status int, msg string, last int64) {
	t.Helper()
	wantStatus(t, res, status)
	var b struct {
		Error string `json:"error"`
		Last  *int64 `json:"last_accepted_seq"`
	}
	if err := json.Unmarshal(res.body, &b); err != nil {
		t.Fatalf("error body: %v: %s", err, res)
	}
	if p, ok := strings.CutSuffix(msg, "..."); (ok && !strings.HasPrefix(b.Error, p)) || (!ok && b.Error != msg) {
		t.Errorf("error %q, want %q", b.Error, msg)
	}
	switch {
	case last < 0 && b.Last != nil:
		t.Errorf("last_accepted_seq %d, want none: %s", *b.Last, res)
	case last >= 0 && (b.Last == nil || *b.Last != last):
		t.Errorf("last_accepted_seq %v, want %d: %s", b.Last, last, res)
	}
}

// ingested returns the "n" of the run's stored log entries, in seq order.
func (e *env) ingested(run string) []int {
	e.t.Helper()
	var out []int
	for _, ev := range e.events(run) {
		if ev.Kind != store.KindLog {
			continue
		}
		var v struct{ N int }
		if err := json.Unmarshal(ev.Data, &v); err != nil {
			e.t.Fatalf("entry %s: %v", ev.Data, err)
		}
		out = append(out, v.N)
	}
	return out
}

func seqList(from, to int) []int {
	var out []int
	for n := from; n <= to; n++ {
		out = append(out, n)
	}
	return out
}

// TestEventStreamIngest: lines join the run's log once each, by their
// sender seq; an empty body reports where the sender stands; the project
// may be @current.
func TestEventStreamIngest(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()

	wantCounts(t, e.ingest(f, "", e.writeKey, ""), 0, 0, 0)
	wantCounts(t, e.ingest(f, "", e.writeKey, evLines(1, 2, 3)), 3, 0, 3)
	wantCounts(t, e.ingest(f, "", e.writeKey, evLines(2, 3, 4)), 1, 2, 4)
	// Blank lines are skipped; the last line may lack its newline.
	wantCounts(t, e.ingest(f, "@current", e.writeKey, "\n  \n"+evLines(5)+"\r\n"+evLine(6)), 2, 0, 6)
	wantCounts(t, e.ingest(f, "@current", e.writeKey, ""), 0, 0, 6)
	if got := e.ingested(f.run); !slices.Equal(got, seqList(1, 6)) {
		t.Errorf("stored %v, want 1..6", got)
	}
	// The run's own seqs go on: the create event is 1.
	evs := e.events(f.run)
	if last := evs[len(evs)-1].Seq; last != 7 {
		t.Errorf("run's last seq %d, want 7", last)
	}
	// session_logs shows them like appended entries.
	if _, logs := e.sessionLogs(f, ""); len(logs) != 6 || logs[0]["n"] != float64(1) {
		t.Errorf("session_logs = %v, want the 6 events", logs)
	}
	// Another run's sender sequence is its own.
	g := e.fixture()
	wantCounts(t, e.ingest(g, "", e.writeKey, evLines(1)), 1, 0, 1)
}

// TestEventStreamConflicts: a gap, a line after completion and a wrong
// final_seq are 409 with last_accepted_seq; bad lines are 400; the lines
// before any of them stay accepted.
func TestEventStreamConflicts(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()

	wantIngestError(t, e.ingest(f, "", e.writeKey, evLines(1, 2, 4, 5)), http.StatusConflict, "Event sequence gap: expected 3, received 4", 2)
	if got := e.ingested(f.run); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("after the gap stored %v, want [1 2]", got)
	}
	for _, tc := range []struct{ body, msg string }{
		{evLines(3) + "{not json\n" + evLines(4), "Invalid JSON line"},
		{evLines(4) + "[1]\n", "Each event line must be a JSON object"},
		{evLines(5) + `{"seq": 0, "event": {}}` + "\n", "Event sequence must be a positive integer"},
		{evLines(6) + `{"seq": 7, "event": 1}` + "\n", "Event payload must be an object"},
		{evLines(7) + "{\"seq\": 8, \"event\": {\"a\": \"\xff\"}}\n", "Invalid UTF-8 in event stream"},
		{evLines(8) + completeLine(8) + evLines(9), "Completion line must be the final event stream line"},
		{`{"type":"_posthog/stream_complete","final_seq":-1}`, "Completion final sequence must be a non-negative integer"},
	} {
		wantIngestError(t, e.ingest(f, "", e.writeKey, tc.body), http.StatusBadRequest, tc.msg, -1)
	}
	if got := e.ingested(f.run); !slices.Equal(got, seqList(1, 8)) {
		t.Errorf("after the bad lines stored %v, want 1..8", got)
	}
	wantIngestError(t, e.ingest(f, "", e.writeKey, completeLine(7)), http.StatusConflict,
		"Completion final sequence 7 does not match last accepted sequence 8", 8)
	wantCounts(t, e.ingest(f, "", e.writeKey, evLines(8, 9)+completeLine(9)), 1, 1, 9)
	// A completion sent again (a retried upload) is no conflict.
	wantCounts(t, e.ingest(f, "", e.writeKey, completeLine(9)), 0, 0, 9)
	wantCounts(t, e.ingest(f, "", e.writeKey, ""), 0, 0, 9)
	for _, body := range []string{evLines(10), evLines(9)} {
		wantIngestError(t, e.ingest(f, "", e.writeKey, body), http.StatusConflict, "Event stream is already complete", 9)
	}
	if got := e.ingested(f.run); !slices.Equal(got, seqList(1, 9)) {
		t.Errorf("stored %v, want 1..9", got)
	}
}

// TestEventStreamLimits: a line over 1 MB, a request over 5 MB and more
// than 1,000 events are 413 with last_accepted_seq, the lines before the
// limit stored.
func TestEventStreamLimits(t *testing.T) {
	e := newEnv(t, nil)

	// A line just within the limit passes; one byte more does not.
	line := func(seq, size int) string {
		head := fmt.Sprintf(`{"seq":%d,"event":{"type":"x","pad":"`, seq)
		return head + strings.Repeat("a", size-len(head)-3) + `"}}`
	}
	f := e.fixture()
	if n := len(line(1, runs.MaxIngestLineBytes)); n != runs.MaxIngestLineBytes {
		t.Fatalf("line builder made %d bytes", n)
	}
	wantCounts(t, e.ingest(f, "", e.writeKey, line(1, runs.MaxIngestLineBytes)+"\n"), 1, 0, 1)
	wantIngestError(t, e.ingest(f, "", e.writeKey, evLines(2)+line(3, runs.MaxIngestLineBytes+1)+"\n"),
		http.StatusRequestEntityTooLarge, "Event line is too large", 2)

	// Six lines of 900 kB: the sixth goes past 5 MB.
	g := e.fixture()
	var b strings.Builder
	for n := 1; n <= 6; n++ {
		b.WriteString(line(n, 900_000) + "\n")
	}
	wantIngestError(t, e.ingest(g, "", e.writeKey, b.String()), http.StatusRequestEntityTooLarge, "Event ingest request is too large", 5)
	if got := e.ingested(g.run); len(got) != 5 {
		t.Errorf("stored %d lines, want 5", len(got))
	}

	h := e.fixture()
	all := seqList(1, runs.MaxIngestEvents+1)
	wantIngestError(t, e.ingest(h, "", e.writeKey, evLines(all...)), http.StatusRequestEntityTooLarge,
		"Too many events in request", runs.MaxIngestEvents)
	wantCounts(t, e.ingest(h, "", e.writeKey, evLines(all[:runs.MaxIngestEvents]...)+"\n\n"+completeLine(runs.MaxIngestEvents)),
		0, runs.MaxIngestEvents, runs.MaxIngestEvents)
	if got := e.ingested(h.run); !slices.Equal(got, seqList(1, runs.MaxIngestEvents)) {
		t.Errorf("stored %d lines, want 1..%d", len(got), runs.MaxIngestEvents)
	}
}

// TestEventStreamAuth: an ingest token of the run (minted with its agent
// token) or a key with task:write; everything else is refused in
// PostHog's shape.
func TestEventStreamAuth(t *testing.T) {
	te := newTokenEnv(t)
	e := te.env
	f := e.fixture()
	agent, res := te.mint(t, f, e.writeKey, "?role=agent")
	wantStatus(t, res, http.StatusOK)
	if agent.IngestToken == "" {
		t.Fatalf("connection_token?role=agent has no ingest_token: %s", res)
	}
	client, res := te.mint(t, f, e.writeKey, "")
	wantStatus(t, res, http.StatusOK)
	if client.IngestToken != "" {
		t.Errorf("a client token came with an ingest token: %s", res)
	}
	wantCounts(t, e.ingest(f, "", agent.IngestToken, evLines(1)), 1, 0, 1)
	wantCounts(t, e.ingest(f, "@current", agent.IngestToken, evLines(2)), 1, 0, 2)
	wantCounts(t, e.ingest(f, "@current", e.allKey, evLines(3)), 1, 0, 3)

	g := e.fixture()
	other, _ := te.mint(t, g, e.writeKey, "?role=agent")
	p2 := strconv.FormatInt(e.p2, 10)
	for _, tc := range []struct {
		name, project, key string
		status             int
		msg                string
	}{
		{"no credentials", "", "", http.StatusUnauthorized, "Missing authorization bearer token"},
		{"agent token", "", agent.Token, http.StatusUnauthorized, "Invalid event ingest token"},
		{"client token", "", client.Token, http.StatusUnauthorized, "Invalid event ingest token"},
		{"forged token", "", agent.IngestToken[:len(agent.IngestToken)-4] + "AAAA", http.StatusUnauthorized, "Invalid event ingest token"},
		{"another run's token", "", other.IngestToken, http.StatusForbidden, "Token does not match task run"},
		{"token, another project", p2, agent.IngestToken, http.StatusForbidden, "Token does not match project"},
		{"unknown key", "", "phx_" + strings.Repeat("x", 40), http.StatusUnauthorized, "Invalid personal API key"},
		{"read key", "", e.readKey, http.StatusForbidden, "API key missing required scope 'task:write'"},
		{"key of another project", "", e.otherKey, http.StatusForbidden, "API key does not have access to this project."},
		{"key of another project, @current", "@current", e.otherKey, http.StatusNotFound, "Task run not found"},
		{"run in another project", p2, e.allKey, http.StatusNotFound, "Task run not found"},
		{"bad project", "x1", e.allKey, http.StatusNotFound, "Task run not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantIngestError(t, e.ingest(f, tc.project, tc.key, evLines(4)), tc.status, tc.msg, -1)
		})
	}
	unknown := fixture{task: f.task, run: "00000000-0000-4000-8000-000000000000"}
	wantIngestError(t, e.ingest(unknown, "", e.writeKey, ""), http.StatusNotFound, "Task run not found", -1)
	malformed := fixture{task: f.task, run: "not-a-uuid"}
	wantIngestError(t, e.ingest(malformed, "", agent.IngestToken, ""), http.StatusNotFound, "Task run not found", -1)
	get := e.do(req{Method: "GET", Path: f.path(e, "/event_stream/"), Key: e.writeKey})
	wantIngestError(t, get, http.StatusMethodNotAllowed, "Method not allowed", -1)
	if got := e.ingested(f.run); !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("stored %v, want [1 2 3]", got)
	}
	// The ingest token opens nothing else: not the run's stream.
	stream := e.do(req{Method: "GET", Path: f.path(e, "/stream") + "?token=" + agent.IngestToken})
	wantStatus(t, stream, http.StatusUnauthorized)
}

// TestEventStreamLive: each line reaches a viewer of the run while its
// upload is still open, not when the upload ends.
func TestEventStreamLive(t *testing.T) {
	te := newTokenEnv(t)
	e := te.env
	f := e.fixture()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sr, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+f.path(e, "/stream"), nil)
	sr.Header.Set("Accept", "text/event-stream")
	sr.Header.Set("Authorization", "Bearer "+e.readKey)
	sse, err := e.client.Do(sr)
	if err != nil || sse.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v %v", sse, err)
	}
	defer sse.Body.Close()
	lines := bufio.NewScanner(sse.Body)
	seen := func(n int) {
		t.Helper()
		for lines.Scan() {
			data, ok := strings.CutPrefix(lines.Text(), "data: ")
			var v struct{ N int }
			if ok && json.Unmarshal([]byte(data), &v) == nil && v.N == n {
				return
			}
		}
		t.Fatalf("stream ended before line %d: %v", n, lines.Err())
	}

	pr, pw := io.Pipe()
	ur, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+f.path(e, "/event_stream/"), pr)
	ur.Header.Set("Authorization", "Bearer "+e.writeKey)
	ur.Header.Set("Content-Type", "application/x-ndjson")
	done := make(chan *resp, 1)
	go func() {
		res, err := e.client.Do(ur)
		if err != nil {
			done <- &resp{status: -1, body: []byte(err.Error())}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		done <- &resp{status: res.StatusCode, header: res.Header, body: b}
	}()
	for n := 1; n <= 3; n++ {
		if _, err := io.WriteString(pw, evLine(n)+"\n"); err != nil {
			t.Fatal(err)
		}
		seen(n)
		select {
		case r := <-done:
			t.Fatalf("the upload ended before it was closed: %s", r)
		default:
		}
	}
	pw.Close()
	wantCounts(t, <-done, 3, 0, 3)
}

// TestEventStreamDeadlines: an upload whose lines keep coming outlives the
// body deadline; one idle longer than the ingest idle timeout is ended
// (408), with what came before it stored.
func TestEventStreamDeadlines(t *testing.T) {
	const gap = 150 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.Timeouts = Timeouts{Body: 2 * gap, IngestIdle: 4 * gap} })
	f := e.fixture()
	upload := func(write func(w io.Writer)) *resp {
		pr, pw := io.Pipe()
		go func() {
			write(pw)
			pw.Close()
		}()
		defer pr.Close()
		r, _ := http.NewRequest("POST", e.srv.URL+f.path(e, "/event_stream/"), pr)
		r.Header.Set("Authorization", "Bearer "+e.writeKey)
		res, err := e.client.Do(r)
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return &resp{status: res.StatusCode, header: res.Header, body: b}
	}
	// 8 lines, one every 150 ms: 1.2 s, past both the body deadline
	// (300 ms) and the idle timeout (600 ms), but never idle that long.
	res := upload(func(w io.Writer) {
		for n := 1; n <= 8; n++ {
			io.WriteString(w, evLine(n)+"\n")
			time.Sleep(gap)
		}
	})
	wantCounts(t, res, 8, 0, 8)

	stop := make(chan struct{})
	res = upload(func(w io.Writer) {
		io.WriteString(w, evLine(9)+"\n")
		<-stop // idle until the server gives up
	})
	close(stop)
	wantIngestError(t, res, http.StatusRequestTimeout, "Event stream upload was idle for too long", 9)
	if got := e.ingested(f.run); !slices.Equal(got, seqList(1, 9)) {
		t.Errorf("stored %v, want 1..9", got)
	}
}

// TestEventStreamAcrossNodes: two nodes on one store take the same lines
// at once (a retried upload that reached both) and every line is stored
// once; after a restart (a new handle on the store) the sender's position
// is still known.
func TestEventStreamAcrossNodes(t *testing.T) {
	open := teststore.OpenShared(t)
	a := envOn(t, open(t), Config{})
	stB := open(t)
	cB := Config{Store: stB}
	withDeps(t, &cB)
	srvB := httptest.NewServer(New(cB))
	t.Cleanup(srvB.Close)
	b := &env{t: t, st: stB, srv: srvB, client: &http.Client{Timeout: 30 * time.Second}, p1: a.p1, writeKey: a.writeKey, readKey: a.readKey}
	f := a.fixture()

	const total, per = 300, 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted, dups := int64(0), int64(0)
	for _, node := range []*env{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := 1; from <= total; from += per {
				res := doWith(t, node.client, node.srv.URL, req{Method: "POST", Path: f.path(node, "/event_stream/"), Key: node.writeKey,
					Body: evLines(seqList(from, from+per-1)...)})
				if res.status != http.StatusOK {
					t.Errorf("upload: %s", res)
					return
				}
				var c map[string]int64
				json.Unmarshal(res.body, &c)
				mu.Lock()
				accepted, dups = accepted+c["accepted"], dups+c["duplicate"]
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if accepted != total || dups != 3*total {
		t.Errorf("accepted %d duplicate %d, want %d and %d", accepted, dups, total, 3*total)
	}
	if got := a.ingested(f.run); !slices.Equal(got, seqList(1, total)) {
		t.Errorf("stored %d lines, want 1..%d once each", len(got), total)
	}

	// A restart: a new node on a new handle knows where the sender stands.
	c := envOn(t, open(t), Config{})
	c.p1, c.writeKey = a.p1, a.writeKey
	wantCounts(t, c.ingest(f, "", c.writeKey, ""), 0, 0, total)
	wantCounts(t, c.ingest(f, "", c.writeKey, evLines(total-1, total, total+1)), 1, 2, total+1)
}

// TestEventStreamRevoked: an upload open when the key behind its
// credential (the key itself, or the key that minted its ingest token) is
// revoked is ended (401) without waiting for its next line.
func TestEventStreamRevoked(t *testing.T) {
	var tk *tokens.Tokens
	e := newEnv(t, func(c *Config) {
		rv := tokens.NewRevocations(tokens.RevocationConfig{Store: c.Store, Interval: 50 * time.Millisecond, Window: 2 * time.Second})
		if err := rv.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(rv.Close)
		var err error
		if tk, err = tokens.Load(tokens.Config{DataDir: t.TempDir(), Revocations: rv}); err != nil {
			t.Fatal(err)
		}
		c.Tokens = tk
	})
	for _, byToken := range []bool{false, true} {
		f := e.fixture()
		key, id := e.newKey([]string{store.ScopeWrite}, false, e.p1)
		cred := key
		if byToken {
			res := e.do(req{Method: "GET", Path: f.path(e, "/connection_token/?role=agent"), Key: key})
			var b connectionTokenBody
			if err := json.Unmarshal(res.body, &b); err != nil || b.IngestToken == "" {
				t.Fatalf("mint: %s", res)
			}
			cred = b.IngestToken
		}
		pr, pw := io.Pipe()
		r, _ := http.NewRequest("POST", e.srv.URL+f.path(e, "/event_stream/"), pr)
		r.Header.Set("Authorization", "Bearer "+cred)
		done := make(chan *resp, 1)
		go func() {
			res, err := e.client.Do(r)
			if err != nil {
				done <- &resp{status: -1, body: []byte(err.Error())}
				return
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			done <- &resp{status: res.StatusCode, header: res.Header, body: b}
		}()
		io.WriteString(pw, evLine(1)+"\n")
		for deadline := time.Now().Add(10 * time.Second); len(e.ingested(f.run)) == 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("line 1 was not stored")
			}
		}
		if err := e.st.RevokeAPIKey(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		select {
		case res := <-done:
			wantIngestError(t, res, http.StatusUnauthorized, "The credential of this upload was revoked", -1)
		case <-time.After(5 * time.Second):
			t.Fatalf("token %v: the upload was not ended within 5 s of the revocation", byToken)
		}
		pw.Close()
	}
}
