package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/store/blob/s3test"
	"runhub/store/postgres/pgtest"
)

// haproxyConfig is the balancer configuration of the README's deployment
// guide; the multi-node test starts HAProxy with this very file.
const haproxyConfig = "testdata/haproxy.cfg"

// TestReadmeShowsTheBalancerConfig: the guide cannot rot, since the
// README must show the tested file verbatim.
func TestReadmeShowsTheBalancerConfig(t *testing.T) {
	cfg, err := os.ReadFile(haproxyConfig)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, cfg) {
		t.Fatalf("README.md does not show %s verbatim", haproxyConfig)
	}
}

// startHAProxy runs HAProxy in the foreground with the guide's
// configuration in front of nodes, on a free loopback port.
func startHAProxy(t *testing.T, nodes ...*server) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatal("haproxy not installed (make deps)")
		}
		t.Skip("haproxy not installed (make deps)")
	}
	addr := freeAddr(t)
	cmd := exec.Command(bin, "-db", "-f", haproxyConfig)
	cmd.Env = append(os.Environ(), "RUNHUB_LB_ADDR="+addr)
	for i := range 3 {
		target := nodes[i%len(nodes)].base[len("http://"):]
		cmd.Env = append(cmd.Env, fmt.Sprintf("RUNHUB_NODE%d=%s", i+1, target))
	}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return waitBalancer(t, "http://"+addr, &logs)
}

