package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"runhub/proxy/tokens"

	"github.com/coder/websocket"
)

// runCLI runs a runhub subcommand and returns its stdout.
func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(runhubBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("runhub %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// TestKeysRevokeAcrossProcesses (issue 10 item 5, as deployed): two
// `runhub serve` processes share one data directory and no broker; `runhub
// keys revoke`, a third process, revokes a key; within the contract's 5 s
// both servers close the /ws connections opened with the key or its token
// (4001) and refuse the token (401), while the bootstrap key's token still
// works.
func TestKeysRevokeAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dataDir := t.TempDir()
	a := startServer(t, dataDir)
	b := startServer(t, dataDir)
	boot := readKey(t, dataDir)
	key := strings.TrimSpace(runCLI(t, "keys", "create", "--project", "1", "--label", "revoke-me", "--data-dir", dataDir))
	var keyID string
	for _, line := range strings.Split(runCLI(t, "keys", "list", "--data-dir", dataDir), "\n") {
		if strings.Contains(line, "revoke-me") {
			keyID = strings.Fields(line)[0]
		}
	}
	if keyID == "" {
		t.Fatal("the new key is not listed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var task, run struct{ ID string }
	if code, err := do(ctx, key, "POST", a.base+"/api/projects/1/tasks/", map[string]any{"title": "t"}, &task); code != 201 {
		t.Fatalf("create task: %d %v", code, err)
	}
	runPath := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if code, err := do(ctx, key, "POST", a.base+runPath, map[string]any{}, &run); code != 201 {
		t.Fatalf("create run: %d %v", code, err)
	}
	runPath += run.ID
	mint := func(k string) string {
		var tb struct{ Token string }
		if code, err := do(ctx, k, "GET", a.base+runPath+"/connection_token", nil, &tb); code != 200 {
			t.Fatalf("mint: %d %v", code, err)
		}
		return tb.Token
	}
	tok, bootTok := mint(key), mint(boot)

	type end struct {
		name string
		err  error
		at   time.Time
	}
	ends := make(chan end, 4)
	open := func(name, url string, hdr http.Header) {
		ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		sub := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":%q}}`, run.ID)
		if err := ws.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
			t.Fatal(err)
		}
		if _, m, err := ws.Read(ctx); err != nil || !strings.Contains(string(m), "last_seq") {
			t.Fatalf("%s: subscribe: %s %v", name, m, err)
		}
		go func() {
			for {
				if _, _, err := ws.Read(ctx); err != nil {
					ends <- end{name, err, time.Now()}
					return
				}
			}
		}()
	}
	wsURL := func(s *server, path string) string { return "ws" + strings.TrimPrefix(s.base, "http") + path }
	open("/ws key on a", wsURL(a, "/ws"), http.Header{"Authorization": {"Bearer " + key}})
	open("/ws token on b", wsURL(b, "/ws?token="+tok), nil)

	revoked := time.Now()
	runCLI(t, "keys", "revoke", keyID, "--data-dir", dataDir)
	for range 2 {
		select {
		case e := <-ends:
			if websocket.CloseStatus(e.err) != 4001 {
				t.Errorf("%s ended with %v, want close 4001", e.name, e.err)
			}
			if d := e.at.Sub(revoked); d > tokens.RevocationWindow {
				t.Errorf("%s closed %v after keys revoke, want within %v", e.name, d, tokens.RevocationWindow)
			}
		case <-time.After(tokens.RevocationWindow + 5*time.Second):
			t.Fatalf("a connection is still open %v after keys revoke\nlogs a:\n%s\nlogs b:\n%s", time.Since(revoked), a.output(), b.output())
		}
	}
	for _, s := range []*server{a, b} {
		for _, c := range []struct {
			tok  string
			want int
		}{{tok, http.StatusUnauthorized}, {bootTok, http.StatusOK}} {
			cctx, ccancel := context.WithCancel(ctx)
			req, _ := http.NewRequestWithContext(cctx, "GET", s.base+runPath+"/stream?token="+c.tok, nil)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != c.want {
				t.Errorf("%s: stream with a token: %d, want %d", s.base, res.StatusCode, c.want)
			}
			ccancel()
			res.Body.Close()
		}
	}
}
