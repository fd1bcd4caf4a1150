package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds of the append scenario: enough to saturate a server on loopback,
// small enough that a mistyped flag cannot exhaust the machine. The batch
// bound is the API's own (append_log takes 1..10,000 entries).
const (
	appendMaxWriters = 256
	appendMaxBatch   = 10000
	appendMaxSize    = 64 << 10
	appendMaxTime    = 10 * time.Minute
	// appendVerifyRetries bounds the SSE resumes of the read-back: the hub
	// may close a stream that falls behind its queue (slow consumer), and
	// the check resumes it from the last seq it saw.
	appendVerifyRetries = 20
)

// A bench entry is `{"type":"bench","timestamp":"...","id":N,"pad":"xx..."}`,
// padded to -size bytes. It carries a timestamp as agents' entries do, so
// the server stores it byte for byte; the read-back recognises it by its
// prefix and finds its id without decoding JSON (the check reads every
// entry while sharing the CPU with the server).
const (
	appendEntryPrefix = `{"type":"bench",`
	appendIDKey       = `"id":`
	// appendStampLayout has a fixed width, so every entry has -size bytes.
	appendStampLayout = "2006-01-02T15:04:05.000000Z07:00"
)

// appendCmd measures append throughput: writers POST append_log batches as
// fast as the server acknowledges them (each answer comes after the batch's
// commit, at the backend's default durability), spread over -runs runs.
// Afterwards it reads every run back and checks that each acknowledged
// entry was stored exactly once and that the run's seqs are gap-free.
//
// The server is started as for every scenario (a fresh data directory);
// -server-args adds serve flags, and the environment is passed through, so
// another backend is selected with, for example,
// -server-args "--database-url postgres://..." or RUNHUB_DATABASE_URL.
func appendCmd(args []string) error {
	fs := flag.NewFlagSet("append", flag.ExitOnError)
	common := addCommon(fs)
	writers := fs.Int("writers", 16, "concurrent writers (one request in flight each)")
	runs := fs.Int("runs", 16, "runs the writers append to (writer i appends to run i mod runs)")
	batch := fs.Int("batch", 100, "entries per append request")
	size := fs.Int("size", 200, "bytes per entry")
	duration := fs.Duration("duration", 10*time.Second, "appending time")
	serverArgs := fs.String("server-args", "", "extra flags for runhub serve, space-separated")
	fs.Parse(args)
	// The smallest entry that fits any id (up to 19 digits; id 0 has 1).
	entryMin := len(appendBody(nil, 0, 0, 1, 0, time.Now())) - len(`{"entries":[]}`) + 18
	if *writers < 1 || *writers > appendMaxWriters || *runs < 1 || *runs > *writers ||
		*batch < 1 || *batch > appendMaxBatch || *size < entryMin || *size > appendMaxSize ||
		*duration <= 0 || *duration > appendMaxTime {
		return fmt.Errorf("bounds: 1..%d writers, 1..writers runs, 1..%d entries per batch, %d..%d bytes per entry, at most %v",
			appendMaxWriters, appendMaxBatch, entryMin, appendMaxSize, appendMaxTime)
	}
	ctx, cancel := withTimeout(*duration)
	defer cancel()
	srv, err := startServer(ctx, common, strings.Fields(*serverArgs)...)
	if err != nil {
		return err
	}
	defer srv.stop(common.keep)
	paths := make([]string, *runs)
	for i := range paths {
		if paths[i], err = srv.newRun(ctx); err != nil {
			return err
		}
	}
	fmt.Printf("append: %d writers, runs: %d, %d entries of %d bytes per request, %v\n",
		*writers, *runs, *batch, *size, *duration)

	_, cpu0, _ := procStat(srv.cmd.Process.Pid)
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	stop := time.Now().Add(*duration)
	lat := make([][]uint32, *writers) // per writer, microseconds
	acked := make([]int64, *writers)  // requests acknowledged per writer
	failed := make([]error, *writers) // the first failure per writer
	var wg sync.WaitGroup
	for w := range *writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := make([]byte, 0, *batch*(*size+1)+16)
			path := paths[w%*runs] + "/append_log/"
			// A request started before the deadline runs to its answer, so
			// that every entry sent is either acknowledged or reported.
			for req := int64(0); time.Now().Before(stop); req++ {
				body = appendBody(body[:0], w, req, *batch, *size, time.Now())
				t := time.Now()
				if err := srv.call(ctx, "POST", path, body, nil); err != nil {
					failed[w] = err
					return
				}
				lat[w] = append(lat[w], uint32(min(time.Since(t).Microseconds(), 1<<32-1)))
				acked[w] = req + 1
			}
		}()
	}
	wg.Wait()
	window := time.Since(start)
	_, cpu1, _ := procStat(srv.cmd.Process.Pid)
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)

	var requests int64
	var all []uint32
	for w := range *writers {
		requests += acked[w]
		all = append(all, lat[w]...)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return time.Duration(all[min(len(all)-1, int(p*float64(len(all))))]) * time.Microsecond
	}
	entries := requests * int64(*batch)
	benchCPU := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	fmt.Printf("entries: %d (%.0f/s), %.1f MiB\n", entries, float64(entries)/window.Seconds(),
		float64(entries*int64(*size))/(1<<20))
	fmt.Printf("requests: %d (%.0f/s)\n", requests, float64(requests)/window.Seconds())
	fmt.Printf("latency: p50 %v  p99 %v  max %v\n", pct(.50), pct(.99), pct(1))
	fmt.Printf("server: CPU %.2f cores\n", (cpu1-cpu0).Seconds()/window.Seconds())
	fmt.Printf("load generator: CPU %.2f cores (GOMAXPROCS %d)\n", benchCPU.Seconds()/window.Seconds(), runtime.GOMAXPROCS(0))
	if err := errors.Join(failed...); err != nil {
		return fmt.Errorf("append failed: %w", err)
	}

	// Read-back: every run, its writers' acknowledged entries.
	var bad []string
	for r, path := range paths {
		// Per writer of the run, one flag per acknowledged entry (a few MB
		// even for a 10-minute run, where a map of ids would take GBs).
		want := map[int][]bool{}
		for w := r; w < *writers; w += *runs {
			want[w] = make([]bool, acked[w]*int64(*batch))
		}
		if err := verifyRun(ctx, srv, path, *size, want); err != nil {
			bad = append(bad, fmt.Sprintf("run %d: %v", r, err))
		}
	}
	if len(bad) > 0 {
		fmt.Println("stored: NOT exactly once")
		return errors.New(strings.Join(bad, "; "))
	}
	fmt.Printf("stored: %d entries exactly once, seqs gap-free on %d runs\n", entries, *runs)
	return nil
}

