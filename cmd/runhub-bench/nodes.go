package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
)

// Bounds of the nodes scenario. nodesMax is the number of server lines of
// the balancer configuration (the README's, which names three nodes); the
// others keep a mistyped flag from exhausting the machine.
const (
	nodesMax           = 3
	nodesMaxSubs       = 20000
	nodesMaxRuns       = 1000
	nodesMaxPublishers = 256
	nodesMaxRate       = 10000
	nodesMaxSize       = 64 << 10
	nodesMaxTime       = 10 * time.Minute
)

// Timing of the nodes scenario.
const (
	// nodesConnectTimeout bounds the subscribers' first connections and
	// the balancer's start: hundreds of dials on a loaded 2-core machine
	// take seconds, not a minute.
	nodesConnectTimeout = time.Minute
	// nodesDrainTimeout is how long subscribers get, after the last
	// acknowledged append, to receive every event: a resuming client
	// catches up from the store in well under this.
	nodesDrainTimeout = 30 * time.Second
	// reconnectBackoffMin/Max: a client whose reconnection failed (the
	// balancer had no node for it, or sent it to the dead node before its
	// health check noticed) waits this long, doubling, before the next
	// try, as a real client does rather than spin.
	reconnectBackoffMin = 50 * time.Millisecond
	reconnectBackoffMax = time.Second
	// publishRetryDelay and publishRetryTimeout: a publisher retries an
	// append with the same Idempotency-Key on connection errors, 502, 503
	// and 504 (its node died under it) every publishRetryDelay, for at
	// most publishRetryTimeout, longer than a failover (two failed health
	// checks 500 ms apart, plus HAProxy's retries).
	publishRetryDelay   = 100 * time.Millisecond
	publishRetryTimeout = 30 * time.Second
	// nodeStopTimeout bounds a node's graceful stop at the end.
	nodeStopTimeout = 15 * time.Second
)

// nodesConfig is one run of the nodes scenario.
type nodesConfig struct {
	binary        string
	nodes         int
	databaseURL   string // an existing database; the scenario makes its own beside it
	redisURL      string // "" starts a redis-server
	haproxyConfig string
	transport     string // ws (/ws), stream (the run's WebSocket), sse, mix (a third each)
	subs, runs    int
	publishers    int
	size          int
	rate          float64 // appends/s offered in total
	duration      time.Duration
	kill          bool // kill -9 the last node halfway through
	serverArgs    []string
}

// nodesReport is what the scenario measured.
type nodesReport struct {
	Appends, Retried int64 // acknowledged appends; attempts retried with the same key
	Window           time.Duration
	Delivered        int64 // log events received by subscribers
	Latency          [4]time.Duration
	Lost, Dup, Extra int64   // Extra: seqs beyond the acknowledged appends (an append applied twice)
	Subscriptions    []int64 // per node, before any kill (the node's runhub_hub_subscriptions)
	Killed           string  // the killed node's id, "" without -kill
	Reconnects       int     // connections that ended while the scenario ran (and were made again)
	Dropped          int     // clients whose connection broke after the kill
	Resume           []time.Duration
	NotResumed       int
}

