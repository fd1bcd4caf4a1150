package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestReferenceAgentSubprocess: `runhub agent --api --key --run` fetches its
// own token, connects to a running server, answers commands sent through
// REST, and exits with status 0 after close. The server's key is written
// to the data directory (0600) on first start and reused.
func TestReferenceAgentSubprocess(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	key := readKey(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var task, run struct{ ID string }
	if st, err := do(ctx, key, "POST", s.base+"/api/projects/1/tasks/", map[string]string{"title": "agent"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	runPath := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if st, err := do(ctx, key, "POST", s.base+runPath, map[string]string{}, &run); err != nil || st != 201 {
		t.Fatalf("run: %d %v", st, err)
	}
	runPath += run.ID

	agent := exec.CommandContext(ctx, runhubBinary(t), "agent", "--api", s.base, "--key", key, "--run", runPath)
	agentLogs := &strings.Builder{}
	agent.Stderr = &lockedWriter{w: agentLogs, mu: s.mu}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()

	command := func(body string) (int, map[string]any) {
		var out map[string]any
		st, err := do(ctx, key, "POST", s.base+runPath+"/command", json.RawMessage(body), &out)
		if err != nil {
			t.Fatal(err)
		}
		return st, out
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, out := command(`{"jsonrpc":"2.0","id":1,"method":"user_message","params":{"content":"ping"}}`)
		if st == http.StatusOK {
			if r, _ := out["result"].(map[string]any); r["stopReason"] != "end_turn" {
				t.Fatalf("user_message: %v", out)
			}
			break
		}
		if st != http.StatusBadRequest || time.Now().After(deadline) {
			t.Fatalf("command before the agent connected: %d %v", st, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, out := command(`{"method":"close"}`); st != http.StatusOK || out["result"].(map[string]any)["closed"] != true {
		t.Fatalf("close: %d %v", st, out)
	}
	select {
	case err := <-exited:
		if err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("agent exited with %v; logs:\n%s", err, agentLogs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit after close")
	}
	req, _ := http.NewRequest("GET", s.base+runPath+"/logs", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	logLines, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"agent_connected", "You said: ping", "agent_disconnected"} {
		if !strings.Contains(string(logLines), want) {
			t.Errorf("log lacks %q:\n%s", want, logLines)
		}
	}
}
