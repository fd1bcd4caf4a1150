// Command runhub-bench is runhub's load generator. It starts a runhub
// server process of its own on a loopback port (a fresh data directory),
// drives it, and reports what it measured. Every scenario is bounded in
// connections and time and talks only to 127.0.0.1.
//
//	runhub-bench fanout [-subs 2000] [-transport ws|sse] [-publishers 16] [-size 200] [-rate 0] [-duration 20s]
//	runhub-bench idle   [-conns 10000]
//	runhub-bench command [-n 2000] [-cross=true]
//	runhub-bench append  [-writers 16] [-runs 16] [-batch 100] [-size 200] [-duration 10s] [-server-args "..."]
//
// fanout: N subscribers follow one run while publishers append one entry
// per request (as fast as they can, or at -rate appends/s in total). It
// prints deliveries/s, end-to-end latency percentiles (append sent → event
// received, one clock), server RSS and CPU, its own CPU, and the lost and
// duplicated counts, which must be 0.
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
		fmt.Fprintln(os.Stderr, "usage: runhub-bench fanout|idle|command|append [flags]")
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
