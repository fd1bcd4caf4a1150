package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"runhub/proxy/agentclient"
)

// commandCmd measures command round trips: POST .../command (cancel) to a
// reference agent, through the node the agent is connected to and, with
// redis-server installed, through a second node (relayed over Redis).
func commandCmd(args []string) error {
	fs := flag.NewFlagSet("command", flag.ExitOnError)
	common := addCommon(fs)
	n := fs.Int("n", 2000, "round trips per path")
	cross := fs.Bool("cross", true, "also measure through a second node (needs redis-server)")
	fs.Parse(args)
	if *n < 1 || *n > 100000 {
		return fmt.Errorf("bounds: 1..100000 round trips")
	}
	ctx, cancel := withTimeout(5 * time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "runhub-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var extra []string
	if *cross {
		url, stopRedis, err := startRedis(ctx, dir)
		if err != nil {
			return err
		}
		defer stopRedis()
		extra = []string{"--redis-url", url}
	}
	a, err := startServerIn(ctx, common, dir, extra...)
	if err != nil {
		return err
	}
	defer a.stop(true)
	runPath, err := a.newRun(ctx)
	if err != nil {
		return err
	}
	var tb struct {
		Token string `json:"token"`
		URL   string `json:"ws_url"`
	}
	if err := a.call(ctx, "GET", runPath+"/connection_token?role=agent", nil, &tb); err != nil {
		return err
	}
	agent := agentclient.New(agentclient.Options{URL: tb.URL, Token: tb.Token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	actx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	go agent.Run(actx)
	// Connected when a command gets through.
	deadline := time.Now().Add(10 * time.Second)
	for a.call(ctx, "POST", runPath+"/command", []byte(`{"method":"cancel"}`), nil) != nil {
		if time.Now().After(deadline) {
			return errors.New("the agent did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("command: %d round trips per path (cancel), agent connected to node A\n", *n)
	if err := measureCommands(ctx, a, runPath, *n, "same node"); err != nil {
		return err
	}
	if *cross {
		b, err := startServerIn(ctx, common, dir, extra...)
		if err != nil {
			return err
		}
		defer b.stop(true)
		if err := measureCommands(ctx, b, runPath, *n, "cross node"); err != nil {
			return err
		}
	}
	return nil
}

func measureCommands(ctx context.Context, srv *server, runPath string, n int, label string) error {
	for range 50 { // warm up connections and caches
		if err := srv.call(ctx, "POST", runPath+"/command", []byte(`{"method":"cancel"}`), nil); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
	}
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		t := time.Now()
		var r struct {
			Result struct {
				Cancelled bool `json:"cancelled"`
			} `json:"result"`
		}
		if err := srv.call(ctx, "POST", runPath+"/command", []byte(`{"jsonrpc":"2.0","id":1,"method":"cancel"}`), &r); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		if !r.Result.Cancelled {
			return fmt.Errorf("%s: unexpected answer %+v", label, r)
		}
		lat = append(lat, time.Since(t))
	}
	total := time.Since(start)
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("%s: p50 %v  p99 %v  max %v  (%.0f round trips/s, one at a time)\n", label,
		pct(.50).Round(time.Microsecond), pct(.99).Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), float64(n)/total.Seconds())
	return nil
}

// startRedis starts a throwaway redis-server on a free loopback port.
func startRedis(ctx context.Context, dir string) (url string, stop func(), err error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return "", nil, errors.New("redis-server not found (make deps installs it; or -cross=false)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.CommandContext(ctx, "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() { cmd.Process.Kill(); cmd.Wait() }
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
			return fmt.Sprintf("redis://127.0.0.1:%d/0", port), stop, nil
		}
	}
	stop()
	return "", nil, errors.New("redis-server did not start")
}
