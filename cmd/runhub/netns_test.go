package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// A network namespace the test makes, joined to the host by veth pairs,
// for the partition test: the node inside it reaches the host only
// through the links the test made and can cut. Every address comes from
// 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the
// internet) and is assigned by the test on its own interfaces; nothing
// outside the namespace and its veth pairs is touched.

// benchNet is the range the namespaces' addresses come from.
var benchNet = netip.MustParsePrefix("198.18.0.0/15")

// netnsBlock is how many addresses one test process takes from benchNet:
// two /30 links (host end .1/.5, namespace end .2/.6).
const netnsBlock = 8

// netnsBase is this process's block of benchNet: chosen by pid, so that
// test processes running at once (go test runs packages in parallel)
// use different subnets, and a rerun with the same pid finds its own
// leftovers under the same names.
func netnsBase() netip.Addr {
	blocks := (1 << (32 - benchNet.Bits())) / netnsBlock
	off := uint32(os.Getpid()%blocks) * netnsBlock
	b := benchNet.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// nthAddr is the address n after a.
func nthAddr(a netip.Addr, n int) netip.Addr {
	for range n {
		a = a.Next()
	}
	return a
}

// ip runs the ip(8) command and returns its error with its output.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// skipOrFail skips the test, or fails it in CI (RUNHUB_REQUIRE_SERVERS=1),
// where every multi-node test must run.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
		t.Fatalf("%s (RUNHUB_REQUIRE_SERVERS=1: network namespaces are required; run as root with iproute2)", msg)
	}
	t.Skipf("%s: skipping the network partition test (it needs root and ip netns)", msg)
}

// netns is a network namespace made by the test, deleted at its end.
type netns struct{ name string }

// newNetns makes the namespace name (after removing one a crashed run
// left behind), with its loopback up. Where namespaces cannot be made
// (no iproute2, not root, a container without CAP_SYS_ADMIN) the test
// is skipped, or fails in CI.
func newNetns(t *testing.T, name string) *netns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFail(t, "ip (iproute2) not installed")
	}
	ip("netns", "del", name) // a leftover of a crashed run; usually absent
	if err := ip("netns", "add", name); err != nil {
		skipOrFail(t, "cannot make a network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := ip("netns", "del", name); err != nil {
			t.Errorf("remove the namespace: %v", err)
		}
	})
	ns := &netns{name: name}
	if err := ip("-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	return ns
}

// link joins the namespace to the host with a veth pair: host (in the
// host's namespace, with hostAddr) and inside (in the namespace, with
// nsAddr), both up. The pair goes when the namespace is deleted; the
// test's cleanup also removes the host end in case that failed.
func (ns *netns) link(t *testing.T, host, inside string, hostAddr, nsAddr netip.Prefix) {
	t.Helper()
	ip("link", "del", host) // a leftover of a crashed run; usually absent
	if err := ip("link", "add", host, "type", "veth", "peer", "name", inside, "netns", ns.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ip("link", "del", host); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			t.Errorf("remove %s: %v", host, err)
		}
	})
	for _, args := range [][]string{
		{"addr", "add", hostAddr.String(), "dev", host},
		{"link", "set", host, "up"},
		{"-n", ns.name, "addr", "add", nsAddr.String(), "dev", inside},
		{"-n", ns.name, "link", "set", inside, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
}

// startServerIn starts `runhub serve` inside the namespace, listening on
// addr (an address of the namespace), and waits until it is alive.
func (ns *netns) startServerIn(t *testing.T, addr, dataDir string, args ...string) *server {
	t.Helper()
	// ip netns exec enters the namespace and execs runhub, so the
	// process is runhub itself: Kill and Wait reach it.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.name, runhubBinary(t),
		"serve", "--addr", addr, "--data-dir", dataDir}, args...)...)
	s := &server{cmd: cmd, base: "http://" + addr, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Stdout = &lockedWriter{w: s.logs, mu: s.mu}
	cmd.Stderr = &lockedWriter{w: s.logs, mu: s.mu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if res, err := client.Get(s.base + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return s
			}
		}
	}
	t.Fatalf("the node in namespace %s did not start; logs:\n%s", ns.name, s.output())
	return nil
}

// forward relays every TCP connection accepted on listen (host:0) to
// target, until the test ends: how the namespaced node reaches
// PostgreSQL and Redis, which listen on the host's loopback only. It
// returns the address it listens on.
func forward(t *testing.T, listen, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil { // the test is over
			c.Close()
			return false
		}
		conns[c] = true
		return true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					in.Close()
					return
				}
				if !track(in) || !track(out) {
					in.Close()
					out.Close()
					return
				}
				// Either direction ending ends both.
				done := make(chan struct{}, 2)
				pipe := func(dst, src net.Conn) {
					io.Copy(dst, src)
					done <- struct{}{}
				}
				go pipe(out, in)
				go pipe(in, out)
				<-done
				in.Close()
				out.Close()
				<-done
				mu.Lock()
				if conns != nil {
					delete(conns, in)
					delete(conns, out)
				}
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
