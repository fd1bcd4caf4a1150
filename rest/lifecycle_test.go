package rest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"runhub/store"
	"runhub/store/runs"
)

// TestStartRun: start moves a not_started run to queued, queues the first
// user message (content and artifact ids, as a user_message's params) in
// the store's steering queue rather than the run's state, and answers the
// task with latest_run; a second start, an unknown artifact id, and bodies
// beyond the limits are 400 and change nothing (nothing queued); a start
// without a message queues nothing.
func TestStartRun(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	res := e.do(req{Method: "POST", Path: f.path(e, "/artifacts/"), Key: e.writeKey, Body: map[string]any{"artifacts": []map[string]any{
		{"name": "shot.png", "type": "user_attachment", "content": "aGk=", "content_encoding": "base64"}}}})
	wantStatus(t, res, http.StatusOK)
	var up struct {
		Artifacts []struct{ ID string } `json:"artifacts"`
	}
	if err := json.Unmarshal(res.body, &up); err != nil || len(up.Artifacts) != 1 {
		t.Fatalf("artifacts: %v %s", err, res)
	}
	artifact := up.Artifacts[0].ID

	refused := []struct {
		name string
		body any
		attr string
	}{
		{"unknown artifact", map[string]any{"pending_user_artifact_ids": []string{"not-an-artifact"}}, "pending_user_artifact_ids"},
		{"artifact ids not a list", map[string]any{"pending_user_artifact_ids": "x"}, "pending_user_artifact_ids"},
		{"too many artifact ids", map[string]any{"pending_user_artifact_ids": make([]string, runs.MaxPendingArtifactIDs+1)}, "pending_user_artifact_ids"},
		{"message not a string", map[string]any{"pending_user_message": 3}, "pending_user_message"},
		{"message too long", map[string]any{"pending_user_message": strings.Repeat("a", runs.MaxPendingMessageBytes+1)}, "pending_user_message"},
	}
	for _, c := range refused {
		res := e.do(req{Method: "POST", Path: f.path(e, "/start/"), Key: e.writeKey, Body: c.body})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", c.attr)
	}
	res = e.do(req{Method: "GET", Path: f.path(e, "/"), Key: e.readKey})
	if got := obj(t, res); got["status"] != "not_started" || len(got["state"].(map[string]any)) != 0 {
		t.Fatalf("refused starts changed the run: %s", res)
	}
	if n, err := e.st.PendingUserMessages(context.Background(), f.run); err != nil || n != 0 {
		t.Fatalf("refused starts queued %d messages (%v)", n, err)
	}

	// At the limits, accepted.
	msg := strings.Repeat("é", runs.MaxPendingMessageBytes/2)
	res = e.do(req{Method: "POST", Path: f.path(e, "/start/"), Key: e.writeKey,
		Body: map[string]any{"pending_user_message": msg, "pending_user_artifact_ids": []string{artifact}}})
	wantStatus(t, res, http.StatusOK)
	task := obj(t, res)
	if task["id"] != f.task {
		t.Fatalf("start answered %v, want the task %s", task["id"], f.task)
	}
	run := task["latest_run"].(map[string]any)
	if state := run["state"].(map[string]any); run["id"] != f.run || run["status"] != "queued" || len(state) != 0 {
		keys := make([]string, 0, len(state))
		for k := range state {
			keys = append(keys, k)
		}
		t.Errorf("latest_run id %v status %v state keys %v, want queued with no state keys", run["id"], run["status"], keys)
	}
	// The message is the run's first queued user_message, once.
	m, err := e.st.TakeUserMessage(context.Background(), f.run)
	if err != nil {
		t.Fatalf("the first message was not queued: %v", err)
	}
	want, _ := json.Marshal(map[string]any{"content": msg, "artifact_ids": []string{artifact}})
	wantJSON(t, m.Params, string(want), "queued params")
	if _, err := e.st.TakeUserMessage(context.Background(), f.run); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a second queued message: %v, want none", err)
	}
	// The change is a task_run_state event like any other.
	evs := e.events(f.run)
	if last := evs[len(evs)-1]; last.Type != "task_run_state" || !bytes.Contains(last.Data, []byte(`"status":"queued"`)) {
		t.Errorf("last event %s %s, want task_run_state queued", last.Type, last.Data)
	}

	// Only a not_started run starts.
	res = e.do(req{Method: "POST", Path: f.path(e, "/start/"), Key: e.writeKey})
	if er := wantAPIError(t, res, http.StatusBadRequest, "validation_error", "status"); er.Code != "invalid_state" {
		t.Errorf("code %q, want invalid_state", er.Code)
	}
	if n, err := e.st.PendingUserMessages(context.Background(), f.run); err != nil || n != 0 {
		t.Errorf("a refused second start queued %d messages (%v)", n, err)
	}
	// Without a message (null, or ""), no state keys and nothing queued.
	g := e.fixture()
	res = e.do(req{Method: "POST", Path: g.path(e, "/start"), Key: e.writeKey, Body: map[string]any{"pending_user_message": "", "pending_user_artifact_ids": nil}})
	wantStatus(t, res, http.StatusOK)
	if st := obj(t, res)["latest_run"].(map[string]any)["state"].(map[string]any); len(st) != 0 {
		t.Errorf("state %v, want empty", st)
	}
	if n, err := e.st.PendingUserMessages(context.Background(), g.run); err != nil || n != 0 {
		t.Errorf("a start without a message queued %d messages (%v)", n, err)
	}
	// Scope, project and path checks as every write route.
	wantStatus(t, e.do(req{Method: "POST", Path: g.path(e, "/start"), Key: e.readKey}), http.StatusForbidden)
	wantStatus(t, e.do(req{Method: "POST", Path: e.runPath(e.p1, f.task, "00000000-0000-0000-0000-000000000000") + "/start", Key: e.writeKey}), http.StatusNotFound)
}

