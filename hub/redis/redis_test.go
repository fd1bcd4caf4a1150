package redis_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runhubnode "runhub/cmd/node"
	"runhub/hub"
	"runhub/hub/redis/redistest"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/teststore"
)

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is one runhub node: a hub with its own Redis broker and an HTTP
// server, sharing the store with the other nodes.
type node struct {
	srv  *httptest.Server
	logs *syncBuffer
}

func newNode(t *testing.T, st store.Store, redisURL string) *node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	// A long position check: these tests prove the broker path and the
	// resync on resubscribe, not the periodic safety net. The nodes share
	// the store; whichever closes first closes it, after the test.
	n, err := runhubnode.New(ctx, runhubnode.Config{Store: st, DataDir: t.TempDir(), RedisURL: redisURL, Logger: log,
		Hub: hub.Config{CheckInterval: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Start(ctx); err != nil { // hands the hub to the broker
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return &node{srv: srv, logs: logs}
}

// fixture is a run in a store that every node opens for itself, as
// separate processes would.
type fixture struct {
	open    func(testing.TB) store.Store
	key     string
	runPath string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	open := teststore.OpenShared(t)
	st := open(t)
	p, _ := st.CreateProject(ctx, "redis")
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Prefix: prefix, Hash: hash, Scopes: []string{"*"}, Projects: []int64{p.ID}}); err != nil {
		t.Fatal(err)
	}
	task, _ := st.CreateTask(ctx, p.ID, store.NewTask{Title: "redis", OriginProduct: "user_created"})
	svc, err := runs.New(runs.Config{Store: st, Publisher: runs.NoPublisher{}})
	if err != nil {
		t.Fatal(err)
	}
	run, err := svc.CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{open: open, key: secret, runPath: fmt.Sprintf("/api/projects/%d/tasks/%s/runs/%s", p.ID, task.ID, run.ID)}
}

func (f *fixture) post(n *node, method, path, body string) (int, error) {
	req, _ := http.NewRequest(method, n.srv.URL+f.runPath+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+f.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// follow reads the run's SSE stream from n until stream-end and returns
// the ids in the order received.
func (f *fixture) follow(t *testing.T, n *node, ready chan<- struct{}) <-chan []int64 {
	out := make(chan []int64, 1)
	req, _ := http.NewRequest("GET", n.srv.URL+f.runPath+"/stream", nil)
	req.Header.Set("Authorization", "Bearer "+f.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	go func() {
		defer resp.Body.Close()
		var ids []int64
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "id: ") {
				id, _ := strconv.ParseInt(line[4:], 10, 64)
				ids = append(ids, id)
				if first && ready != nil {
					close(ready)
					first = false
				}
			}
			if line == "event: stream-end" {
				break
			}
		}
		out <- ids
	}()
	return out
}

func checkExactlyOnce(t *testing.T, who string, ids []int64, want int64) {
	t.Helper()
	if int64(len(ids)) != want {
		t.Errorf("%s: got %d events, want %d", who, len(ids), want)
	}
	for i, id := range ids {
		if id != int64(i+1) {
			t.Fatalf("%s: event %d has seq %d, want %d (gap or duplicate)", who, i, id, i+1)
		}
	}
}

// TestRedisCrossNode: a subscriber on node A receives, exactly once and in
// order, 5,000 entries appended through node B (separate brokers on one
// real Redis, one shared store).
func TestRedisCrossNode(t *testing.T) {
	r := redistest.Start(t)
	f := newFixture(t)
	a, b := newNode(t, f.open(t), r.URL()), newNode(t, f.open(t), r.URL())
	ready := make(chan struct{})
	got := f.follow(t, a, ready)
	<-ready // subscribed, and the create event (seq 1) arrived
	const entries = 5000
	for i := 0; i < entries/10; i++ {
		var sb strings.Builder
		sb.WriteString(`{"entries":[`)
		for j := 0; j < 10; j++ {
			if j > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"type":"x","n":%d}`, i*10+j)
		}
		sb.WriteString(`]}`)
		if code, err := f.post(b, "POST", "/append_log/", sb.String()); err != nil || code != 200 {
			t.Fatalf("append: %d %v", code, err)
		}
	}
	if code, err := f.post(b, "PATCH", "/", `{"status":"completed"}`); err != nil || code != 200 {
		t.Fatalf("patch: %d %v", code, err)
	}
	select {
	case ids := <-got:
		checkExactlyOnce(t, "node A subscriber", ids, entries+2)
	case <-time.After(60 * time.Second):
		t.Fatal("node A subscriber did not reach stream-end")
	}
}

// TestRedisRestart: entries are appended steadily while redis-server is
// killed and started again; subscribers on both nodes still receive every
// entry exactly once, in order, and the hub logs the reconnect.
func TestRedisRestart(t *testing.T) {
	r := redistest.Start(t)
	f := newFixture(t)
	a, b := newNode(t, f.open(t), r.URL()), newNode(t, f.open(t), r.URL())
	readyA, readyB := make(chan struct{}), make(chan struct{})
	gotA, gotB := f.follow(t, a, readyA), f.follow(t, b, readyB)
	<-readyA
	<-readyB
	stop := make(chan struct{})
	done := make(chan int)
	go func() { // steady appends through both nodes, one entry every 2 ms
		n := 0
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- n
				return
			case <-time.After(2 * time.Millisecond):
			}
			target := a
			if i%2 == 1 {
				target = b
			}
			if code, err := f.post(target, "POST", "/append_log/", fmt.Sprintf(`{"entries":[{"type":"x","n":%d}]}`, i)); err != nil || code != 200 {
				t.Errorf("append during outage: %d %v", code, err)
				done <- n
				return
			}
			n++
		}
	}()
	time.Sleep(300 * time.Millisecond)
	r.Stop()
	time.Sleep(700 * time.Millisecond)
	r.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(a.logs.String(), "redis pub/sub reconnected") || !strings.Contains(b.logs.String(), "redis pub/sub reconnected") {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect logged:\nA: %s\nB: %s", a.logs.String(), b.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	n := <-done
	if code, err := f.post(a, "PATCH", "/", `{"status":"completed"}`); err != nil || code != 200 {
		t.Fatalf("patch: %d %v", code, err)
	}
	for who, ch := range map[string]<-chan []int64{"node A": gotA, "node B": gotB} {
		select {
		case ids := <-ch:
			checkExactlyOnce(t, who, ids, int64(n)+2)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s subscriber did not reach stream-end", who)
		}
	}
	t.Logf("%d entries appended across the outage", n)
}

// TestReadyAgainWithoutSubscriptions: a node that follows no run has no
// subscription for Redis to confirm after a restart, yet its /readyz goes
// back to 200 once Redis is back (else a balancer would keep it out for
// good).
func TestReadyAgainWithoutSubscriptions(t *testing.T) {
	r := redistest.Start(t)
	f := newFixture(t)
	n := newNode(t, f.open(t), r.URL())
	status := func() int {
		res, err := http.Get(n.srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if s := status(); s != 200 {
		t.Fatalf("/readyz before the restart: %d", s)
	}
	r.Stop()
	waitStatus := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for status() != want {
			if time.Now().After(deadline) {
				t.Fatalf("/readyz did not become %d within 10 s", want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitStatus(http.StatusServiceUnavailable)
	r.Restart()
	waitStatus(http.StatusOK)
}
