package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// posthogAgentEvents is how many events PostHog's sender delivers:
	// with the package's 900-event upload window, six uploads, enough for
	// a restart and a gap to fall inside open ones.
	posthogAgentEvents = 5000
	// posthogAgentRestartAt: the server is killed and restarted once the
	// viewer has seen this many events, in the middle of an upload.
	posthogAgentRestartAt = 1500
	// posthogAgentDropFrom: the proxy drops the first event line with a
	// sender seq at least this, after the restart, forcing a 409 gap.
	posthogAgentDropFrom = 3000
	// posthogAgentTimeout bounds the whole exchange: the install is
	// cached, the driver sends for about six seconds, and the sender
	// retries once a second while the server restarts.
	posthogAgentTimeout = 90 * time.Second
	// posthogAgentInstallTimeout bounds npm ci (about 25 s on a cold cache).
	posthogAgentInstallTimeout = 5 * time.Minute
	posthogAgentMethod         = "_runhub/test_event"
)

// TestPostHogAgentPackage runs PostHog's published agent package
// (testdata/posthog-agent: @posthog/agent pinned with its whole tree,
// installed with --ignore-scripts), unchanged, against a real runhub: its
// event-stream sender delivers posthogAgentEvents events through a proxy
// that drops one line (a 409 gap) while the server is killed and restarted
// on the same address and data directory; the run's log must hold every
// event once, in order. A viewer follows the run over SSE meanwhile, and
// must see events of an upload before that upload closes (the lag is
// logged, not asserted). Then the package's API client makes the agent's
// calls (run updates, append_log, artifact upload inline and straight to
// storage, download, set_output, logs), and the lifecycle calls PostHog's
// app makes (start, resume_in_cloud, cancel) are checked on the same runs,
// with the package's resumeFromLog reading the resumed run's predecessor.
func TestPostHogAgentPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("installs an npm package and runs the binary")
	}
	pkgDir := installPostHogAgent(t)

	dataDir := t.TempDir()
	addr := freeAddr(t)
	srv := startServerAt(t, dataDir, addr)
	key := readKey(t, dataDir)
	ctx, cancel := context.WithTimeout(context.Background(), posthogAgentTimeout)
	defer cancel()

	api := srv.base + "/api/projects/1"
	var task struct{ ID string }
	if code, err := do(ctx, key, "POST", api+"/tasks/", map[string]any{"title": "posthog agent"}, &task); err != nil || code != 201 {
		t.Fatalf("create task: %d %v", code, err)
	}
	runs := api + "/tasks/" + task.ID + "/runs/"
	var run struct {
		ID     string
		Status string
	}
	if code, err := do(ctx, key, "POST", runs, map[string]any{}, &run); err != nil || code != 201 {
		t.Fatalf("create run: %d %v", code, err)
	}
	runURL := runs + run.ID + "/"
	// start/ as PostHog's app sends it: the pending message becomes the
	// run's first queued user message, and the run is queued.
	var started struct {
		LatestRun struct{ ID, Status string } `json:"latest_run"`
	}
	if code, err := do(ctx, key, "POST", runURL+"start/", map[string]any{"pending_user_message": "go"}, &started); err != nil || code != 200 ||
		started.LatestRun.ID != run.ID || started.LatestRun.Status != "queued" {
		t.Fatalf("start: %d %v %+v", code, err, started)
	}
	var ct struct {
		IngestToken string `json:"ingest_token"`
	}
	if code, err := do(ctx, key, "GET", runURL+"connection_token/?role=agent", nil, &ct); err != nil || code != 200 || ct.IngestToken == "" {
		t.Fatalf("connection_token: %d %v %+v", code, err, ct)
	}

	proxy := newDropProxy(t, srv.base, posthogAgentDropFrom)
	view := followRun(ctx, t, runURL+"stream", key)

	cmd := exec.CommandContext(ctx, "node", "driver.mjs")
	cmd.Dir = pkgDir
	cmd.Env = append(os.Environ(),
		"RUNHUB_API_URL="+srv.base,
		"RUNHUB_INGEST_URL="+proxy.URL,
		"RUNHUB_KEY="+key,
		"RUNHUB_INGEST_TOKEN="+ct.IngestToken,
		"RUNHUB_PROJECT=1",
		"RUNHUB_TASK="+task.ID,
		"RUNHUB_RUN="+run.ID,
		"RUNHUB_EVENTS="+strconv.Itoa(posthogAgentEvents),
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := readDriver(stdout)

	if !view.waitFor(ctx, posthogAgentRestartAt) {
		cmd.Process.Kill()
		<-out.done
		t.Fatalf("the viewer saw %d events before the restart point; driver:\n%s\n%s", view.count(), out.text(), stderr.String())
	}
	srv.cmd.Process.Kill()
	srv.cmd.Wait()
	t.Logf("runhub killed after the viewer saw %d events; restarting", view.count())
	srv2 := startServerAt(t, dataDir, addr)

	<-out.done
	if err := cmd.Wait(); err != nil {
		t.Fatalf("driver: %v\nstdout:\n%s\nstderr:\n%s\nrunhub:\n%s", err, out.text(), stderr.String(), srv2.output())
	}
	if out.api == nil {
		t.Fatalf("the driver reported no API results:\n%s", out.text())
	}
	t.Logf("API client: %s", out.api)
	var apiRes struct {
		RunStatus    string `json:"run_status"`
		Stage        string
		Downloaded   string
		DirectUpload struct {
			Name       string
			Size       int
			Downloaded int
		} `json:"direct_upload"`
		Output     map[string]any
		LogEntries int `json:"log_entries"`
	}
	if err := json.Unmarshal(out.api, &apiRes); err != nil {
		t.Fatal(err)
	}
	if apiRes.RunStatus != "completed" || apiRes.Stage != "build" || apiRes.Downloaded != "checkpoint bytes é\n" ||
		apiRes.Output["pr_url"] != "https://example.com/pr/1" || apiRes.LogEntries != posthogAgentEvents+1 {
		t.Errorf("API client results: %+v", apiRes)
	}
	if d := apiRes.DirectUpload; d.Name != "screenshot.bin" || d.Size != 100<<10 || d.Downloaded != 100<<10 {
		t.Errorf("the package's direct upload (prepare_upload, form POST, finalize_upload, download): %+v", d)
	}

	// The restart must have cut an upload the sender had open: it reports
	// the failure and retries.
	if out.warnings == 0 {
		t.Errorf("the sender reported no failed upload; the restart missed it:\n%s", out.text())
	}
	dropped, conflicts := proxy.stats()
	if dropped == 0 || conflicts != 1 {
		t.Errorf("the proxy dropped %d lines and relayed %d 409 answers; the test needs a gap", dropped, conflicts)
	}
	t.Logf("proxy: %d lines dropped, %d answered 409; the sender warned %d times", dropped, conflicts, out.warnings)

	// The run's log: every event once, in the order sent.
	got := posthogLogEvents(ctx, t, srv2.base+"/api/projects/1/tasks/"+task.ID+"/runs/"+run.ID+"/logs/", key)
	if len(got) != posthogAgentEvents {
		t.Errorf("the log holds %d test events, want %d", len(got), posthogAgentEvents)
	}
	for n, i := range got {
		if i != n+1 {
			t.Fatalf("log event %d is i=%d, want %d (a loss, duplicate or reordering)", n+1, i, n+1)
		}
	}

	// The viewer: every event, and some of them while their upload was
	// still open.
	if !view.waitFor(ctx, posthogAgentEvents) {
		t.Errorf("the viewer saw %d distinct events, want %d", view.count(), posthogAgentEvents)
	}
	early, lags := view.report(out.windows)
	t.Logf("viewer lag from enqueue to SSE arrival over %d events: %s; uploads with events seen before they closed: %d of %d",
		len(lags), lagFigures(lags), early, len(out.windows))
	if early == 0 {
		t.Errorf("no upload's events reached the viewer before the upload closed (windows %v)", out.windows)
	}
	if n := view.duplicates(); n != 0 {
		t.Errorf("the viewer got %d events twice", n)
	}

	// resume_in_cloud continues the finished run: a new run whose logs are
	// the chain's, oldest first.
	var resumed struct {
		ID    string
		State struct {
			ResumeFrom string `json:"resume_from_run_id"`
		}
	}
	if code, err := do(ctx, key, "POST", runURL+"resume_in_cloud/", nil, &resumed); err != nil || code != 201 || resumed.State.ResumeFrom != run.ID {
		t.Fatalf("resume_in_cloud: %d %v %+v", code, err, resumed)
	}
	chain := posthogLogEvents(ctx, t, runs+resumed.ID+"/logs/", key)
	if len(chain) != posthogAgentEvents || chain[0] != 1 || chain[len(chain)-1] != posthogAgentEvents {
		t.Errorf("the resumed run's logs hold %d of the chain's events, want %d in order", len(chain), posthogAgentEvents)
	}
	// The package's agent server on the new run: it finds the run it
	// resumes in the run's state and rebuilds its conversation from that
	// run's log with resumeFromLog.
	resume := exec.CommandContext(ctx, "node", "driver.mjs")
	resume.Dir = pkgDir
	resume.Env = append(os.Environ(), "RUNHUB_MODE=resume", "RUNHUB_API_URL="+srv2.base, "RUNHUB_KEY="+key,
		"RUNHUB_PROJECT=1", "RUNHUB_TASK="+task.ID, "RUNHUB_RUN="+resumed.ID, "RUNHUB_EVENTS=0")
	resumeOut, err := resume.CombinedOutput()
	if err != nil {
		t.Fatalf("driver (resume): %v\n%s", err, resumeOut)
	}
	var resumeRes struct {
		Resume *struct {
			From       string
			LogEntries int `json:"log_entries"`
		}
	}
	for _, line := range strings.Split(string(resumeOut), "\n") {
		if json.Unmarshal([]byte(line), &resumeRes); resumeRes.Resume != nil {
			break
		}
	}
	if r := resumeRes.Resume; r == nil || r.From != run.ID || r.LogEntries != posthogAgentEvents+1 {
		t.Errorf("resumeFromLog on the resumed run: %+v, want %d entries of run %s\n%s", r, posthogAgentEvents+1, run.ID, resumeOut)
	} else {
		t.Logf("resumeFromLog read %d log entries of run %s", r.LogEntries, r.From)
	}
	// cancel/ with no agent connected ends the run at once, and again.
	for range 2 {
		var c struct{ Status string }
		if code, err := do(ctx, key, "POST", runs+resumed.ID+"/cancel/", nil, &c); err != nil || code != 200 || c.Status != "cancelled" {
			t.Fatalf("cancel: %d %v %+v", code, err, c)
		}
	}
}