// TestCancelRunWithoutAgent: with no agent connected, cancel makes the run
// cancelled at once (200); it is idempotent, and a run that finished
// otherwise keeps its status.
func TestCancelRunWithoutAgent(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey, Body: map[string]any{"status": "in_progress"}}), http.StatusOK)
	res := e.do(req{Method: "POST", Path: f.path(e, "/cancel/"), Key: e.writeKey})
	wantStatus(t, res, http.StatusOK)
	first := obj(t, res)
	if first["status"] != "cancelled" {
		t.Fatalf("status %v, want cancelled", first["status"])
	}
	done := wantTime(t, first["completed_at"], "completed_at")
	n := len(e.events(f.run))
	res = e.do(req{Method: "POST", Path: f.path(e, "/cancel"), Key: e.writeKey})
	wantStatus(t, res, http.StatusOK)
	again := obj(t, res)
	if again["status"] != "cancelled" || !wantTime(t, again["completed_at"], "completed_at").Equal(done) || len(e.events(f.run)) != n {
		t.Errorf("second cancel changed the run: %s", res)
	}

	g := e.fixture()
	wantStatus(t, e.do(req{Method: "PATCH", Path: g.path(e, ""), Key: e.writeKey, Body: map[string]any{"status": "completed"}}), http.StatusOK)
	res = e.do(req{Method: "POST", Path: g.path(e, "/cancel"), Key: e.writeKey})
	wantStatus(t, res, http.StatusOK)
	if got := obj(t, res); got["status"] != "completed" {
		t.Errorf("cancel of a completed run: status %v, want completed", got["status"])
	}
	wantStatus(t, e.do(req{Method: "POST", Path: g.path(e, "/cancel"), Key: e.readKey}), http.StatusForbidden)
}

// jsonlTexts returns the "text" field of every line of a JSONL body.
func jsonlTexts(t *testing.T, res *resp) []string {
	t.Helper()
	wantStatus(t, res, http.StatusOK)
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(res.body))
	for sc.Scan() {
		var v struct{ Text string }
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, v.Text)
	}
	return out
}

