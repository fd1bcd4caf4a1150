package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"runhub/proxy/agentclient"
)

// Bounds of the many-runs scenario: the shape (2,000 runs × 3
// subscribers, 10,000 appends/s) fits with room; beyond them a mistyped
// flag would exhaust the machine's connections (every subscriber, agent and
// upload is a TCP connection on both sides of the loopback).
const (
	manyMaxRuns       = 10_000
	manyMaxSubs       = 10 // per run
	manyMaxConns      = 30_000
	manyMaxRate       = 50_000
	manyMaxSize       = 64 << 10
	manyMaxTime       = 10 * time.Minute
	manyMaxPublishers = 4096
)

// Timing and shape of the many-runs scenario.
const (
	// manyConnectTimeout bounds the setup of thousands of subscribers,
	// agents and uploads on a shared 2-core machine.
	manyConnectTimeout = 2 * time.Minute
	// manyDrainTimeout is how long subscribers get, after the window, to
	// receive every accepted append.
	manyDrainTimeout = 30 * time.Second
	// manySetupWorkers creates runs and connections this many at a time.
	manySetupWorkers = 32
	// manyIngestUploadEvents: an upload is ended and the next one opened
	// after this many lines, below the server's 1,000 per upload
	// (runs.MaxIngestEvents), where PostHog's sender closes its uploads.
	manyIngestUploadEvents = 900
	// manyDispatchTick is how often the dispatcher hands out the appends
	// that fell due: fine enough for a 1 ms latency floor, coarse enough
	// not to burn the load generator's CPU on timers.
	manyDispatchTick = time.Millisecond
)

// manyPaths are the publishing paths, in the order -path all runs them.
var manyPaths = []string{"rest", "agent", "ingest"}

// manyConfig is one run of the many-runs scenario (one path).
type manyConfig struct {
	binary        string
	path          string // rest, agent or ingest
	runs, subs    int    // subs per run
	rate          float64
	size          int
	duration      time.Duration
	publishers    int
	serverArgs    []string
	databaseURL   string // PostgreSQL: each path gets a fresh database on this server ("": SQLite)
	serverProfile string // a CPU profile of the server over the window ("": none)
	keep          bool
	uploadEvents  int // lines per ingest upload (0: manyIngestUploadEvents; tests rotate sooner)
}

func (c *manyConfig) check() error {
	if !slices.Contains(manyPaths, c.path) {
		return fmt.Errorf("path %q: rest, agent, ingest or all", c.path)
	}
	if c.runs < 1 || c.runs > manyMaxRuns || c.subs < 1 || c.subs > manyMaxSubs || c.runs*c.subs > manyMaxConns ||
		c.rate <= 0 || c.rate > manyMaxRate || c.size < 100 || c.size > manyMaxSize ||
		c.duration <= 0 || c.duration > manyMaxTime || c.publishers < 1 || c.publishers > manyMaxPublishers {
		return fmt.Errorf("bounds: 1..%d runs, 1..%d subscribers per run and at most %d in all, rate in (0, %d], 100..%d bytes, at most %v, 1..%d publishers",
			manyMaxRuns, manyMaxSubs, manyMaxConns, manyMaxRate, manyMaxSize, manyMaxTime, manyMaxPublishers)
	}
	return nil
}

// manyReport is what one path measured.
type manyReport struct {
	Path    string
	Offered int64 // appends due in the window
	Behind  int64 // due but never sent: every publisher was busy
	// Accepted: acknowledged (agent, REST), or counted by the answers of
	// the uploads (ingest), which come when they end, after the window:
	// lines the server had not stored by then count too, so compare
	// DeliveredInWindow and the latency.
	Accepted             int64
	Failed               int64 // sent and refused or failed
	Window               time.Duration
	Delivered            int64
	DeliveredInWindow    int64            // received by the end of the window (the uploads' lines may be stored after it)
	Latency              [4]time.Duration // p50, p95, p99, max: append sent → subscriber received
	Lost, Dup, Extra     int64
	ServerCPU            time.Duration
	ServerCPUPerAppendUS float64
}

