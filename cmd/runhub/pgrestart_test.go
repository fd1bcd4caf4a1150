package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub/redis/redistest"
	"runhub/store/postgres/pgtest"
)

// outageRequestBound is the longest any request may take while PostgreSQL
// is down: a refused connection fails at once, so an answer slower than
// this is a hang (a request stuck on the pool or on a dead connection),
// with slack for a loaded 2-core machine.
const outageRequestBound = 3 * time.Second

// TestPostgresRestartUnderLoad: two nodes on one PostgreSQL and one Redis
// behind HAProxy, SSE subscribers on every run and publishers that retry
// like real clients (same Idempotency-Key on connection errors, 502 and
// 503). PostgreSQL is stopped (immediate shutdown: a crash to its data)
// mid-load for a few seconds: every answer meanwhile is 200 or 503 with
// the standard body, never a 500 or a hang, reads as well as writes; each
// node's /readyz is 503 "store". After the restart both nodes are ready
// again without being restarted, every acknowledged append is in the log
// exactly once (those acknowledged before the outage too), and every
// subscriber has every event of its run exactly once, in order.
func TestPostgresRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	pg, rs := pgtest.Start(t), redistest.Start(t)
	var nodes []*server
	dirs := []string{t.TempDir(), t.TempDir()}
	for i, dir := range dirs {
		nodes = append(nodes, startServerArgs(t, dir, "--node-id", fmt.Sprintf("n%d", i+1),
			"--database-url", pg.URL(), "--redis-url", rs.URL()))
	}
	key := readKey(t, dirs[0])
	lb := startHAProxy(t, nodes...)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const runs, subsPerRun, pubsPerRun = 3, 3, 2
	var task struct{ ID string }
	if st, err := do(ctx, key, "POST", lb+"/api/projects/1/tasks/", map[string]any{"title": "pg restart"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	runsPath := "/api/projects/1/tasks/" + task.ID + "/runs/"
	var runPaths []string
	for range runs {
		var run struct{ ID string }
		if st, err := do(ctx, key, "POST", lb+runsPath, map[string]any{"status": "in_progress"}, &run); err != nil || st != 201 {
			t.Fatalf("run: %d %v", st, err)
		}
		runPaths = append(runPaths, runsPath+run.ID+"/")
	}
	// An agent on a run of its own (its connect and its writes add events
	// the subscribed runs do not expect), connected before the outage.
	var agentRun struct{ ID string }
	if st, err := do(ctx, key, "POST", lb+runsPath, map[string]any{"status": "in_progress"}, &agentRun); err != nil || st != 201 {
		t.Fatalf("agent's run: %d %v", st, err)
	}
	var agentTok struct {
		Token string
		WSURL string `json:"ws_url"`
	}
	if st, err := do(ctx, key, "GET", lb+runsPath+agentRun.ID+"/connection_token/?role=agent", nil, &agentTok); err != nil || st != 200 {
		t.Fatalf("agent token: %d %v", st, err)
	}
	agentHeader := http.Header{"Authorization": {"Bearer " + agentTok.Token}}
	agent, _, err := websocket.Dial(ctx, agentTok.WSURL, &websocket.DialOptions{HTTPHeader: agentHeader})
	if err != nil {
		t.Fatalf("agent connect: %v", err)
	}
	defer agent.CloseNow()
	agentAppend := func(id int) (json.RawMessage, *struct{ Code int64 }) {
		t.Helper()
		actx, cancel := context.WithTimeout(ctx, outageRequestBound)
		defer cancel()
		req := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"append_log","params":{"entries":[{"type":"console","agent":%d}]}}`, id, id)
		if err := agent.Write(actx, websocket.MessageText, []byte(req)); err != nil {
			t.Fatalf("agent write: %v", err)
		}
		for {
			_, b, err := agent.Read(actx)
			if err != nil {
				t.Fatalf("agent's append_log %d: no answer within %v: %v", id, outageRequestBound, err)
			}
			var resp struct {
				ID     *int
				Result json.RawMessage
				Error  *struct{ Code int64 }
			}
			if json.Unmarshal(b, &resp) == nil && resp.ID != nil && *resp.ID == id {
				return resp.Result, resp.Error
			}
		}
	}
	if _, rerr := agentAppend(1); rerr != nil {
		t.Fatalf("agent's append_log before the outage: error %d", rerr.Code)
	}

	subCtx, stopSubs := context.WithCancel(ctx)
	var subWG sync.WaitGroup
	defer func() { stopSubs(); subWG.Wait() }()
	subs := make([][]*sseFollower, runs)
	for r, p := range runPaths {
		for range subsPerRun {
			f := &sseFollower{url: lb + p + "stream", key: key, data: map[int64]string{}}
			subs[r] = append(subs[r], f)
			subWG.Go(func() { f.follow(subCtx) })
		}
	}

	rec := &outageRecord{acked: map[string]time.Time{}}
	stopPubs := make(chan struct{})
	var pubWG sync.WaitGroup
	for r, p := range runPaths {
		for i := range pubsPerRun {
			pubWG.Go(func() { rec.publish(ctx, lb+p+"append_log/", key, fmt.Sprintf("r%dp%d", r, i), stopPubs) })
		}
	}

	time.Sleep(1500 * time.Millisecond) // load before the outage
	before := rec.snapshot()
	if len(before) == 0 {
		t.Fatal("no append was acknowledged before the outage")
	}
	rec.setPhase("outage")
	pg.Stop()
	down := time.Now()
	for _, n := range nodes {
		waitReady(t, n.base, http.StatusServiceUnavailable, "store")
	}
	// Every kind of request, on each node directly: 503 with the standard
	// body, at once.
	for _, n := range nodes {
		p := runPaths[0]
		for _, c := range []struct {
			method, path string
			body         any
		}{
			{"POST", p + "append_log/", map[string]any{"entries": []map[string]any{{"type": "console"}}}},
			{"POST", runsPath, map[string]any{"status": "queued"}},
			{"PATCH", p, map[string]any{"branch": "b"}},
			{"PATCH", p + "set_output/", map[string]any{"output": map[string]any{"a": 1}}},
			{"POST", p + "artifacts/", map[string]any{"artifacts": []map[string]any{{"name": "a.md", "type": "plan", "content": "x"}}}},
			{"POST", "/api/projects/1/tasks/", map[string]any{"title": "during outage"}},
			{"GET", p, nil},
			{"GET", runsPath, nil},
			{"GET", p + "session_logs/", nil},
			{"GET", p + "logs/", nil},
			{"GET", p + "stream", nil},
		} {
			st, body, took, err := send(ctx, key, c.method, n.base+c.path, c.body, "")
			if err != nil || st != http.StatusServiceUnavailable || !standardUnavailable(body) || took > outageRequestBound {
				t.Errorf("%s %s on %s with PostgreSQL down: %d %s in %v (%v), want 503 with the standard body within %v",
					c.method, c.path, n.base, st, body, took.Round(time.Millisecond), err, outageRequestBound)
			}
		}
	}
	// The agent's write over its connection is refused for now (it sends
	// it again), and a new agent connection or /ws is a 503 with the
	// standard body, not a refusal for good.
	if _, rerr := agentAppend(2); rerr == nil || rerr.Code != -32014 {
		t.Errorf("agent's append_log with PostgreSQL down: error %+v, want -32014", rerr)
	}
	for _, c := range []struct {
		name, url string
		header    http.Header
	}{
		{"/agent/connect", agentTok.WSURL, agentHeader},
		{"/ws", "ws" + strings.TrimPrefix(nodes[0].base, "http") + "/ws", http.Header{"Authorization": {"Bearer " + key}}},
	} {
		start := time.Now()
		c2, res, err := websocket.Dial(ctx, c.url, &websocket.DialOptions{HTTPHeader: c.header})
		took := time.Since(start)
		if err == nil {
			c2.CloseNow()
			t.Errorf("%s opened with PostgreSQL down", c.name)
			continue
		}
		var body []byte
		if res != nil {
			body, _ = io.ReadAll(res.Body)
		}
		if res == nil || res.StatusCode != http.StatusServiceUnavailable || !standardUnavailable(body) || took > outageRequestBound {
			t.Errorf("%s with PostgreSQL down: %v %s in %v, want 503 with the standard body", c.name, err, body, took)
		}
	}
	if d := 3*time.Second - time.Since(down); d > 0 {
		time.Sleep(d) // the publishers keep trying through a few seconds of outage
	}
	pg.Restart()
	up := time.Now()
	for _, n := range nodes {
		waitReady(t, n.base, http.StatusOK, "")
	}
	readyAfter := time.Since(up)
	if _, rerr := agentAppend(3); rerr != nil {
		t.Errorf("agent's append_log after the restart: error %d", rerr.Code)
	}
	rec.setPhase("after")
	time.Sleep(time.Second) // load after the restart
	close(stopPubs)
	pubWG.Wait()

	rec.mu.Lock()
	t.Logf("outage %v; nodes ready %v after the restart; %d appends acknowledged (%d before the outage); 503s: %v; other answers: %v",
		up.Sub(down).Round(time.Millisecond), readyAfter.Round(time.Millisecond), len(rec.acked), len(before), rec.unavailable, rec.other)
	for _, f := range rec.failures {
		t.Error(f)
	}
	if rec.unavailable["outage"] == 0 {
		t.Error("no publisher was answered 503 during the outage")
	}
	acked := rec.acked
	rec.mu.Unlock()

	// The log: every acknowledged append once, nothing twice.
	for r, p := range runPaths {
		st, body, _, err := send(ctx, key, "GET", lb+p+"logs/", nil, "")
		if err != nil || st != 200 {
			t.Fatalf("logs of run %d: %d %v", r, st, err)
		}
		seen := map[string]int{}
		var order []string
		for line := range strings.SplitSeq(strings.TrimSpace(string(body)), "\n") {
			var e struct{ K string }
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			seen[e.K]++
			order = append(order, e.K)
		}
		for k, n := range seen {
			if n > 1 {
				t.Errorf("run %d: append %s stored %d times", r, k, n)
			}
		}
		prefix := fmt.Sprintf("r%dp", r)
		for k := range acked {
			if strings.HasPrefix(k, prefix) && seen[k] != 1 {
				_, early := before[k]
				t.Errorf("run %d: acknowledged append %s (before the outage: %v) stored %d times", r, k, early, seen[k])
			}
		}
		// Every subscriber has the run's events once, in order (follow
		// checks the order), with the log's entries: seq 1 is the run's
		// creation, the appends follow (nothing else was written to it).
		last := int64(1 + len(order))
		for i, f := range subs[r] {
			if err := f.waitFor(ctx, last, 15*time.Second); err != nil {
				t.Errorf("run %d subscriber %d: %v", r, i, err)
				continue
			}
			f.mu.Lock()
			var got []string
			for seq := int64(1); seq <= last; seq++ {
				var e struct{ K string }
				json.Unmarshal([]byte(f.data[seq]), &e)
				if e.K != "" {
					got = append(got, e.K)
				}
			}
			if len(f.bad) > 0 {
				t.Errorf("run %d subscriber %d: %s", r, i, strings.Join(f.bad, "; "))
			}
			if strings.Join(got, ",") != strings.Join(order, ",") {
				t.Errorf("run %d subscriber %d: entries %v, the log has %v", r, i, got, order)
			}
			t.Logf("run %d subscriber %d: %d events, %d reconnects", r, i, len(f.data), f.reconnects)
			f.mu.Unlock()
		}
	}
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("%s logs:\n%s", n.base, n.output())
		}
	}
}

// standardUnavailable reports whether body is the contract's standard
// error body of a 503: exactly type, code, detail and attr, with type
// server_error and code unavailable.
func standardUnavailable(body []byte) bool {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil || len(m) != 4 {
		return false
	}
	detail, _ := m["detail"].(string)
	attr, hasAttr := m["attr"]
	return m["type"] == "server_error" && m["code"] == "unavailable" && detail != "" && hasAttr && attr == nil
}

// send makes one request (with an Idempotency-Key when idem is set) and
// returns the status, the body and how long the answer took.
func send(ctx context.Context, key, method, url string, body any, idem string) (int, []byte, time.Duration, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, 0, err
		}
		rd = bytes.NewReader(b)
	}
	// A bound well past outageRequestBound, so a hang is measured, not
	// waited for forever.
	ctx, cancel := context.WithTimeout(ctx, 4*outageRequestBound)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	start := time.Now()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, time.Since(start), err
	}
	defer res.Body.Close()
	if strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		return res.StatusCode, nil, time.Since(start), nil // a stream that opened: its head is the answer
	}
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, time.Since(start), err
}

// outageRecord is what the publishers saw, by phase of the test.
type outageRecord struct {
	mu          sync.Mutex
	phase       string
	acked       map[string]time.Time // Idempotency-Key → when acknowledged
	unavailable map[string]int       // phase → 503s with the standard body
	other       map[string]int       // "phase status" → connection errors (status 0) and 502s
	failures    []string
}

func (o *outageRecord) setPhase(p string) { o.mu.Lock(); o.phase = p; o.mu.Unlock() }

func (o *outageRecord) snapshot() map[string]time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]time.Time, len(o.acked))
	for k, v := range o.acked {
		out[k] = v
	}
	return out
}

// publish appends one entry at a time to url until stop is closed, each
// under its own Idempotency-Key, retrying an entry with the same key on a
// connection error, 502 or 503 until it is acknowledged, like a real
// client. A 500, another status, a 503 without the standard body or an
// answer slower than outageRequestBound is a failure.
func (o *outageRecord) publish(ctx context.Context, url, key, name string, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
		k := fmt.Sprintf("%s-%d", name, i)
		body := map[string]any{"entries": []map[string]any{{"type": "console", "k": k}}}
		for {
			st, b, took, err := send(ctx, key, "POST", url, body, k)
			o.mu.Lock()
			phase := o.phase
			if phase == "" {
				phase = "before"
			}
			if took > outageRequestBound {
				o.failures = append(o.failures, fmt.Sprintf("%s (%s): the answer took %v", k, phase, took.Round(time.Millisecond)))
			}
			retry := true
			switch {
			case err == nil && st == http.StatusOK:
				o.acked[k] = time.Now()
				retry = false
			case err == nil && st == http.StatusServiceUnavailable && standardUnavailable(b):
				if o.unavailable == nil {
					o.unavailable = map[string]int{}
				}
				o.unavailable[phase]++
			case err != nil || st == http.StatusBadGateway:
				if o.other == nil {
					o.other = map[string]int{}
				}
				o.other[fmt.Sprintf("%s %d", phase, st)]++
			default:
				o.failures = append(o.failures, fmt.Sprintf("%s (%s): %d %s", k, phase, st, b))
			}
			o.mu.Unlock()
			if !retry || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// sseFollower is an SSE client that resumes: when its stream ends or
// cannot be opened it reconnects with Last-Event-ID, as EventSource does.
// It records every event by seq and notes any seq that is not the next.
type sseFollower struct {
	url, key   string
	mu         sync.Mutex
	last       int64
	data       map[int64]string
	bad        []string
	reconnects int
}

func (f *sseFollower) follow(ctx context.Context) {
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			f.mu.Lock()
			f.reconnects++
			f.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		req, err := http.NewRequestWithContext(ctx, "GET", f.url, nil)
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+f.key)
		req.Header.Set("Accept", "text/event-stream")
		f.mu.Lock()
		if f.last > 0 {
			req.Header.Set("Last-Event-ID", strconv.FormatInt(f.last, 10))
		}
		f.mu.Unlock()
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		if res.StatusCode == http.StatusOK {
			f.read(res.Body)
		}
		res.Body.Close()
	}
}

// read consumes one stream until it ends.
func (f *sseFollower) read(body io.Reader) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	id, data := "", ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = line[len("id: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		case line == "":
			if id != "" {
				seq, _ := strconv.ParseInt(id, 10, 64)
				f.mu.Lock()
				if seq != f.last+1 {
					f.bad = append(f.bad, fmt.Sprintf("seq %d after %d", seq, f.last))
				}
				if seq > f.last {
					f.last = seq
					f.data[seq] = data
				}
				f.mu.Unlock()
			}
			id, data = "", ""
		}
	}
}

// waitFor waits until the follower has seen seq.
func (f *sseFollower) waitFor(ctx context.Context, seq int64, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		f.mu.Lock()
		last := f.last
		f.mu.Unlock()
		if last >= seq {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("has seq %d, want %d after %v", last, seq, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