// TestResumeInCloud: resume_in_cloud makes a new queued cloud run naming
// the old one; its own seqs start at 1, and its /logs (and log_url) are the
// chain's logs, oldest run first, then its own. A chain forged through
// state ends: a loop is followed once, a foreign or malformed id not at all.
func TestResumeInCloud(t *testing.T) {
	e := newEnv(t, nil)
	f := e.fixture()
	text := func(s string) map[string]any { return map[string]any{"type": "note", "text": s} }
	e.appendLog(f, text("a1"), text("a2"))
	wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey,
		Body: map[string]any{"status": "completed", "branch": "feature"}}), http.StatusOK)

	resume := func(fx fixture) fixture {
		t.Helper()
		res := e.do(req{Method: "POST", Path: fx.path(e, "/resume_in_cloud/"), Key: e.writeKey})
		wantStatus(t, res, http.StatusCreated)
		run := obj(t, res)
		state := run["state"].(map[string]any)
		if run["status"] != "queued" || run["environment"] != "cloud" || run["branch"] != "feature" || state["resume_from_run_id"] != fx.run ||
			run["id"] == fx.run || run["task"] != fx.task {
			t.Fatalf("resumed run %s", res)
		}
		return fixture{task: fx.task, run: run["id"].(string)}
	}
	b := resume(f)
	e.appendLog(b, text("b1"))
	if evs := e.events(b.run); len(evs) != 2 || evs[0].Seq != 1 || evs[1].Seq != 2 {
		t.Errorf("resumed run's own events %+v, want seqs 1, 2", evs)
	}
	c := resume(b)
	e.appendLog(c, text("c1"))
	logs := func(fx fixture) string {
		return strings.Join(jsonlTexts(t, e.do(req{Method: "GET", Path: fx.path(e, "/logs"), Key: e.readKey})), ",")
	}
	for fx, want := range map[fixture]string{f: "a1,a2", b: "a1,a2,b1", c: "a1,a2,b1,c1"} {
		if got := logs(fx); got != want {
			t.Errorf("logs of %s = %s, want %s", fx.run, got, want)
		}
	}
	// log_url serves the same chain.
	res := e.do(req{Method: "GET", Path: c.path(e, ""), Key: e.readKey})
	link := obj(t, res)["log_url"].(string)
	lr, err := e.client.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	body := drain(lr)
	if got := strings.Join(jsonlTexts(t, &resp{status: lr.StatusCode, body: body}), ","); got != "a1,a2,b1,c1" {
		t.Errorf("log_url of the resumed run = %s, want a1,a2,b1,c1", got)
	}
	// session_logs stays the run's own.
	_, own := e.sessionLogs(c, "")
	if len(own) != 1 {
		t.Errorf("session_logs of the resumed run: %d entries, want its own 1", len(own))
	}

	// A loop forged through state is followed once: a's chain is c, b
	// (b names a, already seen).
	wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey,
		Body: map[string]any{"state": map[string]any{"resume_from_run_id": c.run}}}), http.StatusOK)
	if got := logs(f); got != "b1,c1,a1,a2" {
		t.Errorf("logs of a forged loop = %s, want b1,c1,a1,a2", got)
	}
	// A run of another task, a malformed id, or a non-string: no chain.
	other := e.fixture()
	e.appendLog(other, text("x"))
	for _, v := range []any{other.run, "not-a-uuid", strings.ToUpper(b.run), 7} {
		wantStatus(t, e.do(req{Method: "PATCH", Path: f.path(e, ""), Key: e.writeKey,
			Body: map[string]any{"state": map[string]any{"resume_from_run_id": v}}}), http.StatusOK)
		if got := logs(f); got != "a1,a2" {
			t.Errorf("resume_from_run_id %v: logs %s, want a1,a2", v, got)
		}
	}
	wantStatus(t, e.do(req{Method: "POST", Path: f.path(e, "/resume_in_cloud"), Key: e.readKey}), http.StatusForbidden)
	wantStatus(t, e.do(req{Method: "POST", Path: e.runPath(e.p2, f.task, f.run) + "/resume_in_cloud", Key: e.allKey}), http.StatusNotFound)
}

// TestResumeChainLimit: a run's log reaches back at most
// store.MaxResumeChain runs.
func TestResumeChainLimit(t *testing.T) {
	e := newEnv(t, nil)
	first := e.fixture()
	e.appendLog(first, map[string]any{"type": "note", "text": "first"})
	cur := first
	var second fixture
	for i := 0; i <= store.MaxResumeChain; i++ {
		res := e.do(req{Method: "POST", Path: cur.path(e, "/resume_in_cloud"), Key: e.writeKey})
		wantStatus(t, res, http.StatusCreated)
		cur = fixture{task: first.task, run: obj(t, res)["id"].(string)}
		if i == 0 {
			second = cur
			e.appendLog(second, map[string]any{"type": "note", "text": "second"})
		}
	}
	// cur has MaxResumeChain+1 runs before it: the first is out of reach.
	got := jsonlTexts(t, e.do(req{Method: "GET", Path: cur.path(e, "/logs"), Key: e.readKey}))
	if strings.Join(got, ",") != "second" {
		t.Errorf("logs of a run %d resumes deep = %v, want [second]", store.MaxResumeChain+1, got)
	}
}