// entryID numbers entry i of request req of writer w uniquely in the run:
// the writer in the high bits, the writer's entry number in the low 40.
func entryID(w int, req int64, batch int, i int64) int64 {
	return int64(w)<<40 | (req*int64(batch) + i)
}

// appendBody writes one append_log request body: batch entries of size
// bytes (or the least an entry takes), each carrying its entry id.
func appendBody(b []byte, w int, req int64, batch, size int, now time.Time) []byte {
	b = append(b, `{"entries":[`...)
	for i := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		n := len(b)
		b = append(b, appendEntryPrefix+`"timestamp":"`...)
		b = now.UTC().AppendFormat(b, appendStampLayout)
		b = append(b, `",`+appendIDKey...)
		b = strconv.AppendInt(b, entryID(w, req, batch, int64(i)), 10)
		b = append(b, `,"pad":"`...)
		for pad := size - (len(b) - n) - len(`"}`); pad > 0; pad-- {
			b = append(b, 'x')
		}
		b = append(b, `"}`...)
	}
	return append(b, `]}`...)
}

// verifyRun completes the run and reads it back twice: /logs (what is
// stored: each wanted entry exactly once, nothing else) and the SSE stream
// from the first event (the seqs: 1, 2, 3, ... with no gap, as many log
// events as entries). Completing the run makes the stream end once every
// event has been sent.
func verifyRun(ctx context.Context, srv *server, path string, size int, want map[int][]bool) error {
	var entries int64
	for _, seen := range want {
		entries += int64(len(seen))
	}
	if err := srv.call(ctx, "PATCH", path, []byte(`{"status":"completed"}`), nil); err != nil {
		return err
	}
	var lines, dup, unknown int64
	check := func(line []byte) {
		lines++
		// Stored byte for byte: the entry's length is the length sent.
		if !bytes.HasPrefix(line, []byte(appendEntryPrefix)) || len(line) != size {
			unknown++
			return
		}
		id := intAfter(line, appendIDKey)
		seen, n := want[int(id>>40)], id&(1<<40-1) // see entryID
		switch {
		case n >= int64(len(seen)):
			unknown++
		case seen[n]:
			dup++
		default:
			seen[n] = true
		}
	}
	if err := readLines(ctx, srv, path+"/logs", nil, func(line []byte) bool {
		check(line)
		return true
	}); err != nil {
		return err
	}
	var missing int64
	for _, seen := range want {
		for _, ok := range seen {
			if !ok {
				missing++
			}
		}
	}
	if dup != 0 || unknown != 0 || missing != 0 {
		return fmt.Errorf("/logs has %d lines for %d entries: %d duplicated, %d unknown, %d missing",
			lines, entries, dup, unknown, missing)
	}

	// Seqs, through SSE (resumed from the last seq if the hub drops it).
	var last, logEvents int64
	var gap error
	ended := false
	for try := 0; !ended && gap == nil && try < appendVerifyRetries; try++ {
		var seq int64
		err := readLines(ctx, srv, path+"/stream", http.Header{"Last-Event-ID": {strconv.FormatInt(last, 10)}}, func(line []byte) bool {
			switch {
			case bytes.HasPrefix(line, []byte("id: ")):
				seq, _ = strconv.ParseInt(string(bytes.TrimSpace(line[4:])), 10, 64)
			case bytes.HasPrefix(line, []byte("event: stream-end")):
				ended = true
				return false
			case bytes.HasPrefix(line, []byte("data: ")) && seq > 0:
				if seq != last+1 {
					gap = fmt.Errorf("stream: seq %d after %d", seq, last)
					return false
				}
				last = seq
				if bytes.HasPrefix(line[len("data: "):], []byte(appendEntryPrefix)) {
					logEvents++
				}
				seq = 0
			}
			return true
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && try == appendVerifyRetries-1 {
			return err
		}
	}
	if gap != nil {
		return gap
	}
	if !ended {
		return fmt.Errorf("stream did not end (last seq %d)", last)
	}
	if logEvents != entries {
		return fmt.Errorf("stream: %d log events for %d entries (seqs 1..%d)", logEvents, entries, last)
	}
	return nil
}

// readLines GETs path and calls fn with each line (without its newline)
// until fn returns false or the body ends.
func readLines(ctx context.Context, srv *server, path string, h http.Header, fn func([]byte) bool) error {
	req, err := http.NewRequestWithContext(ctx, "GET", srv.base+path, nil)
	if err != nil {
		return err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+srv.key)
	// No client timeout: a read-back of a large log takes what it takes,
	// bounded by ctx.
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	rd := bufio.NewReaderSize(resp.Body, 1<<20)
	for {
		line, err := rd.ReadSlice('\n')
		if len(line) > 0 && !fn(bytes.TrimSuffix(line, []byte("\n"))) {
			return nil
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
