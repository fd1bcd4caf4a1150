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
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// subscriber follows the run and checks exactly-once delivery.
type subscriber struct {
	mu        sync.Mutex // the reader goroutine against the final tally
	next      int64      // next expected seq
	delivered int64      // log entries received during the window
	lost, dup int64
	lat       []uint32 // microseconds
	// awaiting is set when the connection broke (nodes mode); the next
	// event in order clears it and sets resumed: the subscriber is back.
	awaiting bool
	resumed  time.Time
}

// observe records one event; t is the append's send time (ns), 0 if none.
func (s *subscriber) observe(seq, t int64, now time.Time) {
	if s.awaiting && seq == s.next {
		s.awaiting, s.resumed = false, now
	}
	switch {
	case seq < s.next:
		s.dup++
		return
	case seq > s.next:
		s.lost += seq - s.next
	}
	s.next = seq + 1
	if t > 0 {
		s.delivered++
		// Microseconds, capped at what a uint32 holds (71 minutes).
		s.lat = append(s.lat, uint32(min((now.UnixNano()-t)/1000, 1<<32-1)))
	}
}

// intAfter parses the integer following key in b (a cheap scan: the load
// generator shares the CPU with the server, so it avoids full JSON decoding).
func intAfter(b []byte, key string) int64 {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0
	}
	b = b[i+len(key):]
	j := 0
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	n, _ := strconv.ParseInt(string(b[:j]), 10, 64)
	return n
}

