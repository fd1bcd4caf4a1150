package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/proxy/slack/slacktest"
	"runhub/store"
	"runhub/store/postgres"
	"runhub/store/postgres/pgtest"
)

// TestServeSlackLeaseFlags: --slack-lease and --slack-timeout (or their
// RUNHUB_* variables) default to 2 min and 30 s; a lease that leaves no
// room for one delivery (a thread lookup and a post, each up to the
// timeout, and a second to record the outcome) is a usage error, and the
// node refuses to start with a message that says why.
func TestServeSlackLeaseFlags(t *testing.T) {
	if c, err := loadConfig(nil); err != nil || c.slackLease != 2*time.Minute || c.slackTimeout != 30*time.Second {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if c, err := loadConfig([]string{"--slack-lease", "5s", "--slack-timeout", "2s"}); err != nil || c.slackLease != 5*time.Second || c.slackTimeout != 2*time.Second {
		t.Fatalf("flags: %+v %v", c, err)
	}
	t.Setenv("RUNHUB_SLACK_LEASE", "3s")
	t.Setenv("RUNHUB_SLACK_TIMEOUT", "1s")
	if c, err := loadConfig(nil); err != nil || c.slackLease != 3*time.Second || c.slackTimeout != time.Second {
		t.Fatalf("environment: %+v %v", c, err)
	}
	for _, args := range [][]string{
		{"--slack-lease", "2999ms"},                        // with the 1 s timeout of the environment
		{"--slack-lease", "60s", "--slack-timeout", "30s"}, // no time left to record the outcome
		{"--slack-lease", "0s"},
		{"--slack-lease", "soon"},
		{"--slack-timeout", "0s"},
		{"--slack-timeout", "-1s"},
	} {
		_, err := loadConfig(args)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}

	// The binary refuses to start, and says why.
	if testing.Short() {
		return
	}
	out, err := exec.Command(runhubBinary(t), "serve", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--slack-lease", "20s", "--slack-timeout", "10s").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), "slack relay lease 20s is too short: it must be at least 21s") {
		t.Fatalf("serve with a 20 s lease and a 10 s timeout: %v\n%s", err, out)
	}
}

// The Slack settings of TestSlackOutboxAcrossNodes: a lease short enough
// that the messages a killed node held are posted within seconds, and
// long enough (CheckLease: 2 × timeout + 1 s) for a delivery; posts that
// take Slack nodesPostDelay each, so that the nodes are always mid-delivery.
const (
	nodesSlackLease   = 8 * time.Second
	nodesSlackTimeout = 2 * time.Second
	nodesPostDelay    = 40 * time.Millisecond
	nodesPoll         = time.Second // slack.Config's default, what serve runs with
)

// TestSlackOutboxAcrossNodes: three `runhub serve` nodes on one PostgreSQL
// and one Redis relay to one (fake) Slack, each through its own URL prefix
// so that the fake knows which node posted. 200 relay messages are
// accepted through all three nodes; the node caught with a post in flight
// (Slack has the message; the node never hears back) is killed with
// SIGKILL. Every message is posted exactly once, and all are sent within
// the lease and a few polls after the kill: the killed node's messages wait
// for their lease, and the one whose post was in flight is found in the
// thread instead of being posted again. Then, of the two left, the node
// caught mid-delivery gets SIGTERM: it exits 0 and hands its messages back,
// so the other node posts them at once, long before the lease would end.
func TestSlackOutboxAcrossNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	url, rs := pgtest.DB(t), redistest.Start(t)
	fake := slacktest.Start(t)
	fake.SetPostDelay(nodesPostDelay)
	t.Setenv("RUNHUB_SLACK_BOT_TOKEN", slacktest.Token)
	nodes := map[string]*server{}
	var names []string
	var dirs []string
	for i := range 3 {
		name := fmt.Sprintf("n%d", i+1)
		t.Setenv("RUNHUB_SLACK_API_URL", fake.URL+"/"+name) // read when the node starts
		dir := t.TempDir()
		nodes[name] = startServerArgs(t, dir, "--node-id", name, "--database-url", url, "--redis-url", rs.URL(),
			"--slack-lease", nodesSlackLease.String(), "--slack-timeout", nodesSlackTimeout.String())
		names, dirs = append(names, name), append(dirs, dir)
	}
	key := readKey(t, dirs[0])
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const channel, thread = "C42", "1700000000.000100"
	if _, err := st.SetProjectSlackChannels(ctx, 1, []string{channel}); err != nil {
		t.Fatal(err)
	}
	var task, run struct{ ID string }
	base := nodes["n1"].base
	if code, err := do(ctx, key, "POST", base+"/api/projects/1/tasks/", map[string]any{"title": "slack"}, &task); err != nil || code != 201 {
		t.Fatalf("task: %d %v", code, err)
	}
	runs := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if code, err := do(ctx, key, "POST", base+runs, map[string]any{"status": "in_progress",
		"state": map[string]any{"slack_thread": map[string]string{"channel": channel, "thread_ts": thread}}}, &run); err != nil || code != 201 {
		t.Fatalf("run: %d %v", code, err)
	}

	// relay accepts n messages through the given nodes in turn, by four
	// clients at once, and returns their relay ids.
	relay := func(n int, through []string, label string) []string {
		ids := make([]string, n)
		var wg sync.WaitGroup
		next := make(chan int)
		for range 4 {
			wg.Go(func() {
				for i := range next {
					var out struct {
						Status  string
						RelayID string `json:"relay_id"`
					}
					node := nodes[through[i%len(through)]]
					code, err := do(ctx, key, "POST", node.base+runs+run.ID+"/relay_message",
						map[string]string{"text": fmt.Sprintf("%s %d", label, i)}, &out)
					if err != nil || code != 200 || out.Status != "accepted" || out.RelayID == "" {
						t.Errorf("relay_message %d through %s: %d %v %+v", i, through[i%len(through)], code, err, out)
						continue
					}
					ids[i] = out.RelayID
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		return ids
	}
	// postedOf counts Slack's accepted posts of the given relays.
	postedOf := func(ids []string) (count map[string]int, total int) {
		want := map[string]bool{}
		for _, id := range ids {
			want[id] = true
		}
		posts, _ := fake.Snapshot()
		count = map[string]int{}
		for _, p := range posts {
			if want[p.RelayID] {
				count[p.RelayID]++
				total++
			}
		}
		return count, total
	}
	// caught waits until some of ids are posted, then catches the next
	// post in flight and returns it (Slack has it; its node waits).
	caught := func(ids []string, after int) slacktest.Post {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, n := postedOf(ids); n >= after {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d of %d messages posted in 20 s", after, len(ids))
			}
		}
		select {
		case p := <-fake.HoldNext():
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no post in flight within 10 s")
			return slacktest.Post{}
		}
	}
	// allSent waits until every relay of ids is sent, and says how long
	// that took from since.
	allSent := func(ids []string, since time.Time, bound time.Duration) time.Duration {
		for deadline := since.Add(bound); ; time.Sleep(20 * time.Millisecond) {
			pending, sample := 0, ""
			for _, id := range ids {
				r, err := st.GetRelay(ctx, id)
				if err != nil {
					t.Fatalf("relay %s: %v", id, err)
				}
				if r.Status == store.RelayFailed {
					t.Fatalf("relay %s failed: %+v", id, r)
				}
				if r.Status != store.RelaySent {
					pending++
					sample = fmt.Sprintf("%s: %d attempts, next at %v, last error %q", r.ID, r.Attempts, r.NextAt.Format(time.StampMilli), r.LastError)
				}
			}
			if pending == 0 {
				return time.Since(since)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d relays still not sent %v after the stop (%s)", pending, len(ids), bound, sample)
			}
		}
	}
	onceEach := func(ids []string) {
		t.Helper()
		count, _ := postedOf(ids)
		for _, id := range ids {
			if count[id] != 1 {
				t.Errorf("relay %s posted %d times, want once", id, count[id])
			}
		}
	}

	// kill -9 the node caught mid-delivery.
	ids := relay(200, names, "first")
	held := caught(ids, 20)
	victim := nodes[held.Node]
	if victim == nil {
		t.Fatalf("the post in flight came from %q, not a node", held.Node)
	}
	victim.cmd.Process.Kill()
	killed := time.Now()
	victim.cmd.Wait()
	// Its relays are due to another node when their lease (taken before the
	// kill) ends; a poll later that node has them, and posts at most a
	// few dozen in a row at nodesPostDelay each.
	bound := nodesSlackLease + 2*nodesPoll + 2*nodesSlackTimeout + 100*nodesPostDelay
	took := allSent(ids, killed, bound)
	onceEach(ids)
	if r, err := st.GetRelay(ctx, held.RelayID); err != nil || r.Attempts != 1 {
		t.Fatalf("the relay in flight at the kill: %+v %v; want sent after one attempt (found in the thread)", r, err)
	}
	t.Logf("kill -9 of %s: the 200 messages were all sent %v after it (lease %v)", held.Node, took, nodesSlackLease)

	// SIGTERM the node caught mid-delivery of the two left: it hands its
	// relays back at once.
	var left []string
	for _, n := range names {
		if n != held.Node {
			left = append(left, n)
		}
	}
	// Few enough that the node left has posted its own share well before
	// it gets those handed back: what is measured is the hand-back, not
	// how fast one node posts.
	ids2 := relay(30, left, "second")
	held2 := caught(ids2, 5)
	stopped := nodes[held2.Node]
	if stopped == nil || held2.Node == held.Node {
		t.Fatalf("the post in flight came from %q", held2.Node)
	}
	stopped.cmd.Process.Signal(syscall.SIGTERM)
	termed := time.Now()
	// Handed back, the relays are due at once: a poll of the other node,
	// a thread lookup and a few dozen posts; half the lease, which the
	// relays would wait for if they were not handed back.
	handBackBound := nodesSlackLease / 2
	took = allSent(ids2, termed, handBackBound)
	onceEach(ids2)
	if r, err := st.GetRelay(ctx, held2.RelayID); err != nil || r.Attempts != 1 {
		t.Fatalf("the relay in flight at SIGTERM: %+v %v; want sent after one attempt (found in the thread)", r, err)
	}
	if err := stopped.cmd.Wait(); err != nil {
		t.Fatalf("%s after SIGTERM: %v\n%s", held2.Node, err, stopped.output())
	}
	t.Logf("SIGTERM of %s: the 30 messages were all sent %v after it (lease %v)", held2.Node, took, nodesSlackLease)
}
