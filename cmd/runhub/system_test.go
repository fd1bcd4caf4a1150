package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub/redis/redistest"
	"runhub/store/postgres/pgtest"
)

// The system test's load, sized for two shared cores: every run gets
// sysSubsPerRun subscribers per transport and about one REST append a
// second, and sysAgents of the runs also have a reference agent appending
// about once a second and answering commands.
const (
	sysRuns          = 20
	sysSubsPerRun    = 10 // per transport: 600 subscribers in all
	sysRunsPerMuxWS  = 2  // runs followed by one /ws connection
	sysAgents        = 6
	sysWriteInterval = time.Second
	// sysCatchUp bounds how long the checkers wait for every subscriber to
	// have every event once the writers have stopped.
	sysCatchUp = 30 * time.Second
)

// system is the cluster of the test and its clients.
type system struct {
	t       *testing.T
	nodes   []*sysNode
	c       *sysClient
	runs    []*sysRun
	subs    []*subscriber
	stats   map[string]*transportStats // by transport: "ws", "stream", "sse"
	agents  []*sysAgent
	agentLg *agentLog
	writes  *writeBook
	pubNext []int // each REST publisher's last write number
}

// TestSystemThreeNodes: three runhub processes on one PostgreSQL, one
// Redis and one S3 bucket behind HAProxy (the guide's configuration), and
// clients that only know the balancer: 600 subscribers on 20 runs (a
// third each over /ws, the stream WebSocket and SSE), REST publishers that
// retry with their Idempotency-Key, reference agents and a command sender.
// Phase by phase — fan-out and commands across nodes, a node killed (-9)
// mid-stream, a rolling restart (SIGTERM), Redis restarted — every
// subscriber gets every event of its run exactly once and in order (the
// store's log is the reference), no acknowledged write is lost or applied
// twice, and commands reach the agents wherever they are.
func TestSystemThreeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	url, rs := pgtest.DB(t), redistest.Start(t)
	useOneBucket(t)
	sys := &system{t: t, stats: map[string]*transportStats{"ws": {}, "stream": {}, "sse": {}},
		agentLg: &agentLog{}, writes: newWriteBook(), pubNext: make([]int, sysRuns)}
	for i := range 3 {
		id := fmt.Sprintf("n%d", i+1)
		// A drain delay of two health-check intervals (HAProxy checks
		// every 500 ms, two failures take a node out), as the guide
		// advises; a short command timeout so that a command sent to a
		// dead node's agent fails in time to be retried.
		n := &sysNode{id: id, addr: freeAddr(t), dir: t.TempDir(), args: []string{"--node-id", id,
			"--database-url", url, "--redis-url", rs.URL(), "--drain-delay", "1s", "--shutdown-timeout", "10s",
			"--command-timeout", "3s", "--log-level", "info"}}
		n.start(t)
		sys.nodes = append(sys.nodes, n)
	}
	key := readKey(t, sys.nodes[0].dir)
	lb := startHAProxy(t, sys.nodes[0].srv, sys.nodes[1].srv, sys.nodes[2].srv)
	sys.c = newSysClient(lb, key)
	sys.setUp()
	defer sys.logAgentWarnings()

	sys.phase("1 fan-out and commands", func(load func(commands bool) func()) {
		stop := load(true)
		time.Sleep(8 * time.Second)
		stop()
	}, nil)

	var kill struct {
		at      time.Time
		victim  *sysNode
		held    []string
		reached map[string]time.Duration
	}
	sys.phase("2 kill -9", func(load func(commands bool) func()) {
		stop := load(true)
		time.Sleep(3 * time.Second)
		// The node holding the most agents dies mid-stream.
		for _, n := range sys.nodes {
			if h := n.agentsHeld(sys.agentRunIDs()); len(h) > len(kill.held) || kill.victim == nil {
				kill.victim, kill.held = n, h
			}
		}
		kill.at = time.Now()
		kill.victim.kill(t)
		// Commands to the agents it held: a sender retrying on every error
		// gets an answer within commandBound of the kill.
		kill.reached = map[string]time.Duration{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, id := range kill.held {
			wg.Go(func() {
				try := sys.c.sendCommand(sys.runByID(id), "user_message", nil)
				mu.Lock()
				defer mu.Unlock()
				if try.err != nil {
					t.Errorf("after the kill of %s: %v", kill.victim.id, try.err)
					return
				}
				kill.reached[id] = time.Since(kill.at)
				if len(try.failed) > 0 {
					t.Logf("phase 2: the command to the agent of %s that was on %s failed %d times before it was answered: %v",
						id, kill.victim.id, len(try.failed), try.failed)
				}
			})
		}
		wg.Wait()
		time.Sleep(time.Until(kill.at.Add(8 * time.Second)))
		sys.checkResumes(kill.at, kill.victim.id)
		kill.victim.start(t) // the same command line, address and data directory
		waitReady(t, kill.victim.srv.base, http.StatusOK, "")
		time.Sleep(1500 * time.Millisecond) // the balancer's two good checks
		stop()
		var reach []time.Duration
		for _, d := range kill.reached {
			reach = append(reach, d)
		}
		reach = sortedDurations(reach)
		t.Logf("phase 2: killed %s holding agents of %d runs; commands answered again after %v (max %v, bound %v)",
			kill.victim.id, len(kill.held), reach, percentile(reach, 100), commandBound)
	}, nil)

	sys.phase("3 rolling restart", func(load func(commands bool) func()) {
		stop := load(true)
		time.Sleep(2 * time.Second)
		for _, n := range sys.nodes {
			start := time.Now()
			n.terminate(t, 20*time.Second)
			drained := time.Since(start)
			n.start(t)
			waitReady(t, n.srv.base, http.StatusOK, "")
			t.Logf("phase 3: %s drained and exited 0 in %v, ready again after %v", n.id, drained.Round(time.Millisecond),
				time.Since(start).Round(time.Millisecond))
			time.Sleep(1500 * time.Millisecond) // back in the balancer before the next one goes
		}
		time.Sleep(time.Second)
		stop()
	}, func(before map[string]statsSnapshot) {
		// A drain tells every stream to move: 1012 on WebSockets, the
		// retry hint then the end on SSE; nothing else.
		for name, st := range sys.stats {
			d := st.snapshot()
			b := before[name]
			if d.otherEnds != b.otherEnds || d.dialErrors != b.dialErrors {
				t.Errorf("phase 3, %s: %d ends other than 1012 / the SSE retry hint, %d failed reconnects: %v",
					name, d.otherEnds-b.otherEnds, d.dialErrors-b.dialErrors, st.takeSamples())
			}
		}
		if d := sys.stats["stream"].snapshot(); d.restarts == before["stream"].restarts {
			t.Error("phase 3: no stream WebSocket was closed with 1012")
		}
		if d := sys.stats["ws"].snapshot(); d.restarts == before["ws"].restarts {
			t.Error("phase 3: no /ws connection was closed with 1012")
		}
		if d := sys.stats["sse"].snapshot(); d.cleanEnds == before["sse"].cleanEnds {
			t.Error("phase 3: no SSE stream was ended with the retry hint")
		}
	})

	sys.phase("4 Redis restart", func(load func(commands bool) func()) {
		stop := load(false)
		time.Sleep(2 * time.Second)
		rs.Stop()
		for _, n := range sys.nodes {
			waitReady(t, n.srv.base, http.StatusServiceUnavailable, "broker")
		}
		before := sys.writes.ackedCount()
		time.Sleep(3 * time.Second) // the balancer serves through the alive backend meanwhile
		during := sys.writes.ackedCount() - before
		if during == 0 {
			t.Error("phase 4: no write was acknowledged through the balancer while Redis was down")
		}
		rs.Restart()
		for _, n := range sys.nodes {
			waitReady(t, n.srv.base, http.StatusOK, "")
		}
		time.Sleep(2 * time.Second)
		stop()
		t.Logf("phase 4: %d writes acknowledged in the 3 s with Redis down on every node (/readyz 503 \"broker\" on each)", during)
	}, nil)
}

