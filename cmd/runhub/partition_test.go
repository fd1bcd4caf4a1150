package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
	"runhub/hub/redis/redistest"
	"runhub/store/postgres/pgtest"
)

// partitionSlack is added to the bounds on delivery: the store read and
// the write to the client after the position check (or the broker) found
// an event, on a machine busy with three nodes, PostgreSQL, Redis and
// HAProxy.
const partitionSlack = time.Second

// liveBound is how soon an event must reach a subscriber when the broker
// carries it: shorter than one position-check interval, so that only the
// broker (not the store's position check) can have delivered it in time.
const liveBound = 2 * time.Second

// seqLog records the seqs one subscriber received, with when.
type seqLog struct {
	name string
	mu   sync.Mutex
	seqs []int64
	at   map[int64]time.Time // first arrival of each seq
	err  error               // why the subscriber stopped, if it did
}

func newSeqLog(name string) *seqLog { return &seqLog{name: name, at: map[int64]time.Time{}} }

func (l *seqLog) add(seq int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seqs = append(l.seqs, seq)
	if _, ok := l.at[seq]; !ok {
		l.at[seq] = time.Now()
	}
}

func (l *seqLog) stop(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}

// waitAll waits until the subscriber has seq last, then checks that it
// got exactly 1..last, each once and in order, each within bound of
// when its append was acknowledged (acked; seqs not in it have no
// bound). It returns the largest delay of the acked seqs.
func (l *seqLog) waitAll(t *testing.T, last int64, acked map[int64]time.Time, bound time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(bound + 5*time.Second)
	for {
		l.mu.Lock()
		n, err := len(l.seqs), l.err
		var got int64
		if n > 0 {
			got = l.seqs[n-1]
		}
		l.mu.Unlock()
		if got >= last {
			break
		}
		if err != nil {
			t.Fatalf("%s stopped at seq %d: %v", l.name, got, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: seq %d after %v, want %d", l.name, got, bound+5*time.Second, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if int64(len(l.seqs)) != last {
		t.Fatalf("%s got %d events for seqs 1..%d (lost or repeated): %v", l.name, len(l.seqs), last, l.seqs)
	}
	for i, s := range l.seqs {
		if s != int64(i+1) {
			t.Fatalf("%s: event %d has seq %d (lost, repeated or reordered): %v", l.name, i, s, l.seqs)
		}
	}
	var worst time.Duration
	for seq, ack := range acked {
		d := l.at[seq].Sub(ack)
		if d > bound {
			t.Errorf("%s: seq %d arrived %v after its append was acknowledged, want within %v", l.name, seq, d.Round(time.Millisecond), bound)
		}
		worst = max(worst, d)
	}
	return worst
}

// subscribeSSE follows the run's SSE stream on the node from its first
// event, until ctx ends.
func subscribeSSE(ctx context.Context, t *testing.T, wg *sync.WaitGroup, name, key, url string) *seqLog {
	t.Helper()
	l := newSeqLog(name)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("SSE %s: %v %v", url, res, err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
				seq, err := strconv.ParseInt(id, 10, 64)
				if err != nil {
					l.stop(fmt.Errorf("bad id %q", id))
					return
				}
				l.add(seq)
			}
		}
		l.stop(fmt.Errorf("stream ended: %v", sc.Err()))
	}()
	return l
}