func nodesCmd(args []string) error {
	fs := flag.NewFlagSet("nodes", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), nodesUsage)
		fs.PrintDefaults()
	}
	c := nodesConfig{}
	fs.StringVar(&c.binary, "runhub", "bin/runhub", "runhub binary to start")
	fs.IntVar(&c.nodes, "n", 3, "runhub nodes behind the balancer (1..3)")
	fs.StringVar(&c.databaseURL, "database-url", os.Getenv("RUNHUB_DATABASE_URL"), "PostgreSQL URL of an existing database (required); the bench creates and drops a database of its own on that server")
	fs.StringVar(&c.redisURL, "redis-url", "", "Redis URL (empty: start a redis-server on a free port)")
	fs.StringVar(&c.haproxyConfig, "haproxy-config", "cmd/runhub/testdata/haproxy.cfg", "HAProxy configuration (RUNHUB_LB_ADDR, RUNHUB_NODE1..3)")
	fs.StringVar(&c.transport, "transport", "ws", "subscribers: ws (/ws), stream (the run's WebSocket), sse, or mix (a third each)")
	fs.IntVar(&c.subs, "subs", 600, "subscribers, spread over the runs")
	fs.IntVar(&c.runs, "runs", 20, "runs")
	fs.IntVar(&c.publishers, "publishers", 16, "concurrent publishers")
	fs.Float64Var(&c.rate, "rate", 200, "appends per second offered in total (one entry each)")
	fs.IntVar(&c.size, "size", 200, "bytes per entry")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "publishing time")
	serverArgs := fs.String("server-args", "", "extra flags for runhub serve, space-separated (after the bench's own, so they win)")
	fs.BoolVar(&c.kill, "kill", false, "kill -9 one node halfway through and measure its clients' resumption (needs -n 2 or more)")
	fs.Parse(args)
	c.serverArgs = strings.Fields(*serverArgs)
	if err := c.check(); err != nil {
		return err
	}
	ctx, cancel := withTimeout(c.duration + nodesConnectTimeout + nodesDrainTimeout)
	defer cancel()
	rep, err := runNodes(ctx, c, os.Stdout)
	if err != nil {
		return err
	}
	if rep.Lost != 0 || rep.Dup != 0 || rep.Extra != 0 || rep.NotResumed != 0 {
		return errors.New("delivery was not exactly once, or a client did not resume")
	}
	return nil
}

const nodesUsage = `runhub-bench nodes: N runhub nodes on one PostgreSQL and one Redis behind
HAProxy (the README's configuration); subscribers and publishers talk only to
the balancer, so they spread over the nodes. Publishers offer -rate appends/s
and retry with the same Idempotency-Key on connection errors, 502, 503 and
504; subscribers reconnect on any close or error and resume after their last
seq. It prints deliveries/s, delivery latency (append sent -> event received),
lost/duplicated counts (must be 0) and, with -kill, the time from a node's
kill -9 to each of its clients receiving its next event through another node.

Needs haproxy and a PostgreSQL server (make deps installs both). To start a
throwaway PostgreSQL as root (three nodes open up to 3 x 32 connections,
at the edge of the default max_connections of 100, hence 200):

  mkdir /tmp/pgb && chown postgres /tmp/pgb
  su postgres -c "/usr/lib/postgresql/15/bin/initdb -D /tmp/pgb/data"
  su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgb/data -o '-p 55432 -k /tmp/pgb -c listen_addresses=127.0.0.1 -c max_connections=200' -l /tmp/pgb/log start"
  bin/runhub-bench nodes -database-url postgres://postgres@127.0.0.1:55432/postgres?sslmode=disable
  su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgb/data stop"

Flags:
`

func (c *nodesConfig) check() error {
	switch {
	case c.databaseURL == "":
		return errors.New("-database-url is required (see runhub-bench nodes -h for starting a PostgreSQL)")
	case c.nodes < 1 || c.nodes > nodesMax:
		return fmt.Errorf("-n: 1..%d nodes (the balancer configuration names %d)", nodesMax, nodesMax)
	case c.kill && c.nodes < 2:
		return errors.New("-kill needs -n 2 or more: the killed node's clients need another node")
	case !slices.Contains([]string{"ws", "stream", "sse", "mix"}, c.transport):
		return fmt.Errorf("-transport: ws, stream, sse or mix, not %q", c.transport)
	case c.subs < 1 || c.subs > nodesMaxSubs || c.runs < 1 || c.runs > nodesMaxRuns || c.runs > c.subs ||
		c.publishers < 1 || c.publishers > nodesMaxPublishers || !(c.rate > 0 && c.rate <= nodesMaxRate) ||
		c.size < 1 || c.size > nodesMaxSize || c.duration <= 0 || c.duration > nodesMaxTime:
		return fmt.Errorf("bounds: 1..%d subs, 1..subs runs (at most %d), 1..%d publishers, rate in (0, %d], 1..%d bytes, duration at most %v",
			nodesMaxSubs, nodesMaxRuns, nodesMaxPublishers, nodesMaxRate, nodesMaxSize, nodesMaxTime)
	}
	return nil
}

