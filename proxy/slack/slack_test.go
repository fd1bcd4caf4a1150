package slack_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"runhub/cmd/node/nodetest"
	"runhub/proxy/proxytest"
	"runhub/proxy/slack"
	"runhub/rest"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/teststore"
)

// fakeSlack is a local stand-in for Slack's Web API: chat.postMessage and
// conversations.replies, with scripted failures.
type fakeSlack struct {
	srv *httptest.Server
	mu  sync.Mutex
	// script answers the next postMessage calls: "429:<sec>", "500", "hang"
	// (record the message, then never answer), or "" (accept).
	script []string
	posts  []slackPost
	tries  []time.Time
	calls  int // requests of any kind, answered or not
	hang   chan struct{}
	// lookupsHang: conversations.replies never answers; lookups counts
	// its calls.
	lookupsHang bool
	lookups     int
}

type slackPost struct {
	Channel, ThreadTS, Text string
	RelayID                 string
}

func newFakeSlack(t *testing.T) *fakeSlack {
	f := &fakeSlack{hang: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.calls++
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer xoxb-test" {
			fmt.Fprint(w, `{"ok":false,"error":"invalid_auth"}`)
			return
		}
		switch r.URL.Path {
		case "/chat.postMessage":
			var m struct {
				Channel  string `json:"channel"`
				ThreadTS string `json:"thread_ts"`
				Text     string `json:"text"`
				Metadata struct {
					EventPayload map[string]string `json:"event_payload"`
				} `json:"metadata"`
			}
			json.NewDecoder(r.Body).Decode(&m)
			f.mu.Lock()
			f.tries = append(f.tries, time.Now())
			step := ""
			if len(f.script) > 0 {
				step, f.script = f.script[0], f.script[1:]
			}
			if step == "" || step == "hang" {
				f.posts = append(f.posts, slackPost{m.Channel, m.ThreadTS, m.Text, m.Metadata.EventPayload["relay_id"]})
			}
			f.mu.Unlock()
			switch {
			case step == "hang":
				<-f.hang
				return
			case strings.HasPrefix(step, "429:"):
				w.Header().Set("Retry-After", strings.TrimPrefix(step, "429:"))
				w.WriteHeader(http.StatusTooManyRequests)
				return
			case step == "500":
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			fmt.Fprint(w, `{"ok":true,"ts":"2.3"}`)
		case "/conversations.replies":
			r.ParseForm()
			f.mu.Lock()
			f.lookups++
			if f.lookupsHang {
				f.mu.Unlock()
				<-f.hang
				return
			}
			var msgs []map[string]any
			for _, p := range f.posts {
				if p.Channel == r.Form.Get("channel") && p.ThreadTS == r.Form.Get("ts") {
					msgs = append(msgs, map[string]any{"text": p.Text, "metadata": map[string]any{
						"event_type": "runhub_relay", "event_payload": map[string]string{"relay_id": p.RelayID}}})
				}
			}
			f.mu.Unlock()
			json.NewEncoder(w).Encode(map[string]any{"ok": true, "messages": msgs})
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(func() { close(f.hang); f.srv.Close() })
	return f
}

func (f *fakeSlack) snapshot() ([]slackPost, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]slackPost(nil), f.posts...), append([]time.Time(nil), f.tries...)
}

// relayEnv is a server with the Slack relay against the fake.
type relayEnv struct {
	t      *testing.T
	srv    *httptest.Server
	st     store.Store
	slack  *fakeSlack
	relay  *slack.Relay
	key    string
	prefix string // /api/projects/P/tasks/T/runs/
}

func newRelayEnv(t *testing.T, token string) *relayEnv {
	t.Helper()
	e := &relayEnv{t: t, slack: newFakeSlack(t)}
	st := teststore.Open(t)
	e.st = st
	e.relay = e.newRelay(token)
	quiet, err := runs.New(runs.Config{Store: st, Publisher: runs.NoPublisher{}}) // the relay tests follow no stream
	if err != nil {
		t.Fatal(err)
	}
	d := nodetest.New(t, st, quiet, nil)
	e.srv = httptest.NewServer(rest.New(rest.Config{Store: st, Runs: quiet, Relay: e.relay,
		Stream: d.Stream, Tokens: d.Tokens, Commands: d.Commands, Blobs: d.Files, Files: d.Files, Signer: d.Signer}))
	t.Cleanup(e.srv.Close)
	ctx := context.Background()
	p, _ := st.CreateProject(ctx, "relay")
	// The channel of threadRun's threads; a project posts nowhere else.
	if _, err := st.SetProjectSlackChannels(ctx, p.ID, []string{"C42"}); err != nil {
		t.Fatal(err)
	}
	secret, prefix, hash := store.GenerateAPIKey()
	st.CreateAPIKey(ctx, store.NewAPIKey{Label: "t", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true})
	e.key = secret
	var task struct{ ID string }
	e.call("POST", fmt.Sprintf("/api/projects/%d/tasks/", p.ID), `{"title":"t"}`, http.StatusCreated, &task)
	e.prefix = fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", p.ID, task.ID)
	return e
}

