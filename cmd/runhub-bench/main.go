// Command runhub-bench is runhub's load generator. It starts a runhub
// server process of its own on a loopback port (a fresh data directory),
// drives it, and reports what it measured. Every scenario is bounded in
// connections and time and talks only to 127.0.0.1.
//
//	runhub-bench fanout [-subs 2000] [-transport ws|sse] [-endpoint stream|ws] [-publishers 16] [-size 200] [-rate 0] [-duration 20s]
//	runhub-bench idle   [-conns 10000] [-endpoint stream|ws]
//	runhub-bench command [-n 2000] [-cross=true]
//	runhub-bench append  [-writers 16] [-runs 16] [-batch 100] [-size 200] [-duration 10s] [-server-args "..."]
//	runhub-bench many-runs [-path rest|agent|ingest|all] [-runs 2000] [-subs 3] [-rate 10000] [-size 200] [-duration 20s] [-database-url postgres://...] [-server-args "..."] [-server-profile FILE]
//	runhub-bench nodes   -database-url postgres://... [-n 3] [-redis-url ...] [-subs 600] [-runs 20] [-rate 200] [-transport ws|stream|sse|mix] [-duration 20s] [-kill]
//
// fanout: N subscribers follow one run while publishers append one entry
// per request (as fast as they can, or at -rate appends/s in total). It
// prints deliveries/s, end-to-end latency percentiles (append sent → event
// received, one clock), server RSS and CPU, its own CPU, and the lost and
// duplicated counts, which must be 0.
//
// many-runs: -runs runs, each followed by -subs /ws connections (one
// subscription each), while -rate appends/s of one entry each are offered,
// spread evenly over the runs, through one publishing path: REST append_log,
// an agent per run on the agent WebSocket (proxy/agentclient), or an NDJSON
// event_stream upload per run (lines written as they fall due). -path all
// runs the three one after another, each on a fresh server. Per path it
// prints appends offered/accepted per second, deliveries/s, latency
// percentiles (append sent → subscriber received), server CPU per accepted
// append, and the lost/duplicated/extra counts, which must be 0. An
// upload's lines are counted accepted by its answer, which comes after the
// window: deliveries within the window and the latency tell whether the
// server kept up.
//
// command: POST .../command round trips to a reference agent, through the
// node it is connected to and through a second node (Redis relay).
//
// append: writers POST append_log batches as fast as each is acknowledged
// (after its commit), on -runs runs; it prints entries/s, requests/s,
// request latency percentiles and server CPU, then reads every run back and
// fails unless each acknowledged entry is stored exactly once with gap-free
// seqs. -server-args (and the inherited environment) select the backend.
//
// idle: N WebSocket connections each subscribed to a run, then quiet; it
// prints the server's RSS growth per connection.
//
// -endpoint picks the WebSocket fanout and idle use: the run's own
// .../stream (default) or the multiplexed /ws, where each connection
// subscribes to the run over JSON-RPC.
//
// nodes: -n runhub nodes (each its own data directory and --node-id) on one
// PostgreSQL (a database of its own, created beside the one -database-url
// names and dropped at the end) and one Redis (-redis-url, or a
// redis-server it starts), behind HAProxy with the README's configuration
// (-haproxy-config). Subscribers and publishers talk only to the balancer,
// so they spread over the nodes; publishers offer -rate appends/s and retry
// with the same Idempotency-Key, subscribers reconnect after any close or
// error and resume after their last seq. It prints deliveries/s, latency
// percentiles and the lost/duplicated counts; with -kill it kills the last
// node (-9) halfway through and prints, for that node's clients, the time
// from the kill to each one's next event in order (p50/p99/max).
// `runhub-bench nodes -h` says how to start a throwaway PostgreSQL.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: runhub-bench fanout|idle|command|append|nodes|many-runs [flags]")
		os.Exit(2)
	}
	raiseFileLimit()
	var err error
	switch os.Args[1] {
	case "fanout":
		err = fanoutCmd(os.Args[2:])
	case "idle":
		err = idleCmd(os.Args[2:])
	case "command":
		err = commandCmd(os.Args[2:])
	case "append":
		err = appendCmd(os.Args[2:])
	case "nodes":
		err = nodesCmd(os.Args[2:])
	case "many-runs":
		err = manyRunsCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown scenario %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "runhub-bench:", err)
		os.Exit(1)
	}
}

// raiseFileLimit lifts the open-files limit to its hard maximum for this
// process and the server it starts: 10,000 connections need 20,000 fds.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// commonFlags are shared by the scenarios.
type commonFlags struct {
	binary string
	keep   bool
}

func addCommon(fs *flag.FlagSet) *commonFlags {
	c := &commonFlags{}
	fs.StringVar(&c.binary, "runhub", "bin/runhub", "runhub binary to start")
	fs.BoolVar(&c.keep, "keep", false, "keep the server's data directory")
	return c
}

// timeout bounds every scenario beyond its own duration.
const setupTimeout = 2 * time.Minute

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d+setupTimeout)
}