// nodeSub is one subscriber of the nodes scenario.
type nodeSub struct {
	subscriber
	kind    string // ws, stream or sse
	run     int    // index of its run
	runID   string
	runPath string
	dropped time.Time // when its connection first broke since it last resumed
	ends    int       // connections that ended (owned by follow's goroutine; read after it ends)
	lastErr error     // why the last one ended
}

// runNodes starts the deployment, drives it and reports; everything it
// starts is stopped and waited for before it returns.
func runNodes(ctx context.Context, c nodesConfig, out io.Writer) (*nodesReport, error) {
	dir, err := os.MkdirTemp("", "runhub-bench-nodes")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	dbURL, dropDB, err := freshDatabase(ctx, c.databaseURL)
	if err != nil {
		return nil, err
	}
	defer dropDB()
	redisURL := c.redisURL
	if redisURL == "" {
		u, stop, err := startRedis(ctx, dir)
		if err != nil {
			return nil, err
		}
		defer stop()
		redisURL = u
	}

	// Nodes, one after another: the first bootstraps the store and writes
	// the key into its data directory.
	common := &commonFlags{binary: c.binary}
	nodes := make([]*server, 0, c.nodes)
	var nodesDone sync.WaitGroup
	defer func() {
		for _, n := range nodes {
			nodesDone.Add(1)
			go func() { defer nodesDone.Done(); n.stopWithin(nodeStopTimeout) }()
		}
		nodesDone.Wait()
	}()
	var key string
	for i := range c.nodes {
		ndir := filepath.Join(dir, fmt.Sprintf("n%d", i+1))
		if err := os.Mkdir(ndir, 0o700); err != nil {
			return nil, err
		}
		n, err := startNode(ctx, common, ndir, i == 0, append([]string{"--node-id", fmt.Sprintf("n%d", i+1),
			"--database-url", dbURL, "--redis-url", redisURL}, c.serverArgs...)...)
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i+1, err)
		}
		nodes = append(nodes, n)
		if i == 0 {
			key = n.key
		}
	}
	lbBase, stopLB, err := startBalancer(ctx, c.haproxyConfig, nodes)
	if err != nil {
		return nil, err
	}
	defer stopLB()
	lb := &server{base: lbBase, key: key, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}}
	defer lb.client.CloseIdleConnections()

	runPaths := make([]string, c.runs)
	for i := range runPaths {
		if runPaths[i], err = lb.newRun(ctx); err != nil {
			return nil, err
		}
	}

	// Subscribers: each follows one run, through the balancer, and comes
	// back after any close or error.
	kinds := []string{c.transport}
	if c.transport == "mix" {
		kinds = []string{"ws", "stream", "sse"}
	}
	ss := make([]*nodeSub, c.subs)
	subCtx, stopSubs := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopSubs(); wg.Wait() }()
	var connected atomic.Int64
	for i := range ss {
		p := runPaths[i%c.runs]
		s := &nodeSub{subscriber: subscriber{next: 1}, kind: kinds[i%len(kinds)], run: i % c.runs, runID: path.Base(p), runPath: p}
		ss[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.follow(subCtx, lb, &connected)
		}()
	}
	for deadline := time.Now().Add(nodesConnectTimeout); connected.Load() < int64(c.subs); {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d subscribers connected in %v", connected.Load(), c.subs, nodesConnectTimeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	rep := &nodesReport{}
	for _, n := range nodes {
		rep.Subscriptions = append(rep.Subscriptions, metricValue(n, "runhub_hub_subscriptions"))
	}
	kill := "no kill"
	if c.kill {
		kill = fmt.Sprintf("kill -9 of n%d at %v", c.nodes, c.duration/2)
	}
	fmt.Fprintf(out, "nodes: %d behind haproxy; %d %s subscribers on %d runs (subscriptions per node %v); %d publishers offering %v appends/s of %d bytes for %v; %s\n",
		c.nodes, c.subs, c.transport, c.runs, rep.Subscriptions, c.publishers, c.rate, c.size, c.duration, kill)

	// Publishers, at the offered rate, run k%runs for the k-th append.
	pad := strings.Repeat("x", max(0, c.size-70))
	acked := make([]atomic.Int64, c.runs)
	var next, retried atomic.Int64
	pubErr := make([]error, c.publishers)
	start := time.Now()
	pubCtx, stopPub := context.WithTimeout(ctx, c.duration)
	defer stopPub()
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.rate))
	defer tick.Stop()
	var pwg sync.WaitGroup
	for p := range c.publishers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for {
				select {
				case <-tick.C:
				case <-pubCtx.Done():
					return
				}
				k := next.Add(1) - 1
				r := k % int64(c.runs)
				body := fmt.Sprintf(`{"entries":[{"type":"bench","t":%d,"pad":%q}]}`, time.Now().UnixNano(), pad)
				// A request started in the window runs to its answer (ctx,
				// not pubCtx), so that every append is acknowledged or
				// reported.
				if err := publish(ctx, lb, runPaths[r]+"/append_log/", body, fmt.Sprintf("bench-%d", k), &retried); err != nil {
					pubErr[p] = err
					stopPub()
					return
				}
				acked[r].Add(1)
			}
		}()
	}
	var killAt time.Time
	if c.kill {
		select {
		case <-time.After(c.duration / 2):
		case <-pubCtx.Done():
		}
		victim := nodes[len(nodes)-1]
		killAt = time.Now()
		victim.cmd.Process.Signal(syscall.SIGKILL)
		victim.cmd.Wait()
		victim.dead = true
		rep.Killed = fmt.Sprintf("n%d", c.nodes)
	}
	pwg.Wait()
	rep.Window = time.Since(start)
	if err := errors.Join(pubErr...); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}

	// Drain: every subscriber reaches its run's last seq (seq 1 is the
	// run's creation, then one per acknowledged append).
	last := func(s *nodeSub) int64 { return 1 + acked[s.run].Load() }
	for deadline := time.Now().Add(nodesDrainTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		behind := 0
		for _, s := range ss {
			s.mu.Lock()
			if s.next <= last(s) {
				behind++
			}
			s.mu.Unlock()
		}
		if behind == 0 {
			break
		}
	}
	stopSubs()
	wg.Wait()

	var lat []uint32
	var lastErr error // one reason a connection ended, for the report
	for r := range acked {
		rep.Appends += acked[r].Load()
	}
	rep.Retried = retried.Load()
	for _, s := range ss {
		l := last(s)
		rep.Delivered += s.delivered
		rep.Lost += s.lost + max(0, l-(s.next-1))
		rep.Extra += max(0, s.next-1-l)
		rep.Dup += s.dup
		lat = append(lat, s.lat...)
		rep.Reconnects += s.ends
		if s.lastErr != nil && lastErr == nil {
			lastErr = s.lastErr
		}
		if c.kill && !s.dropped.IsZero() && s.dropped.After(killAt) {
			rep.Dropped++
			if s.resumed.After(s.dropped) {
				rep.Resume = append(rep.Resume, s.resumed.Sub(killAt))
			} else {
				rep.NotResumed++
			}
		}
	}
	slices.Sort(lat)
	slices.Sort(rep.Resume)
	for i, p := range []float64{.50, .95, .99, 1} {
		if len(lat) > 0 {
			rep.Latency[i] = time.Duration(lat[min(len(lat)-1, int(p*float64(len(lat))))]) * time.Microsecond
		}
	}
	fmt.Fprintf(out, "appends: %d acknowledged (%.0f/s), %d attempts retried with the same key\n", rep.Appends, float64(rep.Appends)/rep.Window.Seconds(), rep.Retried)
	fmt.Fprintf(out, "deliveries: %d (%.0f/s)\n", rep.Delivered, float64(rep.Delivered)/rep.Window.Seconds())
	fmt.Fprintf(out, "latency: p50 %v  p95 %v  p99 %v  max %v\n", rep.Latency[0], rep.Latency[1], rep.Latency[2], rep.Latency[3])
	fmt.Fprintf(out, "reconnections: %d", rep.Reconnects)
	if lastErr != nil {
		fmt.Fprintf(out, " (one ended with: %v)", lastErr)
	}
	fmt.Fprintln(out)
	if c.kill {
		pct := func(p float64) time.Duration {
			if len(rep.Resume) == 0 {
				return 0
			}
			return rep.Resume[min(len(rep.Resume)-1, int(p*float64(len(rep.Resume))))].Round(time.Millisecond)
		}
		fmt.Fprintf(out, "kill -9 %s (%d subscriptions): %d clients dropped; kill -> resumed (reconnected and next event in order): p50 %v  p99 %v  max %v; not resumed: %d\n",
			rep.Killed, rep.Subscriptions[len(rep.Subscriptions)-1], rep.Dropped, pct(.50), pct(.99), pct(1), rep.NotResumed)
	}
	fmt.Fprintf(out, "lost: %d  duplicated: %d  extra: %d\n", rep.Lost, rep.Dup, rep.Extra)
	for i, n := range nodes {
		if !n.dead {
			fmt.Fprintf(out, "node n%d: gap reads %d, resyncs %d, slow consumers %d\n", i+1,
				metricValue(n, "runhub_hub_gap_reads_total"), metricValue(n, "runhub_hub_resyncs_total"),
				metricValue(n, "runhub_hub_slow_consumers_total"))
		}
	}
	if rep.Lost != 0 || rep.Extra != 0 {
		// Where: per run, the subscribers that ended elsewhere than its
		// last seq (gaps inside a stream count as lost too).
		for r, p := range runPaths {
			var off []string
			for _, s := range ss {
				if s.run == r && (s.next-1 != last(s) || s.lost != 0) {
					off = append(off, fmt.Sprintf("%s at %d (gaps %d)", s.kind, s.next-1, s.lost))
				}
			}
			if len(off) > 0 {
				fmt.Fprintf(out, "  run %s, last seq %d, %s: %s\n", path.Base(p), 1+acked[r].Load(), storedCount(ctx, lb, p), strings.Join(off, ", "))
			}
		}
	}
	return rep, nil
}

