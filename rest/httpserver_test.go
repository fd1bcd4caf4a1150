package rest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
)

// serveReal serves New(cfg) with the http.Server `runhub serve` uses
// (Server.HTTPServer) on a loopback port and returns its address.
func serveReal(t *testing.T, cfg Config) string {
	t.Helper()
	withDeps(t, &cfg)
	srv := New(cfg).HTTPServer()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// rawConn dials addr and writes head (request line and headers, "\n"
// separated, without the blank line) and then body.
func rawConn(t *testing.T, addr, head, body string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	msg := strings.ReplaceAll(strings.TrimSpace(head), "\n", "\r\n") + "\r\n\r\n" + body
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	return c
}

// readClosed waits (up to the conn's deadline) for the server to close c
// and fails if it sends anything more or the deadline passes first.
func readClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	b, err := br.ReadByte()
	if err == nil {
		t.Fatalf("the server kept the connection open and sent %q", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection is still open: %v", err)
	}
}

// TestRefusedBeforeBodyAnsweredAtOnce: a request refused before its body is
// read (401, 403, 404, 413, 429) is answered at once, says Connection:
// close and its connection is closed, although the client announced a
// body it never sends. Before: the 401 waited for the body (no deadline).
func TestRefusedBeforeBodyAnsweredAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	// The real default timeouts: the answer must not come from the body
	// deadline (2 min) but at once.
	addr := serveReal(t, Config{Store: e.st, RateLimit: &RateLimit{PerMinute: 1}})
	tasks := e.tasksPath(e.p1) + "/"
	// Use up the rate limit of allKey.
	if c := rawConn(t, addr, "GET "+tasks+" HTTP/1.1\nHost: x\nConnection: close\nAuthorization: Bearer "+e.allKey, ""); c != nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("first request: %v %v", res, err)
		}
	}
	for _, tc := range []struct {
		name, head string
		status     int
	}{
		{"no credentials", "POST " + tasks + " HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 100000", 401},
		{"unknown key", "POST " + tasks + " HTTP/1.1\nHost: x\nContent-Length: 100000\nAuthorization: Bearer rh_nope", 401},
		{"read-only key", "POST " + tasks + " HTTP/1.1\nHost: x\nContent-Length: 40000\nAuthorization: Bearer " + e.readKey, 403},
		{"no route", "POST /nope HTTP/1.1\nHost: x\nContent-Length: 40000\nAuthorization: Bearer " + e.writeKey, 404},
		{"too large", "POST " + tasks + " HTTP/1.1\nHost: x\nContent-Length: 40000000\nAuthorization: Bearer " + e.writeKey, 413},
		{"throttled", "POST " + tasks + " HTTP/1.1\nHost: x\nContent-Length: 40000\nAuthorization: Bearer " + e.allKey, 429},
		{"chunked, no credentials", "POST " + tasks + " HTTP/1.1\nHost: x\nTransfer-Encoding: chunked", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := rawConn(t, addr, tc.head, "")
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			br := bufio.NewReader(c)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer within 3 s: %v", err)
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, tc.status, body)
			}
			if !res.Close {
				t.Errorf("the response does not say Connection: close: %v", res.Header)
			}
			checkErrorShape(t, tc.name, &resp{status: res.StatusCode, header: res.Header, body: body})
			readClosed(t, br)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answer and close took %v", d)
			}
		})
	}
}

// TestBodyDeadlineCutsStalledBody: an authenticated client that stops in
// the middle of its body is answered 408 and cut at the body deadline.
// Before: no deadline, the request waited forever.
func TestBodyDeadlineCutsStalledBody(t *testing.T) {
	e := newEnv(t, nil)
	const deadline = 300 * time.Millisecond
	addr := serveReal(t, Config{Store: e.st, Timeouts: Timeouts{Body: deadline}})
	start := time.Now()
	c := rawConn(t, addr, "POST "+e.tasksPath(e.p1)+"/ HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 1000\nAuthorization: Bearer "+e.writeKey, `{"title": "sta`)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within 5 s: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	if d := time.Since(start); d < deadline || d > 3*time.Second {
		t.Errorf("answered after %v, want about %v", d, deadline)
	}
	er := wantAPIError(t, &resp{status: res.StatusCode, header: res.Header, body: body}, http.StatusRequestTimeout, "invalid_request", "")
	if er.Code != "request_timeout" || !res.Close {
		t.Errorf("code %q close %v", er.Code, res.Close)
	}
	readClosed(t, br)
	var list struct{ Count int }
	if err := json.Unmarshal(e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/", Key: e.readKey}).body, &list); err != nil || list.Count != 0 {
		t.Errorf("tasks after a cut body: %d %v", list.Count, err)
	}
}

