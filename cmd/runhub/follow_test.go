package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/proxy/agentclient"
	"runhub/proxy/proxytest"
)

// TestCommandFollowsAgentOffAKilledNode: the agent is connected to node A
// when A is killed with SIGKILL; A's claim on the run stays in Redis (its
// TTL runs on) with nobody listening on A's channel. A command sent
// through B meanwhile waits for the agent, which reconnects to B, and gets
// the agent's answer within 10 s of the kill. Before, it ended at once
// with 502 (A "does not listen").
func TestCommandFollowsAgentOffAKilledNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	rs := redistest.Start(t)
	dir := t.TempDir() // several processes on one SQLite data directory
	a := startServerArgs(t, dir, "--node-id", "a", "--redis-url", rs.URL())
	b := startServerArgs(t, dir, "--node-id", "b", "--redis-url", rs.URL())
	key := readKey(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var task, run struct{ ID string }
	if st, err := do(ctx, key, "POST", a.base+"/api/projects/1/tasks/", map[string]any{"title": "kill"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	runPath := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if st, err := do(ctx, key, "POST", a.base+runPath, map[string]any{}, &run); err != nil || st != 201 {
		t.Fatalf("run: %d %v", st, err)
	}
	runPath += run.ID
	var tb struct{ Token string }
	if st, err := do(ctx, key, "GET", a.base+runPath+"/connection_token?role=agent", nil, &tb); err != nil || st != 200 {
		t.Fatalf("agent token: %d %v", st, err)
	}

	lb := proxytest.NewBalancer(strings.TrimPrefix(a.base, "http://"))
	var mu sync.Mutex
	var got []string
	ag := agentclient.New(agentclient.Options{
		URL: "ws://runhub.invalid/agent/connect", Token: tb.Token,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: lb.Dial}},
		Reply: func(c string) string {
			mu.Lock()
			got = append(got, c)
			mu.Unlock()
			return "re: " + c
		},
	})
	actx, stop := context.WithCancel(ctx)
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); ag.Run(actx) }()
	defer func() { stop(); <-agentDone }()

	command := func(base, content string) (int, string) {
		var out json.RawMessage
		st, err := do(ctx, key, "POST", base+runPath+"/command",
			map[string]any{"jsonrpc": "2.0", "id": 1, "method": "user_message", "params": map[string]string{"content": content}}, &out)
		if err != nil {
			return st, err.Error()
		}
		return st, string(out)
	}
	// The agent is on A: a command through B reaches it there.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, body := command(b.base, "hello")
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent on A never answered through B: %d %s", st, body)
		}
	}

	gate := make(chan struct{})
	lb.Point(strings.TrimPrefix(b.base, "http://"), gate)
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	killed := time.Now()

	type result struct {
		status int
		body   string
	}
	res := make(chan result, 1)
	go func() {
		st, body := command(b.base, "after the kill")
		res <- result{st, body}
	}()
	select {
	case r := <-res:
		t.Fatalf("the command ended while its agent was between nodes: %d %s", r.status, r.body)
	case <-time.After(500 * time.Millisecond):
	}
	close(gate) // the balancer now sends the agent to B
	select {
	case r := <-res:
		if r.status != 200 || !strings.Contains(r.body, `"assistant_message":"re: after the kill"`) {
			t.Fatalf("the command after the kill: %d %s", r.status, r.body)
		}
		if took := time.Since(killed); took > 10*time.Second {
			t.Fatalf("the command reached the agent %s after the kill, want within 10 s", took)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the command after the kill got no answer; B's logs:\n%s", b.output())
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(strings.Join(got, "\n"), "after the kill"); n != 1 {
		t.Fatalf("the agent got the command %d times, want once (%q)", n, got)
	}
}