// installPostHogAgent installs testdata/posthog-agent (package.json and its
// lock file, which pins the whole tree and names no registry) with npm ci
// --ignore-scripts into a cache directory keyed by the files' hash, and
// returns the directory holding driver.mjs and node_modules. Without node
// and npm, or without the registry, the test is skipped, except under
// RUNHUB_REQUIRE_SERVERS=1 where it fails.
func installPostHogAgent(t *testing.T) string {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s (RUNHUB_REQUIRE_SERVERS=1: the PostHog agent package test must run; make deps installs Node)", msg)
		}
		t.Skipf("%s: skipping the PostHog agent package test", msg)
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing("%s not found", tool)
		}
	}
	if v, err := exec.Command("node", "--version").Output(); err == nil {
		t.Logf("node %s", bytes.TrimSpace(v))
	}
	src := filepath.Join("testdata", "posthog-agent")
	h := sha256.New()
	for _, f := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	installed := filepath.Join(cache, "runhub-test", "posthog-agent-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(installed, "node_modules", ".runhub-complete")); err != nil {
		// Install into a fresh directory and rename it into place, so a
		// run cut short never leaves a half-installed tree that looks whole.
		if err := os.MkdirAll(filepath.Dir(installed), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp, err := os.MkdirTemp(filepath.Dir(installed), "install-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		for _, f := range []string{"package.json", "package-lock.json"} {
			b, _ := os.ReadFile(filepath.Join(src, f))
			if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), posthogAgentInstallTimeout)
		defer cancel()
		// --omit=optional leaves out the coding agents' native binaries
		// (about 550 MB), which the sender and the API client never load.
		npm := exec.CommandContext(ctx, "npm", "ci", "--ignore-scripts", "--omit=optional", "--no-audit", "--no-fund", "--loglevel=error")
		npm.Dir = tmp
		if out, err := npm.CombinedOutput(); err != nil {
			missing("npm ci: %v\n%s", err, out)
		}
		if err := os.WriteFile(filepath.Join(tmp, "node_modules", ".runhub-complete"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(installed)
		if err := os.Rename(tmp, installed); err != nil {
			t.Fatal(err)
		}
	}
	// The driver is copied on every run: it is not part of the cache key.
	b, err := os.ReadFile(filepath.Join(src, "driver.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(installed, "driver.mjs"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return installed
}

// startServerAt is startServerArgs on a given address, so that a restart
// comes back where its clients (the sender's proxy, the viewer) look.
func startServerAt(t *testing.T, dataDir, addr string) *server {
	t.Helper()
	cmd := exec.Command(runhubBinary(t), "serve", "--addr", addr, "--data-dir", dataDir)
	s := &server{cmd: cmd, base: "http://" + addr, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Stderr = &lockedWriter{w: s.logs, mu: s.mu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if res, err := http.Get(s.base + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return s
			}
		}
	}
	t.Fatalf("server did not start on %s; logs:\n%s", addr, s.output())
	return nil
}

// dropProxy forwards requests to runhub, dropping one event line of an
// event_stream upload: the first with a sender seq of at least from. The
// next event line (which shows runhub the gap) is forwarded, and then the
// upload is held until runhub answers, so that its 409 reaches the sender
// rather than a write error on a connection runhub has closed. If runhub
// answers without a 409 (the dropped line was the upload's last), the
// proxy drops another line.
type dropProxy struct {
	*httptest.Server
	mu        sync.Mutex
	from      int64
	dropped   int
	conflicts int
	// answered is non-nil from a drop until runhub answers that upload;
	// it is closed then.
	answered chan struct{}
}

func newDropProxy(t *testing.T, target string, from int64) *dropProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{from: from}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(u)
		pr.Out.Host = pr.In.Host // runhub builds its links from the Host the sender used
		r := pr.Out
		if strings.HasSuffix(r.URL.Path, "/event_stream/") && r.Body != nil && r.ContentLength != 0 {
			r.Body = &dropBody{p: p, ctx: r.Context(), br: bufio.NewReader(r.Body), c: r.Body}
			r.ContentLength = -1
		}
	}}
	rp.ModifyResponse = func(res *http.Response) error {
		p.answer(res.StatusCode)
		return nil
	}
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		// runhub is down (the restart): the sender resends from
		// last_accepted_seq.
		p.answer(http.StatusBadGateway)
		w.WriteHeader(http.StatusBadGateway)
	}
	p.Server = httptest.NewServer(rp)
	t.Cleanup(p.Close)
	return p
}

