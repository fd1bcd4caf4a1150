package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub/redis/redistest"
	"runhub/store/postgres/pgtest"
)

// The deployment guide's other files: the README shows each verbatim
// (TestReadmeShowsTheGuide), so what an operator copies is what these
// tests run.
const (
	nginxConfig = "testdata/nginx.conf"
	systemdUnit = "testdata/runhub.service"
)

// TestReadmeShowsTheGuide: the README shows the nginx configuration and
// the systemd unit exactly as the tests use them.
func TestReadmeShowsTheGuide(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{nginxConfig, systemdUnit} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(readme, b) {
			t.Errorf("README.md does not show %s verbatim", f)
		}
	}
}

// TestSystemdUnit: serve accepts the unit's command line, and
// systemd-analyze accepts the unit (with the test's binary in place of
// /usr/local/bin/runhub, which it checks exists).
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile(systemdUnit)
	if err != nil {
		t.Fatal(err)
	}
	var execStart string
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = v
		}
	}
	args := strings.Fields(execStart)
	if len(args) < 2 || args[0] != "/usr/local/bin/runhub" || args[1] != "serve" {
		t.Fatalf("ExecStart %q, want /usr/local/bin/runhub serve ...", execStart)
	}
	c, err := loadConfig(args[2:])
	if err != nil {
		t.Fatalf("serve refuses the unit's flags: %v", err)
	}
	// The stop timeout leaves room for the drain it asks for.
	if c.drainDelay+c.shutdownTO >= 40*time.Second || !bytes.Contains(unit, []byte("TimeoutStopSec=40\n")) {
		t.Errorf("drain %v + shutdown %v must fit in TimeoutStopSec=40", c.drainDelay, c.shutdownTO)
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	if testing.Short() {
		t.Skip("builds the binary")
	}
	f := filepath.Join(t.TempDir(), "runhub.service")
	if err := os.WriteFile(f, bytes.ReplaceAll(unit, []byte("/usr/local/bin/runhub"), []byte(runhubBinary(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", f).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// startNginx runs nginx in the foreground with the guide's configuration
// (its addresses rendered as envsubst would) in front of nodes.
func startNginx(t *testing.T, nodes ...*server) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatal("nginx not installed (make deps)")
		}
		t.Skip("nginx not installed (make deps)")
	}
	tmpl, err := os.ReadFile(nginxConfig)
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	vars := map[string]string{"RUNHUB_LB_ADDR": addr}
	for i := range 3 {
		vars[fmt.Sprintf("RUNHUB_NODE%d", i+1)] = nodes[i%len(nodes)].base[len("http://"):]
	}
	// Only the RUNHUB_ variables, as the guide's envsubst line: nginx's own
	// ($host, $http_upgrade) stay.
	conf := os.Expand(string(tmpl), func(name string) string {
		if v, ok := vars[name]; ok {
			return v
		}
		return "$" + name
	})
	dir := t.TempDir()
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"body", "proxy"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	// Where this nginx keeps its pid, log and temporary files: the test's
	// directory, not the system's.
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", "stderr", "-g",
		"daemon off; pid "+filepath.Join(dir, "nginx.pid")+";")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		time.AfterFunc(5*time.Second, func() { cmd.Process.Kill() })
		cmd.Wait()
	})
	return waitBalancer(t, "http://"+addr, &logs)
}

// TestNginxGuide: the README's nginx configuration in front of two nodes
// spreads requests, passes SSE through unbuffered and WebSocket upgrades
// on, and when a node dies, its passive check moves requests to the other
// without a failed answer.
func TestNginxGuide(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	url, rs := pgtest.DB(t), redistest.Start(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	var nodes []*server
	for i, dir := range dirs {
		nodes = append(nodes, startServerArgs(t, dir, "--node-id", fmt.Sprintf("n%d", i+1),
			"--database-url", url, "--redis-url", rs.URL()))
	}
	key := readKey(t, dirs[0])
	lb := startNginx(t, nodes...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	seen := map[string]bool{}
	for range 20 {
		var body struct{ Node string }
		if st, err := do(ctx, "", "GET", lb+"/readyz", nil, &body); err != nil || st != 200 {
			t.Fatalf("/readyz through nginx: %d %v", st, err)
		}
		seen[body.Node] = true
	}
	if len(seen) != 2 {
		t.Fatalf("20 requests reached nodes %v, want both", seen)
	}

	var task, run struct{ ID string }
	if st, err := do(ctx, key, "POST", lb+"/api/projects/1/tasks/", map[string]any{"title": "nginx"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	runs := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if st, err := do(ctx, key, "POST", lb+runs, map[string]any{"status": "in_progress"}, &run); err != nil || st != 201 {
		t.Fatalf("run: %d %v", st, err)
	}
	streamURL := lb + runs + run.ID + "/stream"

	// SSE: each event comes through as it is appended, not when nginx's
	// buffer fills or the stream ends.
	ids := sseIDs(ctx, t, streamURL+"?start=latest", key)
	// The stream WebSocket: the upgrade passes through.
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(streamURL, "http")+"?start=latest",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatalf("WebSocket through nginx: %v", err)
	}
	defer ws.CloseNow()
	for i := range 3 {
		body := map[string]any{"entries": []map[string]any{{"type": "console", "n": i}}}
		if st, err := do(ctx, key, "POST", lb+runs+run.ID+"/append_log/", body, nil); err != nil || st != 200 {
			t.Fatalf("append %d: %d %v", i, st, err)
		}
		want := fmt.Sprint(i + 2) // seq 1 is the run's creation
		select {
		case id := <-ids:
			if id != want {
				t.Fatalf("SSE: append %d arrived as seq %s", i, id)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("SSE: append %d did not arrive through nginx", i)
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		_, msg, err := ws.Read(rctx)
		rcancel()
		if err != nil || !bytes.Contains(msg, []byte(`"seq":`+want)) {
			t.Fatalf("WebSocket: append %d: %s %v", i, msg, err)
		}
	}

	// A node dies: requests that hit it fail over to the other node.
	nodes[1].cmd.Process.Signal(syscall.SIGKILL)
	nodes[1].cmd.Wait()
	for i := range 20 {
		var body struct{ Node string }
		if st, err := do(ctx, key, "GET", lb+"/readyz", nil, &body); err != nil || st != 200 || body.Node != "n1" {
			t.Fatalf("request %d after the kill: %d %v (node %q)", i, st, err, body.Node)
		}
	}
}
