package redisrelay_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/proxy/agentclient"
	"runhub/proxy/proxytest"
	"runhub/store"
	"runhub/store/teststore"
)

// TestCrossNodeCancel: cancel sent to node B while the run's agent is
// connected to node A is 202; A asks the agent to stop, it ends its
// session, and A records the run cancelled.
func TestCrossNodeCancel(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	db, dataDir := teststore.OpenShared(t), t.TempDir()
	st := db(t)
	a, b := newNode(t, db, dataDir, rs.URL()), newNode(t, db, dataDir, rs.URL())

	p, _ := st.CreateProject(ctx, "cancel")
	secret, prefix, hash := store.GenerateAPIKey()
	st.CreateAPIKey(ctx, store.NewAPIKey{Label: "t", Prefix: prefix, Hash: hash, Scopes: []string{store.ScopeAll}, AllProjects: true})
	var task, run struct{ ID string }
	call(t, a, secret, "POST", fmt.Sprintf("/api/projects/%d/tasks/", p.ID), `{"title":"t"}`, http.StatusCreated, &task)
	runs := fmt.Sprintf("/api/projects/%d/tasks/%s/runs/", p.ID, task.ID)
	call(t, a, secret, "POST", runs, `{"status":"in_progress"}`, http.StatusCreated, &run)
	runPath := runs + run.ID

	var tb struct {
		Token string `json:"token"`
		URL   string `json:"ws_url"`
	}
	call(t, a, secret, "GET", runPath+"/connection_token?role=agent", "", http.StatusOK, &tb)
	ag := agentclient.New(agentclient.Options{URL: tb.URL, Token: tb.Token})
	actx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ag.Run(actx) }()
	proxytest.WaitFor(t, "the agent to connect to A", func() bool { return a.px.Connected(run.ID) })

	var r struct{ Status string }
	call(t, b, secret, "POST", runPath+"/cancel", "", http.StatusAccepted, &r)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent on A did not stop after cancel through B")
	}
	proxytest.WaitFor(t, "the run to be cancelled", func() bool {
		call(t, b, secret, "GET", runPath, "", http.StatusOK, &r)
		return r.Status == "cancelled"
	})
}