// answer notes runhub's answer to an upload.
func (p *dropProxy) answer(status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.answered == nil {
		return
	}
	close(p.answered)
	p.answered = nil
	if status == http.StatusConflict {
		p.conflicts++
	}
}

func (p *dropProxy) stats() (dropped, conflicts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped, p.conflicts
}

// dropBody passes an upload through one line per Read, so each line is
// forwarded (as its own chunk) as soon as it arrives.
type dropBody struct {
	p    *dropProxy
	ctx  context.Context
	br   *bufio.Reader
	c    io.Closer
	line []byte
	// hold, once this upload has dropped a line and forwarded the next,
	// is closed when runhub has answered; the body ends then.
	hold, dropped chan struct{}
}

func (b *dropBody) Read(buf []byte) (int, error) {
	if b.hold != nil && len(b.line) == 0 {
		select {
		case <-b.hold:
		case <-b.ctx.Done():
		}
		return 0, io.EOF
	}
	for len(b.line) == 0 {
		line, err := b.br.ReadBytes('\n')
		if len(line) > 0 && !b.drop(line) {
			b.line = line
			if b.dropped != nil && isEventLine(line) {
				b.hold = b.dropped // the gap is shown: wait for the 409
			}
		}
		if err != nil && len(b.line) == 0 {
			return 0, err
		}
	}
	n := copy(buf, b.line)
	b.line = b.line[n:]
	return n, nil
}

