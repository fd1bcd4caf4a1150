package node_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"runhub/cmd/node"
	"runhub/store"
	"runhub/store/teststore"
)

// TestNodeWiresOneWay: a node built by New and started serves a run's
// stream, and an append made through the REST API reaches it (runs.Service
// → broker → hub). Close closes the store, and may be called twice.
func TestNodeWiresOneWay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := teststore.Open(t)
	n, err := node.New(ctx, node.Config{Store: st, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	p, _ := st.CreateProject(ctx, "p")
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true}); err != nil {
		t.Fatal(err)
	}
	task, _ := st.CreateTask(ctx, p.ID, store.NewTask{Title: "t", OriginProduct: "user_created"})
	run, err := n.Runs().CreateRun(ctx, p.ID, task.ID, store.NewRun{})
	if err != nil {
		t.Fatal(err)
	}
	runPath := fmt.Sprintf("%s/api/projects/%d/tasks/%s/runs/%s", srv.URL, p.ID, task.ID, run.ID)
	req, _ := http.NewRequestWithContext(ctx, "GET", runPath+"/stream/", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", res.StatusCode)
	}
	lines := bufio.NewScanner(res.Body)
	next := func() string {
		for lines.Scan() {
			if id, ok := strings.CutPrefix(lines.Text(), "id: "); ok {
				return id
			}
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return ""
	}
	if id := next(); id != "1" {
		t.Fatalf("first event id %q, want 1", id)
	}
	app, _ := http.NewRequest("POST", runPath+"/append_log/", strings.NewReader(`{"entries":[{"type":"console","message":"x"}]}`))
	app.Header.Set("Authorization", "Bearer "+secret)
	app.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	ares, err := http.DefaultClient.Do(app)
	if err != nil {
		t.Fatal(err)
	}
	ares.Body.Close()
	if id := next(); id != "2" {
		t.Fatalf("appended event id %q, want 2", id)
	}
	// Through the broker at once, not found by the hub's position check
	// (every 5 s) as it would be if the broker had no handler.
	if d := time.Since(sent); d > 2*time.Second {
		t.Fatalf("appended event streamed after %v", d)
	}
	srv.CloseClientConnections()
	srv.Close()
	if err := n.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := st.ListProjects(ctx); err == nil {
		t.Fatal("the store is still open after Close")
	}
}

// TestNewRequiresStore: a node is never built on a default store.
func TestNewRequiresStore(t *testing.T) {
	if n, err := node.New(context.Background(), node.Config{DataDir: t.TempDir()}); err == nil || n != nil {
		t.Fatalf("New without a store = %v, %v", n, err)
	}
}
