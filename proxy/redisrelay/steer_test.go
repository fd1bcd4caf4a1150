package redisrelay_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/proxy"
	"runhub/proxy/proxytest"
	"runhub/store/teststore"
)

// TestQueueFollowsTheAgent: messages queued behind a busy agent on node A
// (sent through B, so decided on A) are kept in the store while A drains
// and stops; node C, started after, takes the agent when it reconnects
// and delivers them, in the order sent, each once. The turn in flight when A drained, never
// answered in time, is 502 and not sent again.
func TestQueueFollowsTheAgent(t *testing.T) {
	rs := redistest.Start(t)
	db, dataDir := teststore.OpenShared(t), t.TempDir()
	st := db(t)
	grace := proxy.Config{DrainGrace: 200 * time.Millisecond}
	a := newDrainNode(t, db, dataDir, rs.URL(), grace)
	b := newDrainNode(t, db, dataDir, rs.URL(), grace)
	e := newFollowEnv(t, st, a)
	lb := proxytest.NewBalancer(a.srv.Listener.Addr().String())
	r := newReplies()
	release := make(chan struct{})
	r.hold["first"] = release
	startAgent(t, e, lb, r)
	waitAgentOn(t, "the agent on A", a, rs.URL(), e.runID)

	first := send(b.srv.URL, e, "first")
	if got := nextSeen(t, r); got != "first" {
		t.Fatalf("the agent got %q", got)
	}
	for _, content := range []string{"second", "third", "fourth"} {
		select {
		case res := <-send(b.srv.URL, e, content):
			if res.status != http.StatusOK || strings.TrimSpace(res.body) != `{"jsonrpc":"2.0","id":7,"result":{"queued":true}}` {
				t.Fatalf("%s to the busy agent: %d %s, want queued", content, res.status, res.body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer", content)
		}
	}
	ctx := context.Background()
	if n, err := st.PendingUserMessages(ctx, e.runID); err != nil || n != 3 {
		t.Fatalf("queued in the store: %d, %v; want 3", n, err)
	}

	<-a.drain(t) // the agent's reconnects fail until C starts
	select {
	case res := <-first:
		if res.status != http.StatusBadGateway {
			t.Fatalf("the turn unanswered when A drained: %d %s, want 502", res.status, res.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the turn in flight got no answer")
	}
	// A node started after A is gone (a restart) takes the agent.
	c := newDrainNode(t, db, dataDir, rs.URL(), grace)
	lb.Point(c.srv.Listener.Addr().String(), nil)
	proxytest.WaitFor(t, "the agent on C", func() bool { return c.px.Connected(e.runID) })
	for _, want := range []string{"second", "third", "fourth"} {
		select {
		case got := <-r.seen:
			if got != want {
				t.Fatalf("C delivered %q, want %q (the order sent)", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("C did not deliver %q", want)
		}
	}
	close(release)
	proxytest.WaitFor(t, "the queue to empty", func() bool { n, _ := st.PendingUserMessages(ctx, e.runID); return n == 0 })
	time.Sleep(200 * time.Millisecond) // room for a duplicate to show
	r.mu.Lock()
	got := slices.Clone(r.got)
	r.mu.Unlock()
	if want := []string{"first", "second", "third", "fourth"}; !slices.Equal(got, want) {
		t.Fatalf("the agent got %q, want %q: each once, in order", got, want)
	}
}