// follow keeps the subscriber connected until ctx ends: after a close or
// an error it reconnects (with jitter, then backoff while reconnecting
// fails) and resumes after its last seq.
func (s *nodeSub) follow(ctx context.Context, lb *server, connected *atomic.Int64) {
	backoff := reconnectBackoffMin
	for first := true; ; first = false {
		up := false
		onUp := func() {
			up = true
			if first {
				connected.Add(1)
			}
		}
		var err error
		switch s.kind {
		case "ws":
			err = s.followMux(ctx, lb, onUp)
		case "stream":
			err = s.followStream(ctx, lb, onUp)
		default:
			err = s.followEvents(ctx, lb, onUp)
		}
		if ctx.Err() != nil {
			return
		}
		// Every end is a reason to come back; the tally says whether
		// anything was missed.
		s.ends, s.lastErr = s.ends+1, err
		s.mu.Lock()
		if !s.awaiting {
			s.awaiting, s.dropped = true, time.Now()
		}
		s.mu.Unlock()
		delay := rand.N(restartJitter) + time.Millisecond
		if up {
			backoff = reconnectBackoffMin
		} else {
			delay, backoff = backoff, min(2*backoff, reconnectBackoffMax)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// after is the last seq the subscriber has (0: none yet).
func (s *nodeSub) after() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next - 1
}

// followMux subscribes over /ws from the seq after its last.
func (s *nodeSub) followMux(ctx context.Context, lb *server, onUp func()) error {
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(lb.base, "http")+"/ws", &websocket.DialOptions{HTTPHeader: authHeader(lb)})
	if err != nil {
		return err
	}
	defer c.CloseNow()
	c.SetReadLimit(-1)
	defer context.AfterFunc(ctx, func() { c.CloseNow() })()
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "subscribe",
		"params": map[string]any{"run_id": s.runID, "after": s.after()}})
	if err := c.Write(ctx, websocket.MessageText, req); err != nil {
		return err
	}
	return s.read(c, onUp, true)
}

