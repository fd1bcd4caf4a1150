// Package redistest starts throwaway redis-server processes for tests: one
// per test, on a free loopback port, in the test's temp dir, killed at the
// end of the test. Without redis-server the test is skipped, unless
// RUNHUB_REQUIRE_SERVERS=1 (CI), where that is a failure.
package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is a redis-server on a loopback port.
type Server struct {
	t    testing.TB
	port int
	dir  string
	cmd  *exec.Cmd
}

// Start starts redis-server for t.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatal("redis-server not available and RUNHUB_REQUIRE_SERVERS=1 (run make deps)")
		}
		t.Skip("redis-server not available, skipping (make deps installs it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &Server{t: t, port: port, dir: t.TempDir()}
	r.Restart()
	t.Cleanup(r.Stop)
	return r
}

// URL is the server's redis:// URL.
func (r *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

// Restart starts the server (again, on the same port) and waits until it
// answers PING.
func (r *Server) Restart() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", r.port))
		if err == nil {
			c.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			c.Close()
			if strings.HasPrefix(string(buf[:n]), "+PONG") {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatal("redis-server did not start")
}

// Stop kills the server (as a crash would).
func (r *Server) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}