func (e *relayEnv) newRelay(token string) *slack.Relay {
	return slack.New(e.st, slack.Config{Token: token, BaseURL: e.slack.srv.URL, Poll: 20 * time.Millisecond,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, MaxAttempts: 4})
}

// work runs a relay worker until the returned stop is called.
func (e *relayEnv) work(r *slack.Relay) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *relayEnv) call(method, path, body string, status int, out any) []byte {
	e.t.Helper()
	return proxytest.APICall(e.t, e.srv.URL, e.key, method, path, body, status, out)
}

func (e *relayEnv) threadRun(status string) string {
	var run struct{ ID string }
	e.call("POST", e.prefix, `{"status":"`+status+`","state":{"slack_thread":{"channel":"C42","thread_ts":"1700000000.000100"}}}`, http.StatusCreated, &run)
	return run.ID
}

func (e *relayEnv) relayMessage(run, text string) map[string]string {
	var out map[string]string
	b, _ := json.Marshal(map[string]string{"text": text})
	e.call("POST", e.prefix+run+"/relay_message", string(b), http.StatusOK, &out)
	return out
}

func waitRelay(t *testing.T, st store.Store, id, status string) *store.Relay {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := st.GetRelay(context.Background(), id)
		if err == nil && r.Status == status {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay %s: %+v %v, want status %s", id, r, err, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayPostsOnce: an accepted message is posted exactly once, in the
// mapped channel and thread, converted to mrkdwn.
func TestRelayPostsOnce(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.work(e.relay)
	run := e.threadRun("in_progress")
	out := e.relayMessage(run, "**Done**: see [PR 7](https://github.com/a/b/pull/7)")
	if out["status"] != "accepted" || out["relay_id"] == "" {
		t.Fatalf("relay_message: %v", out)
	}
	waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	time.Sleep(200 * time.Millisecond) // several more polls
	posts, _ := e.slack.snapshot()
	want := slackPost{"C42", "1700000000.000100", "*Done*: see <https://github.com/a/b/pull/7|PR 7>", out["relay_id"]}
	if len(posts) != 1 || posts[0] != want {
		t.Fatalf("posts %+v, want exactly %+v", posts, want)
	}
}

// TestRelayHonoursRetryAfter: a 429 with Retry-After: 1 is retried no
// sooner than a second later, and the message is posted once.
func TestRelayHonoursRetryAfter(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.slack.script = []string{"429:1", "500"}
	e.work(e.relay)
	run := e.threadRun("in_progress")
	out := e.relayMessage(run, "hello")
	r := waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	posts, tries := e.slack.snapshot()
	if len(posts) != 1 || len(tries) != 3 || r.Attempts != 3 {
		t.Fatalf("%d posts, %d tries, attempts %d; want 1 post after 3 tries", len(posts), len(tries), r.Attempts)
	}
	if gap := tries[1].Sub(tries[0]); gap < time.Second {
		t.Errorf("retried %v after a 429 with Retry-After: 1", gap)
	}
}

// TestRelayNotPostedTwiceAfterCrash: the worker dies after Slack accepted
// the message and before it recorded that; the next worker finds the
// message in the thread and does not post it again.
func TestRelayNotPostedTwiceAfterCrash(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.slack.script = []string{"hang"}
	stop := e.work(e.relay)
	run := e.threadRun("in_progress")
	out := e.relayMessage(run, "once")
	proxytest.WaitFor(t, "Slack to receive the message", func() bool { p, _ := e.slack.snapshot(); return len(p) == 1 })
	stop() // killed with the answer still in flight
	if r, _ := e.st.GetRelay(context.Background(), out["relay_id"]); r.Status != store.RelayPending || r.Attempts != 1 {
		t.Fatalf("after the crash: %+v", r)
	}
	e.work(e.newRelay("xoxb-test")) // the restart
	waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	if posts, _ := e.slack.snapshot(); len(posts) != 1 {
		t.Fatalf("%d posts after the restart, want 1", len(posts))
	}
}

// TestRelayHandedBackOnStop: a worker stopped while it holds relays (one
// in flight, one taken from the outbox and not yet tried) hands them back,
// so the next worker posts both at once, each once, also on a store that
// leases the relays it hands out (store/postgres: minutes).
func TestRelayHandedBackOnStop(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.slack.script = []string{"hang"}
	run := e.threadRun("in_progress")
	first, second := e.relayMessage(run, "first"), e.relayMessage(run, "second")
	stop := e.work(e.relay) // takes both, and the first post hangs
	proxytest.WaitFor(t, "Slack to receive the first message", func() bool { p, _ := e.slack.snapshot(); return len(p) == 1 })
	stop()
	e.work(e.newRelay("xoxb-test"))
	waitRelay(t, e.st, first["relay_id"], store.RelaySent)
	waitRelay(t, e.st, second["relay_id"], store.RelaySent)
	posts, _ := e.slack.snapshot()
	var texts []string
	for _, p := range posts {
		texts = append(texts, p.Text)
	}
	if len(posts) != 2 || posts[0].Text != "first" || posts[1].Text != "second" {
		t.Fatalf("posts %q, want first and second once each", texts)
	}
}

// TestRelaySkippedOrUnconfigured: a terminal run, blank text or no thread
// mapping is skipped; without credentials the relay is 503; bad bodies
// are 400; nothing reaches Slack.
func TestRelaySkippedOrUnconfigured(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.work(e.relay)
	done := e.threadRun("completed")
	if out := e.relayMessage(done, "late"); out["status"] != "skipped" {
		t.Errorf("terminal run: %v", out)
	}
	live := e.threadRun("in_progress")
	if out := e.relayMessage(live, "   \n "); out["status"] != "skipped" {
		t.Errorf("blank text: %v", out)
	}
	var unmapped struct{ ID string }
	e.call("POST", e.prefix, `{"status":"in_progress"}`, http.StatusCreated, &unmapped)
	if out := e.relayMessage(unmapped.ID, "hi"); out["status"] != "skipped" {
		t.Errorf("no mapping: %v", out)
	}
	e.call("POST", e.prefix+live+"/relay_message", `{"text":5}`, http.StatusBadRequest, nil)
	e.call("POST", e.prefix+live+"/relay_message", `{"text":"`+strings.Repeat("x", 10001)+`"}`, http.StatusBadRequest, nil)

	off := newRelayEnv(t, "")
	run := off.threadRun("in_progress")
	b := off.call("POST", off.prefix+run+"/relay_message", `{"text":"hi"}`, http.StatusServiceUnavailable, nil)
	if !strings.Contains(string(b), `"Slack relay is not configured"`) {
		t.Errorf("no credentials: %s", b)
	}
	time.Sleep(100 * time.Millisecond)
	if posts, _ := e.slack.snapshot(); len(posts) != 0 {
		t.Fatalf("posts %+v", posts)
	}
}

// TestRelayChannelAllowList: relay_message to a thread whose channel the
// run's project was not allowed is 403 permission_denied with the standard
// body, nothing enters the outbox and Slack receives no request; a project
// with no allowed channel posts nowhere; the allowed channel is accepted and
// posted.
func TestRelayChannelAllowList(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.work(e.relay)
	ctx := context.Background()
	refused := func(path string) {
		t.Helper()
		var body struct {
			Type, Code, Detail string
			Attr               *string
		}
		raw := e.call("POST", path, `{"text":"hello"}`, http.StatusForbidden, &body)
		if body.Type != "authentication_error" || body.Code != "permission_denied" || body.Detail == "" || body.Attr != nil ||
			!strings.Contains(string(raw), `"attr":null`) {
			t.Fatalf("refusal body %s", raw)
		}
	}

	// Another channel of the same workspace, chosen by the tenant.
	var other struct{ ID string }
	e.call("POST", e.prefix, `{"status":"in_progress","state":{"slack_thread":{"channel":"C99","thread_ts":"1700000000.000200"}}}`,
		http.StatusCreated, &other)
	refused(e.prefix + other.ID + "/relay_message")

	// A project the operator allowed nothing: even C42 is refused.
	p2, err := e.st.CreateProject(ctx, "no channels")
	if err != nil {
		t.Fatal(err)
	}
	var task struct{ ID string }
	e.call("POST", fmt.Sprintf("/api/projects/%d/tasks/", p2.ID), `{"title":"t"}`, http.StatusCreated, &task)
	prefix2 := fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", p2.ID, task.ID)
	var run2 struct{ ID string }
	e.call("POST", prefix2, `{"status":"in_progress","state":{"slack_thread":{"channel":"C42","thread_ts":"1700000000.000100"}}}`,
		http.StatusCreated, &run2)
	refused(prefix2 + run2.ID + "/relay_message")

	time.Sleep(150 * time.Millisecond) // several polls of the worker
	if due, err := e.st.DueRelays(ctx, time.Now().Add(time.Hour), 100); err != nil || len(due) != 0 {
		t.Fatalf("outbox after refusals: %+v %v, want empty", due, err)
	}
	e.slack.mu.Lock()
	calls := e.slack.calls
	e.slack.mu.Unlock()
	if calls != 0 {
		t.Fatalf("Slack received %d requests after refused relays, want none", calls)
	}

	// The allowed channel still works.
	out := e.relayMessage(e.threadRun("in_progress"), "allowed")
	if out["status"] != "accepted" {
		t.Fatalf("allowed channel: %v", out)
	}
	waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	if posts, _ := e.slack.snapshot(); len(posts) != 1 || posts[0].Channel != "C42" || posts[0].Text != "allowed" {
		t.Fatalf("posts %+v, want one to C42", posts)
	}
}

// closedRelays is the outbox as the worker uses it, which counts the calls
// made after the test marked it closed (as serve closes the store once
// Relay.Close has returned).
type closedRelays struct {
	slack.Relays
	closed atomic.Bool
	after  atomic.Int64
}

func (c *closedRelays) touch() error {
	if c.closed.Load() {
		c.after.Add(1)
		return errors.New("store closed")
	}
	return nil
}

func (c *closedRelays) CreateRelay(ctx context.Context, r store.Relay) error {
	if err := c.touch(); err != nil {
		return err
	}
	return c.Relays.CreateRelay(ctx, r)
}

func (c *closedRelays) DueRelays(ctx context.Context, now time.Time, limit int) ([]store.Relay, error) {
	if err := c.touch(); err != nil {
		return nil, err
	}
	return c.Relays.DueRelays(ctx, now, limit)
}

func (c *closedRelays) UpdateRelay(ctx context.Context, r store.Relay) error {
	if err := c.touch(); err != nil {
		return err
	}
	return c.Relays.UpdateRelay(ctx, r)
}

// TestRelayCloseJoinsWorker: Close stops the worker Start launched and
// returns promptly, while a post or a thread lookup is in flight (Slack
// does not answer) or while a message waits for its backoff; once it has
// returned the worker never touches the store. serve used to start the worker with go and
// close the store without waiting for it.
func TestRelayCloseJoinsWorker(t *testing.T) {
	for _, tc := range []struct {
		name        string
		script      string
		lookupsHang bool
		backoff     time.Duration
		ready       func(e *relayEnv, id string) bool
	}{
		{"post in flight", "hang", false, time.Minute, func(e *relayEnv, _ string) bool { p, _ := e.slack.snapshot(); return len(p) == 1 }},
		{"waiting for backoff", "500", false, time.Minute, func(e *relayEnv, id string) bool {
			r, err := e.st.GetRelay(context.Background(), id)
			return err == nil && r.LastError != "" && r.NextAt.After(time.Now())
		}},
		// A retry first looks for the message in its thread; when that
		// lookup is cut short, the worker records the outcome in the store.
		{"thread lookup in flight", "500", true, 20 * time.Millisecond, func(e *relayEnv, _ string) bool {
			e.slack.mu.Lock()
			defer e.slack.mu.Unlock()
			return e.slack.lookups > 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRelayEnv(t, "xoxb-test")
			e.slack.script = []string{tc.script}
			e.slack.lookupsHang = tc.lookupsHang
			outbox := &closedRelays{Relays: e.st}
			w := slack.New(outbox, slack.Config{Token: "xoxb-test", BaseURL: e.slack.srv.URL,
				Poll: 10 * time.Millisecond, MinBackoff: tc.backoff, MaxBackoff: time.Hour})
			w.Start(context.Background())
			t.Cleanup(w.Close)
			run := e.threadRun("in_progress")
			out := e.relayMessage(run, "hello")
			proxytest.WaitFor(t, "the worker to reach the state under test", func() bool { return tc.ready(e, out["relay_id"]) })

			start := time.Now()
			w.Close()
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Close took %v", d)
			}
			outbox.closed.Store(true)
			time.Sleep(200 * time.Millisecond) // many polls
			if n := outbox.after.Load(); n > 0 {
				t.Fatalf("the worker used the store %d times after Close returned", n)
			}
		})
	}
}
