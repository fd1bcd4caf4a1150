package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/hub/redis/redistest"
	"runhub/store/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// tinyNodes is a nodes run small enough for a test: two nodes, a second.
func tinyNodes() nodesConfig {
	return nodesConfig{binary: "runhub", nodes: 2, databaseURL: "postgres://x@127.0.0.1/x", haproxyConfig: "../runhub/testdata/haproxy.cfg",
		transport: "mix", subs: 24, runs: 4, publishers: 4, rate: 60, size: 200, duration: time.Second}
}

// TestNodesScenario runs the nodes scenario tiny against real servers
// (PostgreSQL, Redis, HAProxy, two runhub processes), killing one node
// halfway: events are delivered, through both nodes, exactly once, and
// every client of the killed node resumes through the other.
func TestNodesScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatal("haproxy not installed and RUNHUB_REQUIRE_SERVERS=1 (make deps)")
		}
		t.Skip("haproxy not installed (make deps)")
	}
	c := tinyNodes()
	c.databaseURL, c.redisURL = pgtest.DB(t), redistest.Start(t).URL()
	c.kill = true
	c.binary = filepath.Join(t.TempDir(), "runhub")
	if out, err := exec.Command("go", "build", "-o", c.binary, "../runhub").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out strings.Builder
	rep, err := runNodes(ctx, c, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	// Seq 1 of each run is its creation; every subscriber gets every append.
	if rep.Appends == 0 || rep.Delivered != rep.Appends*int64(c.subs/c.runs) {
		t.Errorf("%d appends acknowledged, %d delivered to %d subscribers on %d runs", rep.Appends, rep.Delivered, c.subs, c.runs)
	}
	if rep.Lost != 0 || rep.Dup != 0 || rep.Extra != 0 {
		t.Errorf("lost %d, duplicated %d, extra %d, want 0", rep.Lost, rep.Dup, rep.Extra)
	}
	if len(rep.Subscriptions) != 2 || rep.Subscriptions[0] < 1 || rep.Subscriptions[1] < 1 {
		t.Errorf("subscriptions per node %v: the balancer did not spread them", rep.Subscriptions)
	}
	// The killed node's clients all broke off and all came back.
	if rep.Killed != "n2" || int64(rep.Dropped) != rep.Subscriptions[1] || rep.NotResumed != 0 || len(rep.Resume) != rep.Dropped {
		t.Errorf("killed %q with %v subscriptions: %d dropped, %d resumed, %d not", rep.Killed, rep.Subscriptions, rep.Dropped, len(rep.Resume), rep.NotResumed)
	}
	for _, d := range rep.Resume {
		if d <= 0 || d > nodesDrainTimeout {
			t.Errorf("resume time %v", d)
		}
	}
	// Everything it started is gone: the data directories with the nodes.
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), "runhub-bench-nodes*")); len(m) > 0 {
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.ModTime().After(time.Now().Add(-2*time.Minute)) {
				t.Errorf("left behind: %s", d)
			}
		}
	}
}

// TestNodesBounds: each bound of the scenario's flags is enforced before
// anything starts.
func TestNodesBounds(t *testing.T) {
	if err := func() error { c := tinyNodes(); return c.check() }(); err != nil {
		t.Fatalf("a valid configuration: %v", err)
	}
	for name, mod := range map[string]func(*nodesConfig){
		"no database":       func(c *nodesConfig) { c.databaseURL = "" },
		"no nodes":          func(c *nodesConfig) { c.nodes = 0 },
		"more than nodeMax": func(c *nodesConfig) { c.nodes = nodesMax + 1 },
		"kill one node":     func(c *nodesConfig) { c.nodes, c.kill = 1, true },
		"transport":         func(c *nodesConfig) { c.transport = "carrier-pigeon" },
		"subs":              func(c *nodesConfig) { c.subs = nodesMaxSubs + 1 },
		"runs":              func(c *nodesConfig) { c.runs = nodesMaxRuns + 1; c.subs = nodesMaxRuns + 1 },
		"runs over subs":    func(c *nodesConfig) { c.runs = c.subs + 1 },
		"publishers":        func(c *nodesConfig) { c.publishers = nodesMaxPublishers + 1 },
		"rate zero":         func(c *nodesConfig) { c.rate = 0 },
		"rate":              func(c *nodesConfig) { c.rate = nodesMaxRate + 1 },
		"size":              func(c *nodesConfig) { c.size = nodesMaxSize + 1 },
		"duration":          func(c *nodesConfig) { c.duration = nodesMaxTime + time.Second },
	} {
		c := tinyNodes()
		mod(&c)
		if err := c.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A URL that is not PostgreSQL's is refused before anything starts.
	if _, err := runNodes(context.Background(), nodesConfig{databaseURL: "mysql://x"}, io.Discard); err == nil || !strings.Contains(err.Error(), "postgres://") {
		t.Errorf("mysql URL: %v", err)
	}
}

// TestMuxMessages: a /ws subscriber takes the subscribe reply, single
// notifications and the JSON-RPC batches (arrays) the server sends when
// several events are queued at once; an error reply ends the connection.
// (Taking a batch for a malformed reply made subscribers reconnect for
// ever under load, stuck at the seq before the batch.)
func TestMuxMessages(t *testing.T) {
	s := &nodeSub{subscriber: subscriber{next: 1}}
	up := 0
	now := time.Now()
	for _, m := range []string{
		`{"jsonrpc":"2.0","id":1,"result":{"run_id":"r","last_seq":0}}`,
		`{"jsonrpc":"2.0","method":"event","params":{"run_id":"r","seq":1,"event":{"type":"task_run_state"}}}`,
		`[{"jsonrpc":"2.0","method":"event","params":{"run_id":"r","seq":2,"event":{"type":"bench","t":1}}},` +
			`{"jsonrpc":"2.0","method":"event","params":{"run_id":"r","seq":3,"event":{"type":"bench","t":2}}}]`,
	} {
		if err := s.muxMessage([]byte(m), now, func() { up++ }); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
	}
	if up != 1 || s.next != 4 || s.delivered != 2 || s.lost != 0 || s.dup != 0 {
		t.Fatalf("up %d, next %d, delivered %d, lost %d, dup %d", up, s.next, s.delivered, s.lost, s.dup)
	}
	for _, m := range []string{
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"run not found"}}`,
		`{"jsonrpc":"2.0","id":1}`,
		`not json`,
	} {
		if err := s.muxMessage([]byte(m), now, func() { up++ }); err == nil {
			t.Errorf("%s: accepted", m)
		}
	}
}