// followStream follows the run's own WebSocket from the seq after its last.
func (s *nodeSub) followStream(ctx context.Context, lb *server, onUp func()) error {
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(lb.base, "http")+s.runPath+"/stream?after="+strconv.FormatInt(s.after(), 10),
		&websocket.DialOptions{HTTPHeader: authHeader(lb)})
	if err != nil {
		return err
	}
	defer c.CloseNow()
	c.SetReadLimit(-1)
	defer context.AfterFunc(ctx, func() { c.CloseNow() })()
	onUp()
	return s.read(c, onUp, false)
}

// read records the connection's events until it ends. On /ws the
// subscribe reply comes first: an error there ends the connection, a
// result means the subscriber is up.
func (s *nodeSub) read(c *websocket.Conn, onUp func(), mux bool) error {
	var buf bytes.Buffer
	for {
		_, r, err := c.Reader(context.Background())
		if err != nil {
			return err
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return err
		}
		if mux {
			if err := s.muxMessage(buf.Bytes(), time.Now(), onUp); err != nil {
				return err
			}
			continue
		}
		observeMessage(&s.subscriber, buf.Bytes(), time.Now())
	}
}

// muxMessage takes one /ws message: notifications (one object, or a
// JSON-RPC batch, an array of them, which the server sends when several
// events are queued at once) or the subscribe reply, which comes alone.
func (s *nodeSub) muxMessage(b []byte, now time.Time, onUp func()) error {
	if bytes.Contains(b, notifMarker) {
		observeMessage(&s.subscriber, b, now)
		return nil
	}
	var reply struct {
		Result json.RawMessage
		Error  *struct{ Message string }
	}
	if err := json.Unmarshal(b, &reply); err != nil {
		return fmt.Errorf("/ws reply: %w", err)
	}
	if reply.Error != nil {
		return fmt.Errorf("subscribe: %s", reply.Error.Message)
	}
	if reply.Result == nil {
		return fmt.Errorf("/ws: unexpected message %.100s", b)
	}
	onUp()
	return nil
}