func manyRunsCmd(args []string) error {
	fs := flag.NewFlagSet("many-runs", flag.ExitOnError)
	common := addCommon(fs)
	c := manyConfig{}
	fs.StringVar(&c.path, "path", "all", "publishing path: rest (append_log), agent (the agent WebSocket), ingest (NDJSON event_stream) or all (one after another)")
	fs.IntVar(&c.runs, "runs", 2000, "runs")
	fs.IntVar(&c.subs, "subs", 3, "/ws subscribers per run (each connection follows one run)")
	fs.Float64Var(&c.rate, "rate", 10000, "appends per second offered in total, spread evenly over the runs")
	fs.IntVar(&c.size, "size", 200, "bytes per entry")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "publishing time per path")
	fs.IntVar(&c.publishers, "publishers", 256, "appends in flight at most (REST requests, agent batches, upload lines)")
	serverArgs := fs.String("server-args", "", `extra flags for runhub serve, space-separated`)
	fs.StringVar(&c.databaseURL, "database-url", "", "PostgreSQL URL of an existing database: each path runs on a fresh database of its own on that server, created and dropped by the bench (default: SQLite)")
	fs.StringVar(&c.serverProfile, "server-profile", "", "write a CPU profile of the server over the window to this file (suffixed .PATH with -path all)")
	fs.Parse(args)
	c.binary, c.keep, c.serverArgs = common.binary, common.keep, strings.Fields(*serverArgs)
	paths := []string{c.path}
	if c.path == "all" {
		paths = manyPaths
	}
	var reps []*manyReport
	for _, p := range paths {
		pc := c
		pc.path = p
		if c.serverProfile != "" && len(paths) > 1 {
			pc.serverProfile = c.serverProfile + "." + p
		}
		if err := pc.check(); err != nil {
			return err
		}
		ctx, cancel := withTimeout(pc.duration + manyConnectTimeout + manyDrainTimeout)
		rep, err := runMany(ctx, pc, os.Stdout)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		reps = append(reps, rep)
	}
	fmt.Printf("\n%-7s %10s %10s %12s %14s %9s %9s %9s %13s %s\n", "path", "offered/s", "accepted/s", "deliveries/s", "in window/s", "p50", "p99", "max", "server µs/op", "lost/dup/extra")
	var failed []string
	for _, r := range reps {
		w := r.Window.Seconds()
		fmt.Printf("%-7s %10.0f %10.0f %12.0f %14.0f %9v %9v %9v %13.0f %d/%d/%d\n", r.Path, float64(r.Offered)/w, float64(r.Accepted)/w,
			float64(r.Delivered)/w, float64(r.DeliveredInWindow)/w, r.Latency[0].Round(10*time.Microsecond), r.Latency[2].Round(10*time.Microsecond),
			r.Latency[3].Round(10*time.Microsecond), r.ServerCPUPerAppendUS, r.Lost, r.Dup, r.Extra)
		if r.Lost != 0 || r.Dup != 0 || r.Extra != 0 {
			failed = append(failed, r.Path)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("delivery was not exactly once on %v", failed)
	}
	return nil
}

// manyRun is one run of the scenario and its publishing end.
type manyRun struct {
	path   string // API path of the run
	id     string
	acked  atomic.Int64
	agent  *agentclient.Agent
	upload *ingestUpload
	// ingest: the run's event_stream URL and ingest token, the lines per
	// upload, and where its uploads run (rotation opens the next one there).
	ingestTo, ingestTk string
	uploadEvents       int
	bgCtx              context.Context
	bg                 *sync.WaitGroup
	notAccepted        atomic.Int64 // lines of ended uploads their answers did not count
}