// TestBodyDeadlineSparesHandlersAndStreams: the body deadline bounds the
// body only. A handler that runs past it after reading its body, and a
// bodiless GET that streams past it, keep their contexts; a keep-alive
// connection serves a second request after it.
func TestBodyDeadlineSparesHandlersAndStreams(t *testing.T) {
	const deadline = 200 * time.Millisecond
	slow := func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		select {
		case <-time.After(3 * deadline):
			fmt.Fprint(w, "done")
		case <-r.Context().Done():
			// Nobody may read this, but a test on a live conn would.
			fmt.Fprint(w, "cancelled")
		}
	}
	addr := serveReal(t, Config{Store: newEnv(t, nil).st, Timeouts: Timeouts{Body: deadline, Header: deadline},
		Extra: func(r *mux.Router) { r.HandleFunc("/slow", slow) }})
	c := rawConn(t, addr, "POST /slow HTTP/1.1\nHost: x\nContent-Length: 2", "{}")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i, method := range []string{"POST", "GET"} {
		if i > 0 {
			time.Sleep(2 * deadline)
			if _, err := io.WriteString(c, method+" /slow HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		b, _ := io.ReadAll(res.Body)
		if string(b) != "done" {
			t.Errorf("%s: %q, want done", method, b)
		}
	}
}

// TestHeaderTimeoutCutsSlowloris: a client trickling header bytes is cut
// at the header timeout of the real server config.
func TestHeaderTimeoutCutsSlowloris(t *testing.T) {
	const timeout = 300 * time.Millisecond
	addr := serveReal(t, Config{Store: newEnv(t, nil).st, Timeouts: Timeouts{Header: timeout}})
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// No blank line: the request never ends. Keep trickling.
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := fmt.Fprintf(c, "X-%d: y\r\n", i); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-trickled }()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	readClosed(t, bufio.NewReader(c))
	if d := time.Since(start); d < timeout || d > 2*time.Second {
		t.Errorf("cut after %v, want about %v", d, timeout)
	}
}

// TestIdleTimeoutClosesKeepAlive: a keep-alive connection with no next
// request is closed after the idle timeout.
func TestIdleTimeoutClosesKeepAlive(t *testing.T) {
	const timeout = 300 * time.Millisecond
	addr := serveReal(t, Config{Store: newEnv(t, nil).st, Timeouts: Timeouts{Idle: timeout}})
	c := rawConn(t, addr, "GET /healthz HTTP/1.1\nHost: x", "")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ok map[string]string
	if err := json.NewDecoder(res.Body).Decode(&ok); err != nil || res.Close {
		t.Fatalf("healthz: %v close=%v", err, res.Close)
	}
	start := time.Now()
	readClosed(t, br)
	if d := time.Since(start); d < timeout/2 || d > 2*time.Second {
		t.Errorf("closed after %v, want about %v", d, timeout)
	}
}

// TestSeparateMetrics: with SeparateMetrics the API answers /metrics 404
// and MetricsServer serves it, counting the API's requests.
func TestSeparateMetrics(t *testing.T) {
	e := newEnv(t, nil)
	c := Config{Store: e.st, SeparateMetrics: true}
	withDeps(t, &c)
	s := New(c)
	api := s.HTTPServer()
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ms := s.MetricsServer()
	mLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { api.Serve(apiLn); done <- struct{}{} }()
	go func() { ms.Serve(mLn); done <- struct{}{} }()
	t.Cleanup(func() { api.Close(); ms.Close(); <-done; <-done })
	apiURL, mURL := "http://"+apiLn.Addr().String(), "http://"+mLn.Addr().String()

	wantStatus(t, doWith(t, e.client, apiURL, req{Method: "GET", Path: "/metrics"}), 404)
	wantStatus(t, doWith(t, e.client, apiURL, req{Method: "GET", Path: "/healthz"}), 200)
	res, err := e.client.Get(mURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(b), `runhub_http_requests_total{method="GET",route="/healthz",status="200"} 1`) ||
		!strings.Contains(string(b), `route="unmatched",status="404"} 1`) {
		t.Fatalf("metrics listener: %d\n%s", res.StatusCode, b)
	}
	if res, err := e.client.Get(mURL + "/healthz"); err != nil || res.StatusCode != 404 {
		t.Fatalf("the metrics listener serves more than /metrics: %v %v", res, err)
	} else {
		res.Body.Close()
	}
}