// followEvents follows the run's SSE stream from the seq after its last.
func (s *nodeSub) followEvents(ctx context.Context, lb *server, onUp func()) error {
	req, err := http.NewRequestWithContext(ctx, "GET", lb.base+s.runPath+"/stream?after="+strconv.FormatInt(s.after(), 10), nil)
	if err != nil {
		return err
	}
	req.Header = authHeader(lb)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stream: %d", resp.StatusCode)
	}
	onUp()
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	var seq int64
	for {
		line, err := rd.ReadSlice('\n')
		if err != nil {
			return err
		}
		switch {
		case bytes.HasPrefix(line, []byte("id: ")):
			seq, _ = strconv.ParseInt(string(bytes.TrimSpace(line[4:])), 10, 64)
		case bytes.HasPrefix(line, []byte("data: ")) && seq > 0:
			now := time.Now()
			s.mu.Lock()
			s.observe(seq, intAfter(line, `"t":`), now)
			s.mu.Unlock()
			seq = 0
		}
	}
}

// publish appends through the balancer, as a real client does: on a
// connection error, 502, 503 or 504 it sends the same request again with
// the same Idempotency-Key (the node may have applied it before dying),
// every publishRetryDelay for at most publishRetryTimeout.
func publish(ctx context.Context, lb *server, path, body, key string, retried *atomic.Int64) error {
	deadline := time.Now().Add(publishRetryTimeout)
	for {
		req, err := http.NewRequestWithContext(ctx, "POST", lb.base+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+lb.key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := lb.client.Do(req)
		status := 0
		if err == nil {
			status = resp.StatusCode
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			resp.Body.Close()
			switch {
			case status < 300:
				return nil
			case status != http.StatusBadGateway && status != http.StatusServiceUnavailable && status != http.StatusGatewayTimeout:
				return fmt.Errorf("POST %s: %d %s", path, status, b)
			}
			err = fmt.Errorf("POST %s: %d %s", path, status, b)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v: %w", publishRetryTimeout, err)
		}
		retried.Add(1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(publishRetryDelay):
		}
	}
}

// startNode starts one node; the first (withKey) bootstraps the store and
// its data directory holds the key, the others only need to answer.
func startNode(ctx context.Context, c *commonFlags, dir string, withKey bool, extra ...string) (*server, error) {
	if withKey {
		return startServerIn(ctx, c, dir, extra...)
	}
	addr, err := freeLoopback()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, c.binary, append([]string{"serve", "--addr", addr, "--data-dir", dir, "--log-level", "warn"}, extra...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (build it with make build)", c.binary, err)
	}
	s := &server{cmd: cmd, base: "http://" + addr, dataDir: dir,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(s.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stopWithin(nodeStopTimeout)
			return nil, errors.New("server did not become ready")
		}
	}
}

// stopWithin stops a node gracefully (SIGTERM: it drains) and kills it
// after d; a node that was killed is only waited for already.
func (s *server) stopWithin(d time.Duration) {
	if !s.dead {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(d):
			s.cmd.Process.Kill()
			<-done
		}
	}
	os.RemoveAll(s.dataDir)
}

