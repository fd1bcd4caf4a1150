package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// dialStuck opens n WebSocket subscriptions that never read, with small
// socket receive buffers so that they stop taking data after a few KiB.
func dialStuck(ctx context.Context, srv *server, runPath string, n int) ([]*websocket.Conn, error) {
	d := &net.Dialer{}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetReadBuffer(4 << 10)
		}
		return c, err
	}}
	url := "ws" + strings.TrimPrefix(srv.base, "http") + runPath + "/stream?start=latest"
	out := make([]*websocket.Conn, 0, n)
	for range n {
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: authHeader(srv), HTTPClient: &http.Client{Transport: tr}})
		if err != nil {
			return nil, fmt.Errorf("slow client: %w", err)
		}
		c.SetReadLimit(-1)
		out = append(out, c)
	}
	return out, nil
}

// stuckOutcome reports, from the server's metrics, how many connections it
// closed as slow consumers and how many subscriptions remain, then closes
// the clients that never read.
func stuckOutcome(srv *server, cs []*websocket.Conn) string {
	time.Sleep(time.Second) // let closes in progress finish
	slow := metricValue(srv, "runhub_hub_slow_consumers_total")
	subs := metricValue(srv, "runhub_hub_subscriptions")
	for _, c := range cs {
		c.CloseNow()
	}
	return fmt.Sprintf("%d disconnected by the server as slow consumers; %d subscriptions left on the server", slow, subs)
}

// metricValue reads one unlabelled series from the server's /metrics.
func metricValue(srv *server, name string) int64 {
	resp, err := srv.client.Get(srv.base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f)
		}
	}
	return -1
}

// peakRSS is the process's high-water mark of resident memory (VmHWM).
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
