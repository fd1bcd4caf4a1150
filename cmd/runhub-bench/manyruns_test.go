package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/store/postgres/pgtest"
)

// TestManyRunsScenario runs many-runs tiny through each publishing path
// against a real server, on SQLite and on PostgreSQL (the paths one after
// another on one -database-url, as -path all runs them): every accepted
// append reaches every subscriber of its run exactly once.
func TestManyRunsScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "runhub")
	if out, err := exec.Command("go", "build", "-o", bin, "../runhub").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var databaseURL string
			if backend == "postgres" {
				databaseURL = pgtest.DB(t)
			}
			for _, p := range manyPaths {
				t.Run(p, func(t *testing.T) { manyRunsTiny(t, bin, p, databaseURL) })
			}
		})
	}
}

func manyRunsTiny(t *testing.T, bin, path, databaseURL string) {
	// 20 lines per run: the ingest path ends an upload and opens the next
	// every 7 lines.
	c := manyConfig{binary: bin, path: path, runs: 20, subs: 2, rate: 200, size: 200, duration: 2 * time.Second, publishers: 16,
		uploadEvents: 7, databaseURL: databaseURL}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out strings.Builder
	rep, err := runMany(ctx, c, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Accepted == 0 || rep.Accepted != rep.Offered-rep.Behind-rep.Failed || rep.Failed != 0 {
		t.Errorf("offered %d, behind %d, accepted %d, failed %d", rep.Offered, rep.Behind, rep.Accepted, rep.Failed)
	}
	if rep.Delivered != rep.Accepted*int64(c.subs) {
		t.Errorf("%d accepted, %d delivered to %d subscribers per run", rep.Accepted, rep.Delivered, c.subs)
	}
	if rep.Lost != 0 || rep.Dup != 0 || rep.Extra != 0 {
		t.Errorf("lost %d, duplicated %d, extra %d, want 0", rep.Lost, rep.Dup, rep.Extra)
	}
	if rep.ServerCPU <= 0 || rep.Latency[0] <= 0 {
		t.Errorf("server CPU %v, latency p50 %v", rep.ServerCPU, rep.Latency[0])
	}
}

// TestManyRunsBounds: each bound of the scenario's flags is enforced
// before anything starts.
func TestManyRunsBounds(t *testing.T) {
	ok := manyConfig{path: "rest", runs: 2000, subs: 3, rate: 10000, size: 200, duration: 20 * time.Second, publishers: 256}
	if err := ok.check(); err != nil {
		t.Fatalf("the default configuration: %v", err)
	}
	for name, mod := range map[string]func(*manyConfig){
		"path":       func(c *manyConfig) { c.path = "pigeon" },
		"runs":       func(c *manyConfig) { c.runs = manyMaxRuns + 1 },
		"no runs":    func(c *manyConfig) { c.runs = 0 },
		"subs":       func(c *manyConfig) { c.subs = manyMaxSubs + 1 },
		"conns":      func(c *manyConfig) { c.runs, c.subs = manyMaxRuns, manyMaxSubs },
		"rate zero":  func(c *manyConfig) { c.rate = 0 },
		"rate":       func(c *manyConfig) { c.rate = manyMaxRate + 1 },
		"size":       func(c *manyConfig) { c.size = manyMaxSize + 1 },
		"small size": func(c *manyConfig) { c.size = 99 },
		"duration":   func(c *manyConfig) { c.duration = manyMaxTime + time.Second },
		"publishers": func(c *manyConfig) { c.publishers = manyMaxPublishers + 1 },
	} {
		c := ok
		mod(&c)
		if err := c.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestLatencyBeyondFourSeconds: a latency above 2³² ns (4.3 s) is recorded
// as it is (it was capped there, hiding how far a path fell behind).
func TestLatencyBeyondFourSeconds(t *testing.T) {
	s := &subscriber{next: 1}
	now := time.Now()
	s.observe(1, now.Add(-10*time.Second).UnixNano(), now)
	if len(s.lat) != 1 || s.lat[0] != uint32(10*time.Second/time.Microsecond) {
		t.Fatalf("latencies %v µs, want [10000000]", s.lat)
	}
}