// startBalancer runs HAProxy in the foreground with the configuration at
// cfg in front of nodes (with fewer than three, the server lines repeat
// them: with one node all three point at it) on a free loopback port.
func startBalancer(ctx context.Context, cfg string, nodes []*server) (string, func(), error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return "", nil, errors.New("haproxy not found (make deps installs it)")
	}
	if _, err := os.Stat(cfg); err != nil {
		return "", nil, fmt.Errorf("-haproxy-config: %w", err)
	}
	addr, err := freeLoopback()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", cfg)
	cmd.Env = append(os.Environ(), "RUNHUB_LB_ADDR="+addr)
	for i := range nodesMax {
		cmd.Env = append(cmd.Env, fmt.Sprintf("RUNHUB_NODE%d=%s", i+1, strings.TrimPrefix(nodes[i%len(nodes)].base, "http://")))
	}
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	base := "http://" + addr
	for deadline := time.Now().Add(nodesConnectTimeout); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, stop, nil
			}
		}
	}
	stop()
	return "", nil, fmt.Errorf("haproxy did not start:\n%s", logs.String())
}

// lockedBuffer collects a child's output, written by the exec package's
// copying goroutine and read on failure.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freshDatabase creates a database of the scenario's own on the server of
// admin (a URL of any existing database there), so that every run starts
// from an empty store that its first node bootstraps; drop removes it.
func freshDatabase(ctx context.Context, admin string) (string, func(), error) {
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", nil, fmt.Errorf("-database-url: want postgres://..., got %q", admin)
	}
	run := func(ctx context.Context, sql string) error {
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", u.Redacted(), err)
		}
		defer c.Close(context.WithoutCancel(ctx))
		if _, err := c.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		return nil
	}
	name := fmt.Sprintf("runhub_bench_%d_%d", os.Getpid(), rand.N(1_000_000_000))
	if err := run(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, err
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE: a killed node's connections may linger on the server.
		if err := run(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			fmt.Fprintln(os.Stderr, "runhub-bench:", err)
		}
	}
	own := *u
	own.Path = "/" + name
	return own.String(), drop, nil
}

// storedCount says how many log entries the store holds for the run (the
// X-Total-Count of session_logs), to tell a lost delivery from a lost write.
func storedCount(ctx context.Context, lb *server, runPath string) string {
	req, err := http.NewRequestWithContext(ctx, "GET", lb.base+runPath+"/session_logs?limit=1", nil)
	if err != nil {
		return err.Error()
	}
	req.Header = authHeader(lb)
	resp, err := lb.client.Do(req)
	if err != nil {
		return err.Error()
	}
	resp.Body.Close()
	return "stored entries " + resp.Header.Get("X-Total-Count")
}
