package redisrelay_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/hub"
	redisbroker "runhub/hub/redis"
	"runhub/hub/redis/redistest"
	"runhub/proxy"
	"runhub/proxy/agentclient"
	"runhub/proxy/proxytest"
	"runhub/proxy/redisrelay"
	"runhub/proxy/tokens"
	"runhub/rest"
	"runhub/store"
	"runhub/store/runs"
	"runhub/store/sqlite"
)

// node is one runhub node: its own hub, broker, proxy, relay and HTTP
// server, over the store all nodes share.
type node struct {
	srv *httptest.Server
	px  *proxy.Proxy
}

func newNode(t *testing.T, st store.Store, tk *tokens.Tokens, redisURL string) *node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := hub.New(hub.Config{Store: st, Logger: log})
	b, err := redisbroker.New(ctx, redisURL, h.Deliver, h.Resync, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	h.UseBroker(b)
	svc := &runs.Service{Store: st, Pub: h}
	px := proxy.New(proxy.Config{Tokens: tk, Runs: svc, Store: st, DecodePatch: rest.DecodeRunPatch, Logger: log})
	relay, err := redisrelay.New(ctx, redisURL, px, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	px.UseRelay(relay)
	h.UseCommands(px.WSCommand)
	srv := httptest.NewServer(rest.New(rest.Config{Store: st, Runs: svc, Stream: h.ServeStream, WS: h.ServeWS,
		Tokens: tk, Commands: px, Agent: px.ServeAgent, Logger: log}))
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	return &node{srv: srv, px: px}
}

func call(t *testing.T, n *node, key, method, path, body string, status int, out any) {
	t.Helper()
	proxytest.APICall(t, n.srv.URL, key, method, path, body, status, out)
}

// TestCrossNodeCommands: the agent is connected to node A and a command
// sent to node B is answered through B; then the agent connects to B
// (which closes its connection to A with 4009) and commands sent to A
// reach it on B. A run with no agent anywhere is still 400.
func TestCrossNodeCommands(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	tk, err := tokens.Load(tokens.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a, b := newNode(t, st, tk, rs.URL()), newNode(t, st, tk, rs.URL())

	p, _ := st.CreateProject(ctx, "relay")
	secret, prefix, hash := store.GenerateAPIKey()
	st.CreateAPIKey(ctx, store.NewAPIKey{Label: "t", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true})
	var task, run struct{ ID string }
	call(t, a, secret, "POST", fmt.Sprintf("/api/projects/%d/tasks/", p.ID), `{"title":"t"}`, http.StatusCreated, &task)
	runs := fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", p.ID, task.ID)
	call(t, a, secret, "POST", runs, `{}`, http.StatusCreated, &run)
	runPath := runs + run.ID

	agentOn := func(n *node) (<-chan error, context.CancelFunc) {
		var tb struct {
			Token string `json:"token"`
			URL   string `json:"ws_url"`
		}
		call(t, n, secret, "GET", runPath+"/connection_token?role=agent", "", http.StatusOK, &tb)
		ag := agentclient.New(agentclient.Options{URL: tb.URL, Token: tb.Token, Reply: func(c string) string { return "on " + n.srv.URL + ": " + c }})
		actx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- ag.Run(actx) }()
		t.Cleanup(cancel)
		proxytest.WaitFor(t, "the agent to connect to "+n.srv.URL, func() bool { return n.px.Connected(run.ID) })
		return done, cancel
	}

	doneA, _ := agentOn(a)
	var r struct {
		Result struct {
			StopReason string `json:"stopReason"`
			Message    string `json:"assistant_message"`
		} `json:"result"`
		ID any `json:"id"`
	}
	call(t, b, secret, "POST", runPath+"/command", `{"id":1,"method":"user_message","params":{"content":"hello"}}`, http.StatusOK, &r)
	if r.Result.StopReason != "end_turn" || r.Result.Message != "on "+a.srv.URL+": hello" || r.ID != float64(1) {
		t.Fatalf("command through B to the agent on A: %+v", r)
	}

	// The agent moves to B: A's connection is closed with 4009, and the
	// reference agent on A stops (it was replaced).
	_, _ = agentOn(b)
	select {
	case err := <-doneA:
		if err == nil || !strings.Contains(err.Error(), "4009") {
			t.Fatalf("the agent on A ended with %v, want a 4009 refusal", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent on A was not replaced")
	}
	proxytest.WaitFor(t, "A to drop the agent", func() bool { return !a.px.Connected(run.ID) })
	call(t, a, secret, "POST", runPath+"/command", `{"id":2,"method":"user_message","params":{"content":"again"}}`, http.StatusOK, &r)
	if r.Result.Message != "on "+b.srv.URL+": again" {
		t.Fatalf("command through A to the agent on B: %+v", r)
	}
	var c map[string]any
	call(t, a, secret, "POST", runPath+"/command", `{"method":"cancel"}`, http.StatusOK, &c)
	if c["result"].(map[string]any)["cancelled"] != true {
		t.Fatalf("cancel through A: %v", c)
	}

	// A run without an agent on any node.
	var other struct{ ID string }
	call(t, a, secret, "POST", runs, `{}`, http.StatusCreated, &other)
	call(t, b, secret, "POST", runs+other.ID+"/command", `{"method":"cancel"}`, http.StatusBadRequest, nil)
}
