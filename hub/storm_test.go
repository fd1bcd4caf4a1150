package hub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"runhub/hub"
)

// stormClient is one subscriber of the storm: it follows the run over many
// connections, resuming each with the last seq it saw, and checks every
// event it is given against that seq.
type stormClient struct {
	e    *htEnv
	run  string
	ws   bool
	rng  *rand.Rand
	last int64 // last seq seen

	connects      int
	budget        int64 // events this connection may still take before the client cuts it
	events        int64
	dups, gaps    int
	firstProblem  string
	ended         bool
	endStatus     string
	connectErrors int
}

// errCut: the client cut the connection after its event budget.
var errCut = errors.New("client cut the connection")

// see checks one event's seq against the last one; errCut when the
// connection's event budget is spent.
func (c *stormClient) see(seq int64) error {
	c.events++
	switch {
	case seq <= c.last:
		c.dups++
		if c.firstProblem == "" {
			c.firstProblem = fmt.Sprintf("duplicate: seq %d after %d (connection %d)", seq, c.last, c.connects)
		}
		return nil // the cursor stays where it was
	case seq != c.last+1:
		c.gaps++
		if c.firstProblem == "" {
			c.firstProblem = fmt.Sprintf("gap: seq %d after %d (connection %d)", seq, c.last, c.connects)
		}
	}
	c.last = seq
	if c.budget--; c.budget <= 0 {
		return errCut
	}
	return nil
}

