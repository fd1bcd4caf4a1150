package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/store/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestNodesShareAPostgresDatabase: two `runhub serve` processes with their
// own data directories and only --database-url in common are one system:
// the first to start bootstraps (only its data directory gets the key),
// the second does not; what one node writes the other reads; a connection
// token minted by one opens a stream on the other, and a log link signed
// by one downloads from the other (the secrets live in the database).
func TestNodesShareAPostgresDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	url := pgtest.DB(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startServerArgs(t, dirA, "--database-url", url)
	b := startServerArgs(t, dirB, "--database-url", url)
	key := readKey(t, dirA)
	if _, err := os.Stat(filepath.Join(dirB, bootstrapKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("the second node wrote a bootstrap key too (%v)", err)
	}
	for _, dir := range []string{dirA, dirB} {
		for _, f := range []string{"runhub.db", "jwt-key.pem", "url-secret"} {
			if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
				t.Fatalf("%s in %s: the PostgreSQL node keeps it in the database (%v)", f, dir, err)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var task struct{ ID string }
	if st, err := do(ctx, key, "POST", a.base+"/api/projects/1/tasks/", map[string]any{"title": "shared"}, &task); err != nil || st != 201 {
		t.Fatalf("create task on a: %d %v", st, err)
	}
	var run struct {
		ID     string `json:"id"`
		LogURL string `json:"log_url"`
	}
	runs := fmt.Sprintf("/api/projects/1/tasks/%s/runs/", task.ID)
	if st, err := do(ctx, key, "POST", b.base+runs, map[string]any{"status": "in_progress"}, &run); err != nil || st != 201 {
		t.Fatalf("create run on b: %d %v", st, err)
	}
	entries := map[string]any{"entries": []map[string]any{{"type": "console", "message": "from a"}}}
	if st, err := do(ctx, key, "POST", a.base+runs+run.ID+"/append_log/", entries, nil); err != nil || st != 200 {
		t.Fatalf("append on a: %d %v", st, err)
	}

	var tok struct{ Token string }
	if st, err := do(ctx, key, "GET", a.base+runs+run.ID+"/connection_token/", nil, &tok); err != nil || st != 200 {
		t.Fatalf("token from a: %d %v", st, err)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", b.base+runs+run.ID+"/stream?token="+tok.Token+"&start=latest", nil)
	req.Header.Set("Accept", "text/event-stream")
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	res, err := http.DefaultClient.Do(req.WithContext(sctx))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("a's token on b's stream: %d", res.StatusCode)
	}

	// The log link a signs (a run read through a) downloads from b.
	if st, err := do(ctx, key, "GET", a.base+runs+run.ID+"/", nil, &run); err != nil || st != 200 || run.LogURL == "" {
		t.Fatalf("run on a: %d %v %q", st, err, run.LogURL)
	}
	link := b.base + run.LogURL[len(a.base):]
	lres, err := http.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	lres.Body.Close()
	if lres.StatusCode != 200 {
		t.Fatalf("a's log link on b: %d", lres.StatusCode)
	}
}

// TestNodeIDAndDeploymentWarning: --node-id names the node in its logs and
// /readyz; a node on a shared database and Redis with artifacts on its own
// filesystem says once at start, and in /readyz, that this cannot work
// across machines.
func TestNodeIDAndDeploymentWarning(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	rs := redistest.Start(t)
	s := startServerArgs(t, t.TempDir(), "--node-id", "node-7", "--database-url", pgtest.DB(t), "--redis-url", rs.URL())
	res, err := http.Get(s.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Status, Node string
		Warnings     []string
	}
	json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if body.Node != "node-7" || len(body.Warnings) != 1 || !strings.Contains(body.Warnings[0], "RUNHUB_S3_") {
		t.Fatalf("/readyz: %d %+v", res.StatusCode, body)
	}
	logs := s.output()
	if !strings.Contains(logs, "node=node-7") || strings.Count(logs, "deployment: artifacts are kept on this node's filesystem") != 1 {
		t.Fatalf("logs lack the node id or the one deployment warning:\n%s", logs)
	}
}
