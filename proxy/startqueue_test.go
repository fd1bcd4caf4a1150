package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"runhub/proxy"
	"runhub/proxy/proxytest"
	"runhub/store"
)

// TestStartQueuesFirstMessage: start's pending_user_message and
// pending_user_artifact_ids become the run's first queued user_message: an
// agent that connects later gets it first (before a message queued after
// it), as a user_message with content and artifact_ids; a start without a
// message queues nothing, so its agent gets nothing. A user_message that
// only attaches artifacts is accepted and reaches the agent.
func TestStartQueuesFirstMessage(t *testing.T) {
	e := newPxEnv(t, proxy.Config{})
	run := e.newRun("")
	var up struct {
		Artifacts []struct{ ID string } `json:"artifacts"`
	}
	e.call("POST", e.runPath(run)+"/artifacts/",
		`{"artifacts":[{"name":"shot.png","type":"user_attachment","content":"aGk=","content_encoding":"base64"}]}`, http.StatusOK, &up)
	if len(up.Artifacts) != 1 {
		t.Fatalf("artifacts: %+v", up)
	}
	artifact := up.Artifacts[0].ID
	e.call("POST", e.runPath(run)+"/start/",
		fmt.Sprintf(`{"pending_user_message":"fix it","pending_user_artifact_ids":[%q]}`, artifact), http.StatusOK, nil)
	// Queued after start (as another node would while no agent is here).
	ref := store.RunRef{ProjectID: e.project, TaskID: e.task, RunID: run}
	if _, err := e.st.EnqueueUserMessage(t.Context(), ref, json.RawMessage(`{"content":"then this"}`)); err != nil {
		t.Fatal(err)
	}

	a := e.dialQueueAgent(run)
	m := a.next(t)
	p, _ := json.Marshal(m["params"])
	want, _ := json.Marshal(map[string]any{"content": "fix it", "artifact_ids": []string{artifact}})
	if m["method"] != "user_message" || string(p) != string(want) {
		t.Fatalf("the agent's first request: %v, want user_message %s", m, want)
	}
	a.answer(t, m["id"], `{}`)
	a.answer(t, a.wantRequest(t, "user_message", "then this"), `{}`)

	// Only artifact ids, no content: accepted, and relayed as sent.
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":"user_message","params":{"artifact_ids":[%q]}}`, artifact)
	proxytest.WaitFor(t, "the agent to be idle", func() bool { return e.px.Idle(run) })
	ch := e.postCommand(run, body)
	m = a.next(t)
	p, _ = json.Marshal(m["params"])
	if m["method"] != "user_message" || string(p) != fmt.Sprintf(`{"artifact_ids":[%q]}`, artifact) {
		t.Fatalf("the agent got %v, want the artifact-only user_message", m)
	}
	a.answer(t, m["id"], `{"ok":1}`)
	if r := waitResult(t, "artifact-only message", ch); r.status != http.StatusOK || !strings.Contains(r.body, `"result":{"ok":1}`) {
		t.Fatalf("artifact-only message: %d %s", r.status, r.body)
	}

	// Started without a message: nothing queued, nothing delivered.
	bare := e.newRun("")
	e.call("POST", e.runPath(bare)+"/start/", `{}`, http.StatusOK, nil)
	if n, err := e.st.PendingUserMessages(t.Context(), bare); err != nil || n != 0 {
		t.Fatalf("a start without a message queued %d messages (%v)", n, err)
	}
	b := e.dialQueueAgent(bare)
	proxytest.WaitFor(t, "the agent to be idle", func() bool { return e.px.Idle(bare) })
	b.wantNothing(t, 300*time.Millisecond)
}