// setUp creates the runs, connects the agents and the subscribers, and
// checks that the agents are spread over several nodes.
func (s *system) setUp() {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var task struct{ ID string }
	if st, err := do(ctx, s.c.key, "POST", s.c.lb+"/api/projects/1/tasks/", map[string]any{"title": "system"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	for range sysRuns {
		var run struct{ ID string }
		runs := "/api/projects/1/tasks/" + task.ID + "/runs/"
		if st, err := do(ctx, s.c.key, "POST", s.c.lb+runs, map[string]any{"status": "in_progress"}, &run); err != nil || st != 201 {
			t.Fatalf("run: %d %v", st, err)
		}
		s.runs = append(s.runs, &sysRun{id: run.ID, path: runs + run.ID})
	}

	// The agents connect first, so that the balancer (leastconn) spreads
	// them over the nodes.
	actx, acancel := context.WithCancel(context.Background())
	var agents sync.WaitGroup
	t.Cleanup(func() { acancel(); agents.Wait() })
	for i := range sysAgents {
		a, err := s.c.newAgent(ctx, s.runs[i], fmt.Sprintf("a%d", i), s.agentLg)
		if err != nil {
			t.Fatal(err)
		}
		s.agents = append(s.agents, a)
		agents.Go(func() { a.agent.Run(actx) })
	}
	holders := map[string]int{}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		clear(holders)
		n := 0
		for _, node := range s.nodes {
			h := node.agentsHeld(s.agentRunIDs())
			holders[node.id] = len(h)
			n += len(h)
		}
		if n == sysAgents {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d agents connected: %v", n, sysAgents, holders)
		}
	}
	spread := 0
	for _, n := range holders {
		if n > 0 {
			spread++
		}
	}
	if spread < 2 {
		t.Fatalf("the agents are on %v, want at least 2 nodes", holders)
	}
	t.Logf("agents per node: %v", holders)

	sctx, scancel := context.WithCancel(context.Background())
	var subs sync.WaitGroup
	t.Cleanup(func() { scancel(); subs.Wait() })
	for i := range sysRuns * sysSubsPerRun {
		run := s.runs[i%sysRuns]
		st, ss := newSubscriber(run, "stream"), newSubscriber(run, "sse")
		s.subs = append(s.subs, st, ss)
		subs.Go(func() { s.c.runStreamWS(sctx, st, s.stats["stream"]) })
		subs.Go(func() { s.c.runSSE(sctx, ss, s.stats["sse"]) })
	}
	for i := range sysRuns * sysSubsPerRun / sysRunsPerMuxWS {
		var mine []*subscriber
		for j := range sysRunsPerMuxWS {
			sub := newSubscriber(s.runs[(i+j*sysRuns/sysRunsPerMuxWS)%sysRuns], "ws")
			mine = append(mine, sub)
		}
		s.subs = append(s.subs, mine...)
		subs.Go(func() { s.c.runMux(sctx, mine, s.stats["ws"]) })
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		waiting := 0
		for _, sub := range s.subs {
			sub.mu.Lock()
			if sub.connects == 0 {
				waiting++
			}
			sub.mu.Unlock()
		}
		if waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d subscribers did not connect", waiting, len(s.subs))
		}
	}
}