func fanoutCmd(args []string) error {
	fs := flag.NewFlagSet("fanout", flag.ExitOnError)
	common := addCommon(fs)
	subs := fs.Int("subs", 2000, "subscribers on the run")
	transport := fs.String("transport", "ws", "ws or sse")
	endpoint := fs.String("endpoint", "stream", "with -transport ws: stream (the run's own WebSocket) or ws (GET /ws, subscribed to the run)")
	publishers := fs.Int("publishers", 16, "concurrent publishers")
	size := fs.Int("size", 200, "bytes per entry")
	rate := fs.Float64("rate", 0, "appends per second in total (0: as fast as possible)")
	duration := fs.Duration("duration", 20*time.Second, "publishing time")
	batch := fs.Int("batch", 1, "entries per append request")
	maxBytes := fs.Int64("max-bytes", 0, "stop publishing after this many entry bytes (0: run for -duration)")
	slow := fs.Int("slow", 0, "extra WebSocket clients that never read (slow consumers)")
	fs.Parse(args)
	if *subs < 1 || *subs > 20000 || *publishers < 1 || *publishers > 256 || *duration > 10*time.Minute ||
		*batch < 1 || *batch > 1000 || *slow < 0 || *slow > 1000 {
		return fmt.Errorf("bounds: 1..20000 subs, 1..256 publishers, 1..1000 entries per batch, 0..1000 slow, at most 10m")
	}
	if *endpoint != "stream" && *endpoint != "ws" {
		return fmt.Errorf("-endpoint: stream or ws, not %q", *endpoint)
	}
	ctx, cancel := withTimeout(*duration)
	defer cancel()
	srv, runPath, err := startWithRun(ctx, common)
	if err != nil {
		return err
	}
	defer srv.stop(common.keep)

	// Subscribers.
	ss := make([]*subscriber, *subs)
	var wg sync.WaitGroup
	var connected atomic.Int64
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	errc := make(chan error, *subs)
	for i := range ss {
		ss[i] = &subscriber{next: 1}
		wg.Add(1)
		go func(s *subscriber) {
			defer wg.Done()
			var err error
			for first := true; ; first = false {
				if !first { // the node drained: resume at once, after a little jitter
					time.Sleep(rand.N(restartJitter) + time.Millisecond)
				}
				if *transport == "sse" {
					err = followSSE(subCtx, srv, runPath, s, &connected, first)
				} else {
					err = followWS(subCtx, srv, runPath, *endpoint, s, &connected, first)
				}
				if !errors.Is(err, errMoved) || subCtx.Err() != nil {
					break
				}
			}
			if err != nil && subCtx.Err() == nil {
				errc <- err
			}
		}(ss[i])
	}
	for connected.Load() < int64(*subs) {
		select {
		case err := <-errc:
			return fmt.Errorf("subscriber: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	stuck, err := dialStuck(ctx, srv, runPath, *slow)
	if err != nil {
		return err
	}
	label := *transport
	if label == "ws" {
		label = "ws (" + *endpoint + ")"
	}
	fmt.Printf("fanout: %d %s subscribers connected (and %d that never read); %d publishers, %d entries of %d bytes per append, rate %v/s, %v\n",
		*subs, label, len(stuck), *publishers, *batch, *size, *rate, *duration)

	// Publishers.
	pad := strings.Repeat("x", max(0, *size-70))
	_, cpu0, _ := procStat(srv.cmd.Process.Pid)
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	pubCtx, stopPub := context.WithTimeout(ctx, *duration)
	defer stopPub()
	var tokens <-chan time.Time
	if *rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / *rate))
		defer t.Stop()
		tokens = t.C
	}
	var appends, sent atomic.Int64
	var pwg sync.WaitGroup
	for p := 0; p < *publishers; p++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for pubCtx.Err() == nil {
				if tokens != nil {
					select {
					case <-tokens:
					case <-pubCtx.Done():
						return
					}
				}
				if *maxBytes > 0 && sent.Add(int64(*batch**size)) > *maxBytes {
					stopPub()
					return
				}
				var body strings.Builder
				body.WriteString(`{"entries":[`)
				for i := range *batch {
					if i > 0 {
						body.WriteByte(',')
					}
					fmt.Fprintf(&body, `{"type":"bench","t":%d,"pad":%q}`, time.Now().UnixNano(), pad)
				}
				body.WriteString(`]}`)
				if err := srv.call(context.Background(), "POST", runPath+"/append_log/", []byte(body.String()), nil); err != nil {
					if pubCtx.Err() == nil {
						fmt.Println("append failed:", err)
					}
					return
				}
				appends.Add(1)
			}
		}()
	}
	pwg.Wait()
	window := time.Since(start)
	rss, cpu1, _ := procStat(srv.cmd.Process.Pid)
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)

	// Drain: every subscriber must reach the last seq.
	last := appends.Load()*int64(*batch) + 1
	drainDeadline := time.Now().Add(30 * time.Second)
	for {
		behind := 0
		for _, s := range ss {
			s.mu.Lock()
			if s.next <= last {
				behind++
			}
			s.mu.Unlock()
		}
		if behind == 0 || time.Now().After(drainDeadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopSubs()
	wg.Wait()

	var delivered, lost, dup int64
	var lat []uint32
	for _, s := range ss {
		delivered += s.delivered
		lost += s.lost
		if s.next <= last {
			lost += last - s.next + 1
		}
		dup += s.dup
		lat = append(lat, s.lat...)
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return time.Duration(lat[min(len(lat)-1, int(p*float64(len(lat))))]) * time.Microsecond
	}
	benchCPU := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	fmt.Printf("appends: %d (%.0f/s), %.1f MiB of entries\n", appends.Load(), float64(appends.Load())/window.Seconds(),
		float64(appends.Load()*int64(*batch**size))/(1<<20))
	fmt.Printf("deliveries: %d (%.0f/s)\n", delivered, float64(delivered)/window.Seconds())
	fmt.Printf("latency: p50 %v  p95 %v  p99 %v  max %v\n", pct(.50), pct(.95), pct(.99), pct(1))
	fmt.Printf("server: RSS %.1f MiB, CPU %.2f cores\n", float64(rss)/(1<<20), (cpu1-cpu0).Seconds()/window.Seconds())
	fmt.Printf("load generator: CPU %.2f cores (GOMAXPROCS %d)\n", benchCPU.Seconds()/window.Seconds(), runtime.GOMAXPROCS(0))
	fmt.Printf("server peak RSS: %.1f MiB\n", float64(peakRSS(srv.cmd.Process.Pid))/(1<<20))
	if len(stuck) > 0 {
		fmt.Printf("clients that never read: %s\n", stuckOutcome(srv, stuck))
	}
	fmt.Printf("lost: %d  duplicated: %d\n", lost, dup)
	if lost != 0 || dup != 0 {
		return fmt.Errorf("delivery was not exactly once")
	}
	return nil
}

func authHeader(srv *server) http.Header {
	return http.Header{"Authorization": {"Bearer " + srv.key}}
}

// errMoved: the node closed the stream as it drains (1012, or an SSE
// retry hint); the subscriber reconnects and resumes after its last seq.
var errMoved = errors.New("the node is draining")

// restartJitter bounds the random delay before a subscriber reconnects
// after a drain, as real clients spread their reconnections.
const restartJitter = 50 * time.Millisecond

// resumeQuery is the query that continues after the subscriber's last
// seq ("" on the first connection: from the first event).
func resumeQuery(s *subscriber, first bool) string {
	if first {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return "?after=" + strconv.FormatInt(s.next-1, 10)
}

// followWS follows the run over a WebSocket: the run's own (endpoint
// "stream"), or GET /ws subscribed to the run ("ws"), where the subscriber
// counts as connected once its subscribe is answered.
func followWS(ctx context.Context, srv *server, runPath, endpoint string, s *subscriber, connected *atomic.Int64, first bool) error {
	url := "ws" + strings.TrimPrefix(srv.base, "http")
	if endpoint == "ws" {
		url += "/ws"
	} else {
		url += runPath + "/stream" + resumeQuery(s, first)
	}
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: authHeader(srv)})
	if err != nil {
		return err
	}
	defer c.CloseNow()
	c.SetReadLimit(-1)
	// Reads without a context (a context per read costs a timer and an
	// allocation); closing the connection ends the loop.
	defer context.AfterFunc(ctx, func() { c.CloseNow() })()
	if endpoint == "ws" {
		s.mu.Lock()
		after := s.next - 1
		s.mu.Unlock()
		if err := muxSubscribe(ctx, c, path.Base(runPath), after); err != nil {
			return err
		}
	}
	if first {
		connected.Add(1)
	}
	var buf bytes.Buffer
	for {
		_, r, err := c.Reader(context.Background())
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusServiceRestart {
				return fmt.Errorf("%w: %v", errMoved, err)
			}
			return err
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return err
		}
		observeMessage(s, buf.Bytes(), time.Now())
	}
}

