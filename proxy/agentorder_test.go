package proxy_test

import (
	"context"
	"testing"
	"time"

	"runhub/proxy/proxytest"

	"github.com/coder/websocket"
)

// TestAgentFirstBatchFollowsConnected: an agent that sends append_log the
// moment its connection opens finds agent_connected already on the log
// before its entries: the session is registered, and its connection
// recorded, before any of its requests is handled, however long the store
// takes to record the connection.
func TestAgentFirstBatchFollowsConnected(t *testing.T) {
	e, flaky := newFlakyPxEnv(t)
	flaky.slowConnected.Store(int64(150 * time.Millisecond))
	for i := range 3 {
		run := e.newRun("")
		tok, url := e.agentToken(run)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		ws, _, err := websocket.Dial(ctx, url+"?token="+tok, nil)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		a := &rawAgent{ws: ws, ctx: ctx}
		if r := a.append(t, 1, `{"entries":[{"type":"first"}]}`); r["error"] != nil {
			t.Fatalf("append_log: %v", r)
		}
		ws.Close(websocket.StatusNormalClosure, "")
		cancel()
		proxytest.WaitFor(t, "the agent to disconnect", func() bool { return !e.px.Connected(run) })
		got := e.logTypes(run)
		if len(got) < 2 || got[0] != "agent_connected" || got[1] != "first" {
			t.Fatalf("connection %d: log %v, want agent_connected then the agent's first entry", i, got)
		}
	}
}