// runMany starts a server, drives one path and reports; everything it
// starts is stopped and waited for before it returns.
func runMany(ctx context.Context, c manyConfig, out io.Writer) (*manyReport, error) {
	extra := slices.Clone(c.serverArgs)
	if c.databaseURL != "" {
		// A database the server bootstraps, as the SQLite path's empty data
		// directory: one a previous path filled holds its API key, so the
		// server would write no bootstrap key for the bench to use.
		url, drop, err := freshDatabase(ctx, c.databaseURL)
		if err != nil {
			return nil, err
		}
		defer drop()
		extra = append(extra, "--database-url", url)
	}
	var pprofAddr string
	if c.serverProfile != "" {
		a, err := freeLoopback()
		if err != nil {
			return nil, err
		}
		pprofAddr = a
		extra = append(extra, "--pprof-addr", a)
	}
	srv, err := startServer(ctx, &commonFlags{binary: c.binary, keep: c.keep}, extra...)
	if err != nil {
		return nil, err
	}
	defer srv.stop(c.keep)
	defer srv.client.CloseIdleConnections()

	runs, err := createRuns(ctx, srv, c.runs)
	if err != nil {
		return nil, err
	}
	var bg sync.WaitGroup // agents and uploads
	bgCtx, stopBG := context.WithCancel(ctx)
	defer func() { stopBG(); bg.Wait() }()
	if err := preparePath(ctx, bgCtx, &bg, srv, c, runs); err != nil {
		return nil, err
	}

	// Subscribers: c.subs /ws connections per run, each subscribed to its
	// run from seq 1, coming back after any close.
	ss := make([]*nodeSub, 0, c.runs*c.subs)
	subCtx, stopSubs := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopSubs(); wg.Wait() }()
	var connected atomic.Int64
	for i := range c.runs * c.subs {
		r := i % c.runs
		s := &nodeSub{subscriber: subscriber{next: 1}, kind: "ws", run: r, runID: runs[r].id, runPath: runs[r].path}
		ss = append(ss, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.follow(subCtx, srv, &connected)
		}()
	}
	for deadline := time.Now().Add(manyConnectTimeout); connected.Load() < int64(len(ss)); {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d subscribers connected in %v", connected.Load(), len(ss), manyConnectTimeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	fmt.Fprintf(out, "many-runs %s: %d runs × %d /ws subscribers (%d connections), %v appends/s offered of %d bytes for %v, at most %d in flight\n",
		c.path, c.runs, c.subs, len(ss), c.rate, c.size, c.duration, c.publishers)

	var profDone chan error
	if pprofAddr != "" {
		profDone = make(chan error, 1)
		go func() { profDone <- fetchProfile(ctx, pprofAddr, c.duration, c.serverProfile) }()
	}
	rep := &manyReport{Path: c.path}
	_, cpu0, _ := procStat(srv.cmd.Process.Pid)
	start := time.Now()
	rep.Offered, rep.Behind, rep.Failed = publishMany(ctx, srv, c, runs, start)
	rep.Window = time.Since(start)
	_, cpu1, _ := procStat(srv.cmd.Process.Pid)
	for _, s := range ss {
		s.mu.Lock()
		rep.DeliveredInWindow += s.delivered
		s.mu.Unlock()
	}
	rep.ServerCPU = cpu1 - cpu0
	if c.path == "ingest" {
		// The uploads end (their lines are all stored) and answer.
		failed, err := closeUploads(runs)
		rep.Failed += failed
		if err != nil {
			fmt.Fprintf(out, "an upload failed: %v\n", err)
		}
	}
	for _, r := range runs {
		rep.Accepted += r.acked.Load()
	}
	if rep.Accepted > 0 {
		rep.ServerCPUPerAppendUS = float64(rep.ServerCPU.Microseconds()) / float64(rep.Accepted)
	}

	// Drain: every subscriber receives every accepted append of its run.
	behind := func(s *nodeSub) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.delivered < runs[s.run].acked.Load()
	}
	for deadline := time.Now().Add(manyDrainTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if !slices.ContainsFunc(ss, behind) {
			break
		}
	}
	stopSubs()
	wg.Wait()
	var lat []uint32
	reconnects := 0
	for _, s := range ss {
		acked := runs[s.run].acked.Load()
		rep.Delivered += s.delivered
		rep.Lost += max(0, acked-s.delivered)
		rep.Extra += max(0, s.delivered-acked)
		rep.Dup += s.dup
		reconnects += s.ends
		lat = append(lat, s.lat...)
	}
	slices.Sort(lat)
	for i, p := range []float64{.50, .95, .99, 1} {
		if len(lat) > 0 {
			rep.Latency[i] = time.Duration(lat[min(len(lat)-1, int(p*float64(len(lat))))]) * time.Microsecond
		}
	}
	w := rep.Window.Seconds()
	fmt.Fprintf(out, "appends: %d offered (%.0f/s), %d accepted (%.0f/s), %d not sent (publishers behind), %d failed\n",
		rep.Offered, float64(rep.Offered)/w, rep.Accepted, float64(rep.Accepted)/w, rep.Behind, rep.Failed)
	fmt.Fprintf(out, "deliveries: %d (%.0f/s), %d of them within the window (%.0f/s); reconnections %d\n",
		rep.Delivered, float64(rep.Delivered)/w, rep.DeliveredInWindow, float64(rep.DeliveredInWindow)/w, reconnects)
	fmt.Fprintf(out, "latency (append sent → received): p50 %v  p95 %v  p99 %v  max %v\n", rep.Latency[0], rep.Latency[1], rep.Latency[2], rep.Latency[3])
	fmt.Fprintf(out, "server: CPU %.1f s (%.2f cores), %.0f µs per accepted append\n", rep.ServerCPU.Seconds(), rep.ServerCPU.Seconds()/w, rep.ServerCPUPerAppendUS)
	fmt.Fprintf(out, "lost: %d  duplicated: %d  extra: %d\n", rep.Lost, rep.Dup, rep.Extra)
	if profDone != nil {
		if err := <-profDone; err != nil {
			return nil, fmt.Errorf("server profile: %w", err)
		}
		fmt.Fprintf(out, "server CPU profile: %s\n", c.serverProfile)
	}
	return rep, nil
}