// follow connects until the stream ends or ctx is done. Each connection is
// cut at a random moment (a random time, possibly mid-frame, or after a
// random number of events, whichever comes first) unless the stream ends
// first.
func (c *stormClient) follow(ctx context.Context, maxLife time.Duration, maxEvents int64) {
	for ctx.Err() == nil && !c.ended {
		life := time.Duration(c.rng.Int64N(int64(maxLife)))
		c.budget = 1 + c.rng.Int64N(maxEvents)
		cctx, cancel := context.WithTimeout(ctx, life)
		c.connects++
		var err error
		if c.ws {
			err = c.followWS(cctx)
		} else {
			err = c.followSSE(cctx)
		}
		cancel()
		if err != nil && err != errCut && cctx.Err() == nil && ctx.Err() == nil {
			// Not our cut: the server closed, or the connection failed.
			c.connectErrors++
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (c *stormClient) followSSE(ctx context.Context) error {
	var hdr []string
	if c.last > 0 || c.rng.IntN(2) == 0 {
		hdr = []string{"Last-Event-ID", strconv.FormatInt(c.last, 10)}
	}
	s, err := c.e.openSSE(ctx, c.run, "", hdr...)
	if err != nil {
		return err
	}
	defer s.close()
	if s.res.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", s.res.StatusCode)
	}
	for {
		ev, err := s.next()
		if err != nil {
			return err
		}
		switch {
		case ev.event == "stream-end":
			var v struct{ Type, Status string }
			json.Unmarshal([]byte(ev.data), &v)
			c.ended, c.endStatus = true, v.Status
			return nil
		case ev.event == "keepalive":
		case ev.hasID:
			if err := c.see(ev.id); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected event %+v", ev)
		}
	}
}

var seqKey = []byte(`,"seq":`)

func (c *stormClient) followWS(ctx context.Context) error {
	ws, err := c.e.dialWS(ctx, c.run, "after="+strconv.FormatInt(c.last, 10), c.e.client)
	if err != nil {
		return err
	}
	defer ws.CloseNow()
	for {
		b, err := readJSONRPC(ctx, ws)
		if err != nil {
			return err
		}
		if bytes.HasPrefix(b, []byte(`{"jsonrpc":"2.0","method":"event","params":`)) {
			// A cheap parse: the frame is {...,"params":{"run_id":...,"seq":N,"event":...}}.
			i := bytes.Index(b, seqKey)
			if i < 0 {
				return fmt.Errorf("event without seq: %.200s", b)
			}
			rest := b[i+len(seqKey):]
			j := bytes.IndexByte(rest, ',')
			seq, err := strconv.ParseInt(string(rest[:max(j, 0)]), 10, 64)
			if err != nil {
				return fmt.Errorf("bad seq in %.200s", b)
			}
			if c.events%1000 == 0 { // a full decode now and then
				var n wsNote
				if err := json.Unmarshal(b, &n); err != nil || n.Params.Seq == nil || *n.Params.Seq != seq || n.Params.RunID != c.run {
					return fmt.Errorf("bad notification %.200s", b)
				}
			}
			if err := c.see(seq); err != nil {
				return err
			}
			continue
		}
		var n wsNote
		if err := json.Unmarshal(b, &n); err != nil || n.Method != "stream_end" {
			return fmt.Errorf("unexpected frame %.200s", b)
		}
		c.ended, c.endStatus = true, n.Params.Status
		// The server closes with 1000 after stream_end.
		if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			return fmt.Errorf("after stream_end: %v", err)
		}
		return nil
	}
}

// TestReconnectStorm is the acceptance test of the exactly-once guarantee:
// 200 clients (half SSE, half WebSocket) keep dropping their connections at
// random moments and resuming with their last seq while 10,000 entries are
// appended by 4 concurrent appenders (1,000 requests of 10 entries); after
// the run completes each client reads to the stream end and must have seen
// every seq exactly once, in order.
//
// Under -race on 2 cores it takes about 55-70 s; -short runs 50 clients
// (about 13 s).
func TestReconnectStorm(t *testing.T) {
	clients, requests := 200, 1000
	if testing.Short() {
		clients = 50
	}
	const appenders, perRequest = 4, 10
	src := &countingSource{}
	e := newHTEnv(t, hub.Config{}, htOptions{source: func(s hub.EventSource) hub.EventSource { src.EventSource = s; return src }})
	run := e.newRun()
	start := time.Now()
	seed := uint64(start.UnixNano())
	t.Logf("seed %d", seed)
	ctx := testCtx(t, 150*time.Second)

	cs := make([]*stormClient, clients)
	var wg sync.WaitGroup
	for i := range cs {
		cs[i] = &stormClient{e: e, run: run, ws: i%2 == 1, rng: rand.New(rand.NewPCG(uint64(i), seed))}
		wg.Add(1)
		go func(c *stormClient) {
			defer wg.Done()
			// Staggered starts: some clients join late and catch up.
			time.Sleep(time.Duration(c.rng.IntN(500)) * time.Millisecond)
			c.follow(ctx, 20*time.Second, 2000)
		}(cs[i])
	}

	var next atomic.Int64 // next request number
	var appendErr atomic.Pointer[error]
	var aw sync.WaitGroup
	for a := 0; a < appenders; a++ {
		aw.Add(1)
		go func() {
			defer aw.Done()
			for {
				r := int(next.Add(1) - 1)
				if r >= requests || appendErr.Load() != nil {
					return
				}
				entries := make([]string, perRequest)
				for i := range entries {
					entries[i] = logEntry(r*perRequest+i, 0)
				}
				if err := e.tryAppend(run, entries); err != nil {
					appendErr.Store(&err)
					return
				}
			}
		}()
	}
	aw.Wait()
	if p := appendErr.Load(); p != nil {
		t.Fatalf("append: %v", *p)
	}
	appended := time.Since(start)
	e.setStatus(run, "completed")
	final := e.lastSeq(run)
	if want := int64(1 + requests*perRequest + 1); final != want {
		t.Fatalf("last seq %d, want %d", final, want)
	}
	wg.Wait()
	total := time.Since(start)

	var connects, connectErrors int
	var events int64
	for i, c := range cs {
		connects += c.connects
		connectErrors += c.connectErrors
		events += c.events
		kind := "sse"
		if c.ws {
			kind = "ws"
		}
		if !c.ended || c.endStatus != "completed" || c.last != final || c.dups > 0 || c.gaps > 0 {
			t.Errorf("client %d (%s): ended %v (%q), last seq %d of %d, %d duplicates, %d gaps, %d connections; first problem: %s",
				i, kind, c.ended, c.endStatus, c.last, final, c.dups, c.gaps, c.connects, c.firstProblem)
		}
	}
	t.Logf("%d clients, %d entries: appends took %v, all clients done after %v; %d connections (%d ended by the server or failed), %d events delivered, %d store reads by the hub",
		clients, requests*perRequest, appended.Round(time.Millisecond), total.Round(time.Millisecond), connects, connectErrors, events, src.reads.Load())
	if ctx.Err() != nil {
		t.Fatalf("storm did not finish in time: %v", ctx.Err())
	}
	waitFor(t, 10*time.Second, "the hub to drop the run", func() bool {
		r, s := e.h.StateForTest()
		return r == 0 && s == 0
	})
}