// TestThreeNodesBehindHAProxy: three nodes on one PostgreSQL and one Redis
// behind HAProxy with the guide's configuration are one system to a
// client that only knows the balancer: requests spread over the nodes, an
// SSE stream opened through it gets what is appended through it, an
// artifact uploaded through one node is presigned through another (one S3
// bucket, versitygw), and when a node is killed (-9) the health check
// takes it out and every request keeps succeeding.
func TestThreeNodesBehindHAProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	url, rs := pgtest.DB(t), redistest.Start(t)
	useOneBucket(t)
	var nodes []*server
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	for i, dir := range dirs {
		nodes = append(nodes, startServerArgs(t, dir, "--node-id", fmt.Sprintf("n%d", i+1),
			"--database-url", url, "--redis-url", rs.URL()))
	}
	key := readKey(t, dirs[0])
	lb := startHAProxy(t, nodes...)

	// Requests spread over the nodes, none of which has a deployment
	// warning (the artifacts are in the shared bucket).
	seen := map[string]bool{}
	for range 30 {
		var body struct {
			Node     string
			Warnings []string
		}
		if st, err := do(context.Background(), "", "GET", lb+"/readyz", nil, &body); err != nil || st != 200 || len(body.Warnings) > 0 {
			t.Fatalf("/readyz through the balancer: %d %v %v", st, err, body.Warnings)
		}
		seen[body.Node] = true
	}
	if len(seen) < 2 {
		t.Fatalf("30 requests reached nodes %v, want at least 2", seen)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var task, run struct{ ID string }
	if st, err := do(ctx, key, "POST", lb+"/api/projects/1/tasks/", map[string]any{"title": "lb"}, &task); err != nil || st != 201 {
		t.Fatalf("task: %d %v", st, err)
	}
	runs := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if st, err := do(ctx, key, "POST", lb+runs, map[string]any{"status": "in_progress"}, &run); err != nil || st != 201 {
		t.Fatalf("run: %d %v", st, err)
	}
	// An SSE stream through the balancer gets appends made through it (on
	// whichever nodes they land): no buffering on the way.
	ids := sseIDs(ctx, t, lb+runs+run.ID+"/stream?start=latest", key)
	for i := range 5 {
		body := map[string]any{"entries": []map[string]any{{"type": "console", "n": i}}}
		if st, err := do(ctx, key, "POST", lb+runs+run.ID+"/append_log/", body, nil); err != nil || st != 200 {
			t.Fatalf("append %d: %d %v", i, st, err)
		}
		select {
		case id := <-ids:
			if id != fmt.Sprint(i+2) { // seq 1 is the run's creation
				t.Fatalf("append %d arrived as seq %s", i, id)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("append %d did not arrive on the stream through the balancer", i)
		}
	}

	// An artifact uploaded through one node is presigned through another
	// and downloads from the bucket.
	var arts struct {
		Artifacts []struct {
			StoragePath string `json:"storage_path"`
		}
	}
	if st, err := do(ctx, key, "POST", nodes[0].base+runs+run.ID+"/artifacts/", map[string]any{"artifacts": []map[string]any{
		{"name": "plan.md", "type": "plan", "content": "# shared plan\n"}}}, &arts); err != nil || st != 200 {
		t.Fatalf("upload on n1: %d %v", st, err)
	}
	var link struct{ URL string }
	if st, err := do(ctx, key, "POST", nodes[2].base+runs+run.ID+"/artifacts/presign/", map[string]any{"storage_path": arts.Artifacts[0].StoragePath}, &link); err != nil || st != 200 {
		t.Fatalf("presign on n3: %d %v", st, err)
	}
	dl, err := http.Get(link.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(dl.Body)
	dl.Body.Close()
	if dl.StatusCode != 200 || string(got) != "# shared plan\n" {
		t.Fatalf("download of n3's link to n1's upload: %d %q", dl.StatusCode, got)
	}

	// Redis goes down for every node: each /readyz says so, yet writes
	// through the balancer keep succeeding (the alive backend serves when
	// no node is ready); when Redis is back the nodes are ready again.
	rs.Stop()
	for _, n := range nodes {
		waitReady(t, n.base, http.StatusServiceUnavailable, "broker")
	}
	time.Sleep(1500 * time.Millisecond) // the balancer's checks see it too
	for i := range 5 {
		body := map[string]any{"entries": []map[string]any{{"type": "console", "redis": "down", "n": i}}}
		if st, err := do(ctx, key, "POST", lb+runs+run.ID+"/append_log/", body, nil); err != nil || st != 200 {
			t.Fatalf("append %d through the balancer while Redis is down: %d %v", i, st, err)
		}
	}
	rs.Restart()
	for _, n := range nodes {
		waitReady(t, n.base, http.StatusOK, "")
	}

	// A node dies: the health check takes it out, requests keep working.
	nodes[1].cmd.Process.Signal(syscall.SIGKILL)
	nodes[1].cmd.Wait()
	time.Sleep(1500 * time.Millisecond) // two failed checks, 500 ms apart
	for i := range 30 {
		var body struct{ Node string }
		if st, err := do(ctx, key, "GET", lb+"/readyz", nil, &body); err != nil || st != 200 || body.Node == "n2" {
			t.Fatalf("request %d after the kill: %d %v (node %q)", i, st, err, body.Node)
		}
		if st, err := do(ctx, key, "GET", lb+runs+run.ID+"/", nil, nil); err != nil || st != 200 {
			t.Fatalf("read %d after the kill: %d %v", i, st, err)
		}
	}
}

// waitReady waits (up to 15 s) until the node's /readyz answers status
// (and, for a 503, reason).
func waitReady(t *testing.T, base string, status int, reason string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var body struct{ Reason string }
		res, err := http.Get(base + "/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode == status && body.Reason == reason {
			return
		}
		last = fmt.Sprintf("%d %q", res.StatusCode, body.Reason)
	}
	t.Fatalf("%s/readyz: %s, want %d %q", base, last, status, reason)
}

// useOneBucket starts an S3 server (versitygw) and has every node started
// after it keep its artifacts in one bucket there: the nodes inherit the
// test's environment.
func useOneBucket(t *testing.T) {
	t.Helper()
	s3 := s3test.Start(t)
	for k, v := range map[string]string{"RUNHUB_S3_ENDPOINT": s3.Endpoint, "RUNHUB_S3_BUCKET": s3.Bucket, "RUNHUB_S3_REGION": s3.Region,
		"RUNHUB_S3_PATH_STYLE": "true", "RUNHUB_S3_ACCESS_KEY": s3.AccessKey, "RUNHUB_S3_SECRET_KEY": s3.SecretKey} {
		t.Setenv(k, v)
	}
}

// waitBalancer waits (up to 10 s) until the balancer at base answers
// /readyz with 200; logs is its output, shown if it does not.
func waitBalancer(t *testing.T, base string, logs *bytes.Buffer) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if res, err := http.Get(base + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return base
			}
		}
	}
	t.Fatalf("the balancer did not start:\n%s", logs.String())
	return ""
}

// sseIDs opens an SSE stream of url and sends the id of each event it
// gets, until ctx ends or the stream does.
func sseIDs(ctx context.Context, t *testing.T, url, key string) <-chan string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("SSE %s: %v %v", url, res, err)
	}
	t.Cleanup(func() { res.Body.Close() })
	ids := make(chan string, 64)
	go func() {
		defer close(ids)
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
				select {
				case ids <- id:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ids
}