// muxSubscribe subscribes a /ws connection to a run after seq after
// (a number, or "latest") and waits for the reply, which comes before any
// of the run's events.
func muxSubscribe(ctx context.Context, c *websocket.Conn, runID string, after any) error {
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "subscribe",
		"params": map[string]any{"run_id": runID, "after": after}})
	if err := c.Write(ctx, websocket.MessageText, req); err != nil {
		return err
	}
	_, b, err := c.Read(ctx)
	if err != nil {
		return err
	}
	var reply struct {
		Result json.RawMessage
		Error  *struct{ Message string }
	}
	if err := json.Unmarshal(b, &reply); err != nil {
		return fmt.Errorf("/ws reply: %w", err)
	}
	if reply.Error != nil || reply.Result == nil {
		return fmt.Errorf("/ws subscribe: %.200s", b)
	}
	return nil
}

// observeMessage records the events of one WebSocket message (the stream
// WebSocket's and /ws's notifications have one shape).
func observeMessage(s *subscriber, b []byte, now time.Time) {
	// A message is one notification or a batch of them; each starts
	// with the marker (bench entries contain no nested JSON-RPC).
	for len(b) > 0 {
		i := bytes.Index(b, notifMarker)
		if i < 0 {
			break
		}
		b = b[i+len(notifMarker):]
		end := bytes.Index(b, notifMarker)
		if end < 0 {
			end = len(b)
		}
		n := b[:end]
		b = b[end:]
		if !bytes.HasPrefix(n, []byte(`event"`)) {
			continue
		}
		s.mu.Lock()
		s.observe(intAfter(n, `"seq":`), intAfter(n, `"t":`), now)
		s.mu.Unlock()
	}
}

var notifMarker = []byte(`{"jsonrpc":"2.0","method":"`)

func followSSE(ctx context.Context, srv *server, runPath string, s *subscriber, connected *atomic.Int64, first bool) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.base+runPath+"/stream"+resumeQuery(s, first), nil)
	req.Header = authHeader(srv)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("stream: %d", resp.StatusCode)
	}
	if first {
		connected.Add(1)
	}
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	var seq int64
	moved := false
	for {
		line, err := rd.ReadSlice('\n')
		if err != nil {
			if moved && errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: %v", errMoved, err)
			}
			return err
		}
		switch {
		case bytes.HasPrefix(line, []byte("retry: ")):
			moved = true // the stream ends next: reconnect
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