// createRuns makes n runs, one task each, manySetupWorkers at a time.
func createRuns(ctx context.Context, srv *server, n int) ([]*manyRun, error) {
	runs := make([]*manyRun, n)
	err := forEach(ctx, n, func(i int) error {
		p, err := srv.newRun(ctx)
		runs[i] = &manyRun{path: p, id: path.Base(p)}
		return err
	})
	return runs, err
}

// forEach calls f(0..n-1), manySetupWorkers at a time, and returns the
// first error.
func forEach(ctx context.Context, n int, f func(i int) error) error {
	var next atomic.Int64
	errs := make([]error, manySetupWorkers)
	var wg sync.WaitGroup
	for w := range manySetupWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil && errs[w] == nil; i = int(next.Add(1) - 1) {
				errs[w] = f(i)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return ctx.Err()
}

// preparePath connects what the path publishes through: an agent per run
// (connected once its first, warm-up, batch is acknowledged) or an open
// upload per run. They run on bgCtx, counted by bg.
func preparePath(ctx, bgCtx context.Context, bg *sync.WaitGroup, srv *server, c manyConfig, runs []*manyRun) error {
	if c.path == "rest" {
		return nil
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	return forEach(ctx, len(runs), func(i int) error {
		r := runs[i]
		var tb struct {
			Token       string `json:"token"`
			URL         string `json:"ws_url"`
			IngestToken string `json:"ingest_token"`
		}
		if err := srv.call(ctx, "GET", r.path+"/connection_token?role=agent", nil, &tb); err != nil {
			return err
		}
		if c.path == "ingest" {
			r.ingestTo, r.ingestTk, r.bgCtx, r.bg = srv.base+r.path+"/event_stream/", tb.IngestToken, bgCtx, bg
			r.uploadEvents = cmp.Or(c.uploadEvents, manyIngestUploadEvents)
			r.upload = openUpload(bgCtx, bg, r.ingestTo, r.ingestTk, 1)
			return nil
		}
		r.agent = agentclient.New(agentclient.Options{URL: tb.URL, Token: tb.Token, Logger: quiet})
		bg.Add(1)
		go func() { defer bg.Done(); r.agent.Run(bgCtx) }()
		wctx, cancel := context.WithTimeout(ctx, manyConnectTimeout)
		defer cancel()
		// No "t": not counted as a delivery.
		return r.agent.Append(wctx, json.RawMessage(`{"type":"bench-warmup"}`))
	})
}

// publishMany offers c.rate appends/s for c.duration, the k-th to run k
// mod runs, each sent by one of c.publishers workers as soon as it is due
// (an append due while every worker is busy is counted behind and not
// sent). It returns when every sent append was answered.
func publishMany(ctx context.Context, srv *server, c manyConfig, runs []*manyRun, start time.Time) (offered, behind, failed int64) {
	pad := strings.Repeat("x", max(0, c.size-70))
	due := make(chan int64, c.publishers)
	var nFailed atomic.Int64
	var firstErr sync.Once
	var wg sync.WaitGroup
	for range c.publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for k := range due {
				r := runs[k%int64(len(runs))]
				// The entry is stamped as it is sent: the latency is the
				// path's, not the load generator's queue.
				buf = fmt.Appendf(buf[:0], `{"type":"bench","t":%d,"pad":%q}`, time.Now().UnixNano(), pad)
				var err error
				switch c.path {
				case "rest":
					err = appendREST(ctx, srv, r, buf)
				case "agent":
					// Append keeps its entries until acknowledged.
					err = r.agent.Append(ctx, json.RawMessage(bytes.Clone(buf)))
					if err == nil {
						r.acked.Add(1)
					}
				case "ingest":
					err = r.sendLine(buf)
				}
				if err != nil {
					nFailed.Add(1)
					firstErr.Do(func() { fmt.Println("append failed:", err) })
				}
			}
		}()
	}
	t := time.NewTicker(manyDispatchTick)
	defer t.Stop()
	end := start.Add(c.duration)
	for now := start; now.Before(end) && ctx.Err() == nil; now = <-t.C {
		for n := int64(now.Sub(start).Seconds() * c.rate); offered < n; offered++ {
			select {
			case due <- offered:
			default:
				behind++
			}
		}
	}
	close(due)
	wg.Wait()
	return offered, behind, nFailed.Load()
}

