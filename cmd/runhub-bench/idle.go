package main

import (
	"flag"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// idleSettle is how long the server is left alone before and after the
// connections, so that its heap and RSS settle.
const idleSettle = 3 * time.Second

func idleCmd(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	common := addCommon(fs)
	conns := fs.Int("conns", 10000, "idle subscribed WebSocket connections")
	endpoint := fs.String("endpoint", "stream", "stream (the run's own WebSocket) or ws (GET /ws, subscribed to the run)")
	hold := fs.Duration("hold", 0, "keep the connections open this long after measuring (to profile the server)")
	fs.Parse(args)
	if *conns < 1 || *conns > 50000 {
		return fmt.Errorf("bounds: 1..50000 connections")
	}
	if *endpoint != "stream" && *endpoint != "ws" {
		return fmt.Errorf("-endpoint: stream or ws, not %q", *endpoint)
	}
	ctx, cancel := withTimeout(time.Minute + min(*hold, 5*time.Minute))
	defer cancel()
	srv, runPath, err := startWithRun(ctx, common)
	if err != nil {
		return err
	}
	defer srv.stop(common.keep)
	time.Sleep(idleSettle)
	rss0, _, _ := procStat(srv.cmd.Process.Pid)
	url := "ws" + strings.TrimPrefix(srv.base, "http") + runPath + "/stream?start=latest"
	if *endpoint == "ws" {
		url = "ws" + strings.TrimPrefix(srv.base, "http") + "/ws"
	}
	cs := make([]*websocket.Conn, 0, *conns)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // bounded dial concurrency
	var dialErr error
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: authHeader(srv)})
			if err == nil && *endpoint == "ws" {
				if err = muxSubscribe(ctx, c, path.Base(runPath), "latest"); err != nil {
					c.CloseNow()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				dialErr = err
				return
			}
			cs = append(cs, c)
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range cs {
			c.CloseNow()
		}
	}()
	if dialErr != nil {
		return fmt.Errorf("dial: %w (%d connected)", dialErr, len(cs))
	}
	time.Sleep(idleSettle)
	rss1, _, _ := procStat(srv.cmd.Process.Pid)
	fmt.Printf("idle: %d subscribed WebSocket connections (%s)\n", len(cs), *endpoint)
	fmt.Printf("server RSS: %.1f MiB before, %.1f MiB after: %.1f KiB per connection\n",
		float64(rss0)/(1<<20), float64(rss1)/(1<<20), float64(rss1-rss0)/1024/float64(len(cs)))
	time.Sleep(min(*hold, 5*time.Minute))
	return nil
}