// subscribeWS follows the run over the node's /ws from its first event,
// until ctx ends.
func subscribeWS(ctx context.Context, t *testing.T, wg *sync.WaitGroup, name, key, base, runID string) *seqLog {
	t.Helper()
	l := newSeqLog(name)
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatal(err)
	}
	sub := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q,"after":0}}`, runID)
	if err := c.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer c.CloseNow()
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				l.stop(err)
				return
			}
			// One message, or a batch of them (several events written at
			// once).
			type message struct {
				Method string
				Params struct{ Seq int64 }
				Error  json.RawMessage
			}
			var ms []message
			if bytes.HasPrefix(bytes.TrimSpace(b), []byte("[")) {
				err = json.Unmarshal(b, &ms)
			} else {
				ms = make([]message, 1)
				err = json.Unmarshal(b, &ms[0])
			}
			if err != nil {
				l.stop(fmt.Errorf("/ws message %s: %w", b, err))
				return
			}
			for _, m := range ms {
				if m.Error != nil {
					l.stop(fmt.Errorf("/ws error %s", m.Error))
					return
				}
				if m.Method == "event" && m.Params.Seq > 0 {
					l.add(m.Params.Seq)
				}
			}
		}
	}()
	return l
}

// balancedTo reports which nodes answer n requests for /readyz through
// the balancer; every answer must be a 200.
func balancedTo(t *testing.T, lb string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		var body struct{ Node string }
		if st, err := do(context.Background(), "", "GET", lb+"/readyz", nil, &body); err != nil || st != 200 {
			t.Fatalf("/readyz through the balancer: %d %v", st, err)
		}
		seen[body.Node]++
	}
	return seen
}

// waitBalanced waits (up to 10 s) until the balancer does (in) or does
// not (!in) send requests to node.
func waitBalanced(t *testing.T, lb, node string, in bool) {
	t.Helper()
	var seen map[string]int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if seen = balancedTo(t, lb, 12); (seen[node] > 0) == in {
			return
		}
	}
	t.Fatalf("balancer: requests went to %v; want %s in=%v", seen, node, in)
}

// TestNetworkPartitionFromRedis: one node of three runs in its own
// network namespace and loses its path to Redis (a veth link goes down:
// packets vanish silently both ways, connections hang rather than fail)
// while PostgreSQL and the balancer still reach it. Its SSE and /ws
// subscribers still get every event appended through the other nodes,
// once and in order, within two position-check intervals (the store is
// the truth); its /readyz says 503 "broker", so the balancer's health
// check takes it out. When the link comes back the node is ready again,
// the balancer sends it requests, and events reach its subscribers live
// through Redis again.
func TestNetworkPartitionFromRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	pgURL, rs := pgtest.DB(t), redistest.Start(t)

	pid := os.Getpid()
	ns := newNetns(t, fmt.Sprintf("runhub-part-%d", pid))
	base := netnsBase()
	at := func(n int) netip.Addr { return nthAddr(base, n) }
	// Two links: one for the API, the balancer and PostgreSQL, one for
	// Redis alone, which the test cuts.
	apiLink, redisLink := fmt.Sprintf("rhp%da", pid), fmt.Sprintf("rhp%dr", pid)
	ns.link(t, apiLink, "api0", netip.PrefixFrom(at(1), 30), netip.PrefixFrom(at(2), 30))
	ns.link(t, redisLink, "redis0", netip.PrefixFrom(at(5), 30), netip.PrefixFrom(at(6), 30))
	// PostgreSQL and Redis listen on the host's loopback: the namespaced
	// node reaches them through forwarders on the host ends of the links.
	viaLink := func(raw string, hostEnd netip.Addr) string {
		u, err := neturl.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = forward(t, netip.AddrPortFrom(hostEnd, 0).String(), u.Host)
		return u.String()
	}
	nsPG, nsRedis := viaLink(pgURL, at(1)), viaLink(rs.URL(), at(5))

	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	n2 := startServerArgs(t, dirs[1], "--node-id", "n2", "--database-url", pgURL, "--redis-url", rs.URL())
	n3 := startServerArgs(t, dirs[2], "--node-id", "n3", "--database-url", pgURL, "--redis-url", rs.URL())
	n1 := ns.startServerIn(t, netip.AddrPortFrom(at(2), 8080).String(), dirs[0],
		"--node-id", "n1", "--database-url", nsPG, "--redis-url", nsRedis)
	key := readKey(t, dirs[1]) // n2 started first on the empty store
	lb := startHAProxy(t, n1, n2, n3)
	waitBalanced(t, lb, "n1", true)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var task, run struct{ ID string }
	if st, err := do(ctx, key, "POST", lb+"/api/projects/1/tasks/", map[string]any{"title": "partition"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	runs := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if st, err := do(ctx, key, "POST", lb+runs, map[string]any{"status": "in_progress"}, &run); err != nil || st != 201 {
		t.Fatalf("run: %d %v", st, err)
	}
	runPath := runs + run.ID + "/"

	// Subscribers on the node to be cut off, straight to its namespace
	// address (as clients it already served would be).
	var wg sync.WaitGroup
	subCtx, stopSubs := context.WithCancel(ctx)
	t.Cleanup(func() { stopSubs(); wg.Wait() })
	subs := []*seqLog{
		subscribeSSE(subCtx, t, &wg, "SSE on n1", key, n1.base+runPath+"stream"),
		subscribeWS(subCtx, t, &wg, "/ws on n1", key, n1.base, run.ID),
	}
	last := int64(1) // the run's creation
	for _, s := range subs {
		s.waitAll(t, last, nil, 0)
	}

	// appendVia appends one event through each of nodes in turn and
	// returns when each was acknowledged, by seq.
	appendVia := func(phase string, count int, nodes ...*server) map[int64]time.Time {
		t.Helper()
		acked := map[int64]time.Time{}
		for i := range count {
			n := nodes[i%len(nodes)]
			body := map[string]any{"entries": []map[string]any{{"type": "console", "phase": phase, "n": i}}}
			if st, err := do(ctx, key, "POST", n.base+runPath+"append_log/", body, nil); err != nil || st != 200 {
				t.Fatalf("append %s %d through %s: %d %v", phase, i, n.base, st, err)
			}
			last++
			acked[last] = time.Now()
		}
		return acked
	}

	// Live before the cut.
	acked := appendVia("before", 4, n2, n3)
	for _, s := range subs {
		s.waitAll(t, last, acked, liveBound)
	}

	// The cut: the Redis link goes down on the host's side. The node's
	// connections to Redis hang (nothing answers, nothing is refused).
	if err := ip("link", "set", redisLink, "down"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	waitReady(t, n1.base, http.StatusServiceUnavailable, "broker")
	waitBalanced(t, lb, "n1", false)
	t.Logf("cut off from Redis: /readyz 503 and out of the balancer within %v", time.Since(cut).Round(time.Millisecond))
	for _, n := range []*server{n2, n3} {
		waitReady(t, n.base, http.StatusOK, "")
	}
	// Every request through the balancer is answered by the others.
	if seen := balancedTo(t, lb, 30); seen["n1"] > 0 {
		t.Fatalf("the balancer sent requests to the cut-off node: %v", seen)
	}

	// Events appended through the other nodes reach the cut-off node's
	// subscribers through the store, within two position-check intervals.
	bound := 2*hub.DefaultCheckInterval + partitionSlack
	acked = appendVia("cut", 6, n2, n3)
	for _, s := range subs {
		worst := s.waitAll(t, last, acked, bound)
		t.Logf("%s during the cut: every event, the last after at most %v (bound %v)", s.name, worst.Round(time.Millisecond), bound)
	}
	if !strings.Contains(n1.output(), "position check found unseen events") {
		t.Fatalf("the cut-off node's subscribers got the events, but not through the position check: the cut leaks; logs:\n%s", n1.output())
	}

	// The partition heals: the node is ready again, the balancer uses it,
	// and events reach its subscribers live.
	if err := ip("link", "set", redisLink, "up"); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	waitReady(t, n1.base, http.StatusOK, "")
	waitBalanced(t, lb, "n1", true)
	t.Logf("healed: ready and back in the balancer within %v", time.Since(healed).Round(time.Millisecond))
	acked = appendVia("healed", 4, n2, n3)
	for _, s := range subs {
		worst := s.waitAll(t, last, acked, liveBound)
		t.Logf("%s after the heal: live, at most %v", s.name, worst.Round(time.Millisecond))
	}
}