func isEventLine(line []byte) bool {
	var l struct{ Seq int64 }
	return json.Unmarshal(line, &l) == nil && l.Seq != 0
}

// drop reports whether line is the one to drop, and counts it.
func (b *dropBody) drop(line []byte) bool {
	var l struct{ Seq int64 }
	if json.Unmarshal(line, &l) != nil || l.Seq == 0 {
		return false
	}
	p := b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conflicts > 0 || p.answered != nil || l.Seq < p.from {
		return false
	}
	p.dropped++
	p.answered = make(chan struct{})
	b.dropped = p.answered
	p.from = 0 // if this drop shows no gap, the next line goes
	return true
}

func (b *dropBody) Close() error { return b.c.Close() }

// driverOutput is what driver.mjs reports on stdout.
type driverOutput struct {
	mu      sync.Mutex
	lines   []string
	windows []uploadWindow
	api     json.RawMessage
	// warnings counts the sender's warnings (a failed upload, a retry).
	warnings int
	done     chan struct{}
}

// uploadWindow is one upload the sender closed with a 2xx: its last seq
// and when the answer came.
type uploadWindow struct {
	through int
	events  int
	at      time.Time
}

func readDriver(r io.Reader) *driverOutput {
	o := &driverOutput{done: make(chan struct{})}
	go func() {
		defer close(o.done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m struct {
				T         int64
				Delivered *int
				Events    int
				Log       string
				API       json.RawMessage
			}
			json.Unmarshal(sc.Bytes(), &m)
			o.mu.Lock()
			o.lines = append(o.lines, sc.Text())
			if m.Delivered != nil {
				o.windows = append(o.windows, uploadWindow{through: *m.Delivered, events: m.Events, at: time.UnixMilli(m.T)})
			}
			if m.Log == "warn" {
				o.warnings++
			}
			if m.API != nil {
				o.api = m.API
			}
			o.mu.Unlock()
		}
	}()
	return o
}