func (s *system) agentRunIDs() []string {
	var ids []string
	for _, a := range s.agents {
		ids = append(ids, a.run.id)
	}
	return ids
}

func (s *system) runByID(id string) *sysRun {
	for _, r := range s.runs {
		if r.id == id {
			return r
		}
	}
	s.t.Fatalf("no run %s", id)
	return nil
}

func (s *system) logAgentWarnings() {
	s.agentLg.mu.Lock()
	defer s.agentLg.mu.Unlock()
	if s.t.Failed() && s.agentLg.buf.Len() > 0 {
		s.t.Logf("agents' warnings:\n%.4000s", s.agentLg.buf.String())
	}
}

// totals sums the subscribers' counters.
type totals struct{ delivered, connects int64 }

func (s *system) totals() totals {
	var tt totals
	for _, sub := range s.subs {
		sub.mu.Lock()
		tt.delivered += sub.delivered
		tt.connects += int64(sub.connects)
		sub.mu.Unlock()
	}
	return tt
}

// phase runs body with a load starter (REST publishers on every run, the
// agents' appends, and, if asked, a command sender), then checks the
// phase's extra conditions (extra, given the transport counters from
// before the phase) and what every phase must keep: every subscriber has
// every event once and in order, and every acknowledged write is in the
// log exactly once.
func (s *system) phase(name string, body func(load func(commands bool) func()), extra func(before map[string]statsSnapshot)) {
	t := s.t
	before := map[string]statsSnapshot{}
	for n, st := range s.stats {
		before[n] = st.snapshot()
		st.takeSamples()
	}
	tb := s.totals()
	cmds := &commandBook{causes: map[string]int{}}
	start := time.Now()
	body(func(commands bool) func() {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i, run := range s.runs {
			wg.Go(func() { s.c.publishREST(ctx, fmt.Sprintf("p%d", i), run, sysWriteInterval, s.writes, &s.pubNext[i]) })
		}
		for _, a := range s.agents {
			wg.Go(func() { a.publish(ctx, sysWriteInterval, s.writes) })
		}
		if commands {
			wg.Go(func() { s.c.sendCommands(ctx, s.agents, cmds) })
		}
		return func() { cancel(); wg.Wait() }
	})
	if t.Failed() {
		t.FailNow()
	}
	s.checkAll(name)
	if extra != nil {
		extra(before)
	}
	ta := s.totals()
	var counts []string
	for _, n := range []string{"ws", "stream", "sse"} {
		d, b := s.stats[n].snapshot(), before[n]
		counts = append(counts, fmt.Sprintf("%s: %d 1012, %d SSE retry ends, %d other ends, %d failed reconnects",
			n, d.restarts-b.restarts, d.cleanEnds-b.cleanEnds, d.otherEnds-b.otherEnds, d.dialErrors-b.dialErrors))
	}
	t.Logf("phase %s (%v): %d subscribers, %d events delivered, %d reconnects; %s",
		name, time.Since(start).Round(time.Millisecond), len(s.subs), ta.delivered-tb.delivered, ta.connects-tb.connects, strings.Join(counts, "; "))
	s.writes.mu.Lock()
	t.Logf("phase %s: writes so far: %d sent, %d acknowledged, %d requests sent again with their key (%d writes lost their first answer)",
		name, len(s.writes.sent), len(s.writes.acked), s.writes.retries, s.writes.dropped)
	s.writes.mu.Unlock()
	if cmds.sent > 0 {
		lat := sortedDurations(cmds.latencies)
		t.Logf("phase %s: commands: %d sent, %d answered (%d retries), p50 %v p99 %v; failed attempts before an answer: %v", name, cmds.sent,
			cmds.answered, cmds.retries, percentile(lat, 50).Round(time.Millisecond), percentile(lat, 99).Round(time.Millisecond), cmds.causes)
		for _, f := range cmds.failures {
			t.Errorf("phase %s: command failed: %s", name, f)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// checkResumes: every subscriber whose connection ended after the kill
// has resumed; logs the time from the kill to the resumptions.
func (s *system) checkResumes(killAt time.Time, victim string) {
	var ds []time.Duration
	stuck := 0
	for _, sub := range s.subs {
		sub.mu.Lock()
		if !sub.dropAt.Before(killAt) {
			if sub.resumeAt.After(sub.dropAt) {
				ds = append(ds, sub.resumeAt.Sub(killAt))
			} else {
				stuck++
			}
		}
		sub.mu.Unlock()
	}
	if stuck > 0 {
		s.t.Errorf("phase 2: %d subscribers of %s had not resumed 8 s after the kill", stuck, victim)
	}
	if len(ds) == 0 {
		s.t.Errorf("phase 2: no subscriber was on %s", victim)
	}
	ds = sortedDurations(ds)
	s.t.Logf("phase 2: %d subscribers of %s resumed; kill→resume p50 %v p99 %v max %v", len(ds), victim,
		percentile(ds, 50).Round(time.Millisecond), percentile(ds, 99).Round(time.Millisecond), percentile(ds, 100).Round(time.Millisecond))
}

// checkAll waits until the writers' last writes are in and every
// subscriber has caught up, then compares each subscriber with the store's
// log and the writers' books with it.
func (s *system) checkAll(phase string) {
	t := s.t
	for deadline := time.Now().Add(sysCatchUp); ; time.Sleep(100 * time.Millisecond) {
		unacked := 0
		for _, a := range s.agents {
			unacked += a.agent.Unacked()
		}
		if unacked == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("phase %s: agents still have %d batches unacknowledged", phase, unacked)
		}
	}
	var targets map[string]int64
	for deadline := time.Now().Add(sysCatchUp); ; {
		targets = s.lastSeqs()
		behind := s.waitCaughtUp(targets, deadline)
		if behind != "" {
			t.Fatalf("phase %s: subscribers did not catch up within %v: %s", phase, sysCatchUp, behind)
		}
		if again := s.lastSeqs(); fmt.Sprint(again) == fmt.Sprint(targets) {
			break
		}
	}

	seen := map[marker]int{}
	bad := 0
	for _, run := range s.runs {
		sum, n := s.storeLog(run, seen)
		for _, sub := range s.subs {
			if sub.run != run {
				continue
			}
			sub.mu.Lock()
			if sub.dups > 0 || sub.gaps > 0 || sub.last != targets[run.id] || sub.logs.Sum64() != sum {
				if bad++; bad <= 10 {
					t.Errorf("phase %s: %s subscriber of run %s: %d repeated or reordered, %d gaps, last seq %d of %d, log entries match the store's %d: %v",
						phase, sub.transport, run.id, sub.dups, sub.gaps, sub.last, targets[run.id], n, sub.logs.Sum64() == sum)
				}
			}
			sub.mu.Unlock()
		}
	}
	if bad > 0 {
		t.Errorf("phase %s: %d of %d subscribers differ from the store", phase, bad, len(s.subs))
	}

	b := s.writes
	b.mu.Lock()
	defer b.mu.Unlock()
	lost, twice, unknown := 0, 0, 0
	for m, n := range seen {
		switch {
		case !b.sent[m]:
			unknown++
		case n > 1:
			if twice++; twice <= 5 {
				t.Errorf("phase %s: write %v is in the log %d times", phase, m, n)
			}
		}
	}
	for m := range b.acked {
		if seen[m] == 0 {
			if lost++; lost <= 5 {
				t.Errorf("phase %s: acknowledged write %v is not in the log", phase, m)
			}
		}
	}
	if unknown > 0 {
		t.Errorf("phase %s: %d entries in the log that no writer sent", phase, unknown)
	}
	for _, f := range b.failures {
		t.Errorf("phase %s: %s", phase, f)
	}
	b.failures = nil
	t.Logf("phase %s: store: %d writes in the logs; %d acknowledged lost, %d applied twice; every subscriber checked against its run's log",
		phase, len(seen), lost, twice)
}

// waitCaughtUp waits until every subscriber has its run's last seq; else
// it describes the first ones behind.
func (s *system) waitCaughtUp(targets map[string]int64, deadline time.Time) string {
	for {
		var behind []string
		for _, sub := range s.subs {
			sub.mu.Lock()
			if sub.last < targets[sub.run.id] {
				behind = append(behind, fmt.Sprintf("%s on %s at %d of %d", sub.transport, sub.run.id, sub.last, targets[sub.run.id]))
			}
			sub.mu.Unlock()
		}
		if len(behind) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("%d behind, e.g. %v", len(behind), behind[:min(len(behind), 5)])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastSeqs asks the store, through a /ws subscribe at "latest" on the
// balancer, for every run's last seq.
func (s *system) lastSeqs() map[string]int64 {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, err := s.c.dial(ctx, "/ws")
	if err != nil {
		t.Fatalf("last seqs: %v", err)
	}
	defer ws.CloseNow()
	for i, run := range s.runs {
		req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": i + 1, "method": "subscribe",
			"params": map[string]any{"run_id": run.id, "after": "latest"}})
		if err := ws.Write(ctx, websocket.MessageText, req); err != nil {
			t.Fatalf("last seqs: %v", err)
		}
	}
	out := map[string]int64{}
	for len(out) < len(s.runs) {
		_, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("last seqs: %v", err)
		}
		ms, err := decodeMessages(data)
		if err != nil {
			t.Fatalf("last seqs: %v", err)
		}
		for _, m := range ms {
			if m.ID == nil {
				continue
			}
			var r struct {
				RunID   string `json:"run_id"`
				LastSeq int64  `json:"last_seq"`
			}
			if m.Error != nil || json.Unmarshal(m.Result, &r) != nil {
				t.Fatalf("last seqs: subscribe answered %+v %s", m.Error, m.Result)
			}
			out[r.RunID] = r.LastSeq
		}
	}
	return out
}

// storeLog reads the run's log (GET .../logs through the balancer),
// counts the writers' markers in it, and returns the hash the subscribers'
// log entries must have, and the number of entries.
func (s *system) storeLog(run *sysRun, seen map[marker]int) (uint64, int) {
	t := s.t
	req, _ := http.NewRequest("GET", s.c.lb+run.path+"/logs/", nil)
	req.Header.Set("Authorization", "Bearer "+s.c.key)
	res, err := s.c.http.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("logs of %s: %v %v", run.id, res, err)
	}
	defer res.Body.Close()
	h := fnv.New64a()
	n := 0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		h.Write(sc.Bytes())
		h.Write([]byte{'\n'})
		n++
		var m marker
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.Src != "" {
			seen[m]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("logs of %s: %v", run.id, err)
	}
	return h.Sum64(), n
}