// appendREST posts one entry to the run's append_log.
func appendREST(ctx context.Context, srv *server, r *manyRun, entry []byte) error {
	body := make([]byte, 0, len(entry)+16)
	body = append(append(append(body, `{"entries":[`...), entry...), `]}`...)
	if err := srv.call(ctx, "POST", r.path+"/append_log/", body, nil); err != nil {
		return err
	}
	r.acked.Add(1)
	return nil
}

// ingestUpload is one open event_stream upload: lines are written to its
// body as they are sent, and its answer counts those accepted.
type ingestUpload struct {
	mu     sync.Mutex // orders the lines and their seqs
	w      *io.PipeWriter
	seq    int64 // the seq of the last line written
	lines  int   // lines written to this upload
	answer chan ingestAnswer
}

type ingestAnswer struct {
	accepted int64
	err      error
}

// openUpload starts a POST whose body is the lines written to it, the
// first with seq first.
func openUpload(ctx context.Context, bg *sync.WaitGroup, url, token string, first int64) *ingestUpload {
	pr, pw := io.Pipe()
	u := &ingestUpload{w: pw, seq: first - 1, answer: make(chan ingestAnswer, 1)}
	bg.Add(1)
	go func() {
		defer bg.Done()
		a := ingestAnswer{}
		defer func() { pr.CloseWithError(errors.New("upload ended")); u.answer <- a }()
		req, err := http.NewRequestWithContext(ctx, "POST", url, pr)
		if err != nil {
			a.err = err
			return
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/x-ndjson")
		// Its own transport: one long request per connection, never pooled
		// with the API calls.
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			a.err = err
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		var res struct {
			Accepted int64 `json:"accepted"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &res) != nil {
			a.err = fmt.Errorf("event_stream: %d %s", resp.StatusCode, b)
			return
		}
		a.accepted = res.Accepted
	}()
	return u
}

// sendLine writes one event line to the run's upload, ending the upload
// and opening the next after manyIngestUploadEvents lines.
func (r *manyRun) sendLine(entry []byte) error {
	u := r.upload
	u.mu.Lock()
	defer u.mu.Unlock()
	line := fmt.Appendf(nil, `{"seq":%d,"event":%s}`+"\n", u.seq+1, entry)
	if _, err := u.w.Write(line); err != nil {
		return fmt.Errorf("event_stream write: %w", err)
	}
	u.seq++
	u.lines++
	if u.lines < r.uploadEvents {
		return nil
	}
	// Rotate: the answer of the full upload counts its lines.
	u.w.Close()
	a := <-u.answer
	r.acked.Add(a.accepted)
	r.notAccepted.Add(int64(u.lines) - a.accepted)
	next := openUpload(r.bgCtx, r.bg, r.ingestTo, r.ingestTk, u.seq+1)
	u.w, u.lines, u.answer = next.w, 0, next.answer
	return a.err
}

// closeUploads ends every run's upload and counts what each accepted; it
// returns how many lines were not accepted and the first failure.
func closeUploads(runs []*manyRun) (int64, error) {
	var failed int64
	var first error
	for _, r := range runs {
		u := r.upload
		u.mu.Lock()
		u.w.Close()
		a := <-u.answer
		u.mu.Unlock()
		r.acked.Add(a.accepted)
		failed += int64(u.lines) - a.accepted + r.notAccepted.Load()
		if a.err != nil && first == nil {
			first = a.err
		}
	}
	return failed, first
}

// fetchProfile saves the server's CPU profile over d.
func fetchProfile(ctx context.Context, addr string, d time.Duration, file string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds()))), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof: %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, b, 0o644)
}
