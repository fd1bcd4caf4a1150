package slack_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"runhub/cmd/node/nodetest"
	"runhub/proxy/proxytest"
	"runhub/proxy/slack"
	"runhub/proxy/slack/slacktest"
	"runhub/rest"
	"runhub/store"
	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
	"runhub/store/runs"
	"runhub/store/teststore"
)

// relayEnv is a server with the Slack relay against the fake.
type relayEnv struct {
	t      *testing.T
	srv    *httptest.Server
	st     store.Store
	slack  *slacktest.Fake
	relay  *slack.Relay
	key    string
	prefix string // /api/projects/P/tasks/T/runs/
}

func newRelayEnv(t *testing.T, token string) *relayEnv {
	t.Helper()
	e := &relayEnv{t: t, slack: slacktest.Start(t)}
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
	return slack.New(e.st, slack.Config{Token: token, BaseURL: e.slack.URL, Poll: 20 * time.Millisecond,
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
	posts, _ := e.slack.Snapshot()
	want := slacktest.Post{Channel: "C42", ThreadTS: "1700000000.000100", Text: "*Done*: see <https://github.com/a/b/pull/7|PR 7>", RelayID: out["relay_id"]}
	if len(posts) == 1 {
		want.TS = posts[0].TS // Slack's own
	}
	if len(posts) != 1 || posts[0] != want {
		t.Fatalf("posts %+v, want exactly %+v", posts, want)
	}
}

// TestRelayHonoursRetryAfter: a 429 with Retry-After: 1 is retried no
// sooner than a second later, and the message is posted once.
func TestRelayHonoursRetryAfter(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.slack.Script("429:1", "500")
	e.work(e.relay)
	run := e.threadRun("in_progress")
	out := e.relayMessage(run, "hello")
	r := waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	posts, tries := e.slack.Snapshot()
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
	e.slack.Script("hang")
	stop := e.work(e.relay)
	run := e.threadRun("in_progress")
	out := e.relayMessage(run, "once")
	proxytest.WaitFor(t, "Slack to receive the message", func() bool { p, _ := e.slack.Snapshot(); return len(p) == 1 })
	stop() // killed with the answer still in flight
	if r, _ := e.st.GetRelay(context.Background(), out["relay_id"]); r.Status != store.RelayPending || r.Attempts != 1 {
		t.Fatalf("after the crash: %+v", r)
	}
	e.work(e.newRelay("xoxb-test")) // the restart
	waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	if posts, _ := e.slack.Snapshot(); len(posts) != 1 {
		t.Fatalf("%d posts after the restart, want 1", len(posts))
	}
}

// TestRelayHandedBackOnStop: a worker stopped while it holds relays (one
// in flight, one taken from the outbox and not yet tried) hands them back,
// so the next worker posts both at once, each once, also on a store that
// leases the relays it hands out (store/postgres: minutes).
func TestRelayHandedBackOnStop(t *testing.T) {
	e := newRelayEnv(t, "xoxb-test")
	e.slack.Script("hang")
	run := e.threadRun("in_progress")
	first, second := e.relayMessage(run, "first"), e.relayMessage(run, "second")
	stop := e.work(e.relay) // takes both, and the first post hangs
	proxytest.WaitFor(t, "Slack to receive the first message", func() bool { p, _ := e.slack.Snapshot(); return len(p) == 1 })
	stop()
	e.work(e.newRelay("xoxb-test"))
	waitRelay(t, e.st, first["relay_id"], store.RelaySent)
	waitRelay(t, e.st, second["relay_id"], store.RelaySent)
	posts, _ := e.slack.Snapshot()
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
	if posts, _ := e.slack.Snapshot(); len(posts) != 0 {
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
	calls := e.slack.Calls()
	if calls != 0 {
		t.Fatalf("Slack received %d requests after refused relays, want none", calls)
	}

	// The allowed channel still works.
	out := e.relayMessage(e.threadRun("in_progress"), "allowed")
	if out["status"] != "accepted" {
		t.Fatalf("allowed channel: %v", out)
	}
	waitRelay(t, e.st, out["relay_id"], store.RelaySent)
	if posts, _ := e.slack.Snapshot(); len(posts) != 1 || posts[0].Channel != "C42" || posts[0].Text != "allowed" {
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
		{"post in flight", "hang", false, time.Minute, func(e *relayEnv, _ string) bool { p, _ := e.slack.Snapshot(); return len(p) == 1 }},
		{"waiting for backoff", "500", false, time.Minute, func(e *relayEnv, id string) bool {
			r, err := e.st.GetRelay(context.Background(), id)
			return err == nil && r.LastError != "" && r.NextAt.After(time.Now())
		}},
		// A retry first looks for the message in its thread; when that
		// lookup is cut short, the worker records the outcome in the store.
		{"thread lookup in flight", "500", true, 20 * time.Millisecond, func(e *relayEnv, _ string) bool {
			return e.slack.Lookups() > 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRelayEnv(t, "xoxb-test")
			e.slack.Script(tc.script)
			if tc.lookupsHang {
				e.slack.HangLookups()
			}
			outbox := &closedRelays{Relays: e.st}
			w := slack.New(outbox, slack.Config{Token: "xoxb-test", BaseURL: e.slack.URL,
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

// TestRelayBatchOutlivingItsLease: two nodes share a PostgreSQL outbox
// with a short lease, and one takes a batch whose posts (slow: Slack takes
// 100 ms each) outlast that lease. The node hands back what it cannot
// start in time, the other node takes it, and every message is posted
// once. The worker used to go through the whole batch after its lease had
// ended, while the other node posted the same messages.
func TestRelayBatchOutlivingItsLease(t *testing.T) {
	const (
		relays  = 30
		lease   = 1500 * time.Millisecond
		timeout = 250 * time.Millisecond // lease = 2 × timeout + 1 s, the least CheckLease allows
	)
	if err := slack.CheckLease(lease, timeout); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	url := pgtest.DB(t)
	fake := slacktest.Start(t)
	fake.SetPostDelay(100 * time.Millisecond)
	var stores []*postgres.Store
	for range 2 {
		st, err := postgres.Open(ctx, url, postgres.WithRelayLease(lease))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		stores = append(stores, st)
	}
	for i := range relays {
		if err := stores[0].CreateRelay(ctx, store.Relay{ID: fmt.Sprintf("r%02d", i), RunID: "run", Channel: "C42",
			ThreadTS: "1700000000.000100", Text: "hi", NextAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	worker := func(st slack.Relays, node string) {
		w := slack.New(st, slack.Config{Token: slacktest.Token, BaseURL: fake.URL + "/" + node, Poll: 20 * time.Millisecond,
			Lease: lease, Timeout: timeout, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
		w.Start(context.Background())
		t.Cleanup(w.Close)
	}
	// Node a takes the whole batch and then nothing more, so that what it
	// hands back can only be posted by b (otherwise a could take it back
	// at its next poll and which node posts would be a matter of timing).
	worker(&firstBatchOnly{Store: stores[0]}, "a")
	proxytest.WaitFor(t, "the first node to post", func() bool { p, _ := fake.Snapshot(); return len(p) > 0 })
	worker(stores[1], "b")
	for i := range relays {
		waitRelay(t, stores[0], fmt.Sprintf("r%02d", i), store.RelaySent)
	}
	posts, _ := fake.Snapshot()
	count, nodes := map[string]int{}, map[string]int{}
	for _, p := range posts {
		count[p.RelayID]++
		nodes[p.Node]++
	}
	for id, n := range count {
		if n != 1 {
			t.Errorf("relay %s posted %d times", id, n)
		}
	}
	if len(count) != relays || nodes["a"] == 0 || nodes["b"] == 0 {
		t.Fatalf("%d relays posted, by nodes %v; want %d, by both", len(count), nodes, relays)
	}
}

// firstBatchOnly is a node's outbox that hands its worker one batch and
// then nothing more.
type firstBatchOnly struct {
	*postgres.Store
	taken atomic.Bool
}

func (f *firstBatchOnly) DueRelays(ctx context.Context, now time.Time, limit int) ([]store.Relay, error) {
	if f.taken.Swap(true) {
		return nil, nil
	}
	return f.Store.DueRelays(ctx, now, limit)
}