func (o *driverOutput) text() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines, "\n")
}

// runViewer follows a run's SSE stream, resuming with Last-Event-ID after
// the server restart, and records when each test event arrived.
type runViewer struct {
	mu      sync.Mutex
	arrived map[int]time.Time // test event i → first arrival
	lag     map[int]time.Duration
	dups    int
	changed chan struct{}
}

func followRun(ctx context.Context, t *testing.T, streamURL, key string) *runViewer {
	v := &runViewer{arrived: map[int]time.Time{}, lag: map[int]time.Duration{}, changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() { cancel(); wg.Wait() })
	go func() {
		defer wg.Done()
		last := ""
		for ctx.Err() == nil {
			ended, err := v.follow(ctx, streamURL, key, &last)
			if ended {
				return
			}
			if err != nil {
				select { // the server is restarting
				case <-time.After(50 * time.Millisecond):
				case <-ctx.Done():
				}
			}
		}
	}()
	return v
}

// follow reads one SSE connection; it reports whether the stream ended
// (stream-end) and keeps the last id in *last for the next connection.
func (v *runViewer) follow(ctx context.Context, streamURL, key string, last *string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", streamURL, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	if *last != "" {
		req.Header.Set("Last-Event-ID", *last)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return false, fmt.Errorf("SSE: status %d", res.StatusCode)
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 2<<20)
	id, event := "", ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if event == "stream-end" {
				return true, nil
			}
			v.record(time.Now(), []byte(strings.TrimPrefix(line, "data: ")))
		case line == "":
			if id != "" {
				*last = id
			}
			id, event = "", ""
		}
	}
	return false, sc.Err()
}

func (v *runViewer) record(now time.Time, data []byte) {
	var e struct {
		Notification struct {
			Method string
			Params struct {
				I      int
				SentMS int64 `json:"sent_ms"`
			}
		}
	}
	if json.Unmarshal(data, &e) != nil || e.Notification.Method != posthogAgentMethod {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	i := e.Notification.Params.I
	if _, seen := v.arrived[i]; seen {
		v.dups++
		return
	}
	v.arrived[i] = now
	v.lag[i] = now.Sub(time.UnixMilli(e.Notification.Params.SentMS))
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

func (v *runViewer) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.arrived)
}

func (v *runViewer) duplicates() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.dups
}

// waitFor waits until the viewer has seen n distinct events.
func (v *runViewer) waitFor(ctx context.Context, n int) bool {
	for v.count() < n {
		select {
		case <-v.changed:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// report counts the uploads of which the viewer saw at least one event
// before the sender had the upload's answer, and returns every lag.
func (v *runViewer) report(windows []uploadWindow) (int, []time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	early := 0
	for _, w := range windows {
		for i := w.through - w.events + 1; i <= w.through; i++ {
			if at, ok := v.arrived[i]; ok && at.Before(w.at) {
				early++
				break
			}
		}
	}
	lags := make([]time.Duration, 0, len(v.lag))
	for _, l := range v.lag {
		lags = append(lags, l)
	}
	return early, lags
}

func lagFigures(lags []time.Duration) string {
	if len(lags) == 0 {
		return "none"
	}
	slices.Sort(lags)
	q := func(p float64) time.Duration { return lags[int(p*float64(len(lags)-1))].Round(time.Millisecond) }
	return fmt.Sprintf("min %v, median %v, p95 %v, max %v", q(0), q(0.5), q(0.95), q(1))
}

// posthogLogEvents reads a run's /logs and returns the i of each test
// event, in log order.
func posthogLogEvents(ctx context.Context, t *testing.T, logsURL, key string) []int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", logsURL, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("logs: status %d", res.StatusCode)
	}
	var got []int
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 2<<20)
	for sc.Scan() {
		var e struct {
			Notification struct {
				Method string
				Params struct{ I int }
			}
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if e.Notification.Method == posthogAgentMethod {
			got = append(got, e.Notification.Params.I)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}
