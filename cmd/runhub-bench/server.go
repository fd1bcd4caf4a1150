package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// server is the runhub process under load.
type server struct {
	cmd     *exec.Cmd
	base    string
	key     string
	dataDir string
	client  *http.Client
	dead    bool // killed (-9) and waited for by the nodes scenario
}

// freeLoopback returns a loopback address that was free a moment ago.
func freeLoopback() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startServer(ctx context.Context, c *commonFlags, extra ...string) (*server, error) {
	dir, err := os.MkdirTemp("", "runhub-bench")
	if err != nil {
		return nil, err
	}
	return startServerIn(ctx, c, dir, extra...)
}

// startServerIn starts a server on a free loopback port with the data
// directory dir (several servers may share one: they are nodes of one
// deployment) and extra serve flags.
func startServerIn(ctx context.Context, c *commonFlags, dir string, extra ...string) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := append([]string{"serve", "--addr", addr, "--data-dir", dir, "--log-level", "warn"}, extra...)
	cmd := exec.CommandContext(ctx, c.binary, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (build it with make build)", c.binary, err)
	}
	s := &server{cmd: cmd, base: "http://" + addr, dataDir: dir,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "bootstrap-key")); err == nil {
			if resp, err := http.Get(s.base + "/healthz"); err == nil {
				resp.Body.Close()
				s.key = strings.TrimSpace(string(b))
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.stop(false)
			return nil, fmt.Errorf("server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) stop(keep bool) {
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
	if !keep {
		os.RemoveAll(s.dataDir)
	}
}

// call sends a JSON request and decodes the answer into out.
func (s *server) call(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// startWithRun starts the server and creates the run every scenario follows.
func startWithRun(ctx context.Context, c *commonFlags) (*server, string, error) {
	srv, err := startServer(ctx, c)
	if err != nil {
		return nil, "", err
	}
	runPath, err := srv.newRun(ctx)
	if err != nil {
		srv.stop(c.keep)
		return nil, "", err
	}
	return srv, runPath, nil
}

// newRun creates a task and a run and returns the run's API path.
func (s *server) newRun(ctx context.Context) (string, error) {
	var task, run struct{ ID string }
	if err := s.call(ctx, "POST", "/api/projects/1/tasks/", []byte(`{"title":"bench"}`), &task); err != nil {
		return "", err
	}
	path := "/api/projects/1/tasks/" + task.ID + "/runs/"
	if err := s.call(ctx, "POST", path, []byte(`{}`), &run); err != nil {
		return "", err
	}
	return path + run.ID, nil
}

// procStat reads a process's resident memory (bytes) and CPU time.
func procStat(pid int) (rss int64, cpu time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may contain spaces) start after ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return pages * int64(os.Getpagesize()), time.Duration(utime+stime) * time.Second / ticks, nil
}
