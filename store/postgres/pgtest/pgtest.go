// Package pgtest starts a throwaway PostgreSQL server for tests: one per test
// binary, in a temp dir, on a free loopback port, started on first use, and
// a fresh database for every test that asks. Without PostgreSQL's binaries
// the test is skipped, unless RUNHUB_REQUIRE_SERVERS=1 (CI), where that is
// a failure. The same pattern as hub/redis/redistest, with one server per
// binary because initdb takes a second or two and a database takes a few
// milliseconds.
//
// A package whose tests use DB stops the server with TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Without it the server is still stopped when the test binary exits (it is
// started with a parent-death signal), but its temp dir stays behind.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// startTimeout bounds initdb plus the server's start: both take a second or
// two on a loaded 2-core machine; past this something is wrong.
const startTimeout = 60 * time.Second

// stopTimeout is how long a fast shutdown (SIGINT) may take before the
// server is killed.
const stopTimeout = 10 * time.Second

// superuser is the role initdb creates and the tests connect as (trust
// authentication on loopback only).
const superuser = "postgres"

// server is the binary's one PostgreSQL.
type server struct {
	dir  string // temp dir: data/ and the unix socket
	bin  string // the directory of initdb and postgres
	cred *syscall.Credential
	port int
	cmd  *exec.Cmd  // nil while the server is not running
	exit chan error // the server process's Wait result
}

var (
	once    sync.Once
	srv     *server
	srvErr  error
	missing string       // why the binaries were not found; "" when they were
	dbCount atomic.Int64 // names databases uniquely within the binary
)

// DB creates an empty database on the binary's server and returns its
// postgres:// URL; the database is dropped when t ends.
func DB(t testing.TB) string {
	t.Helper()
	once.Do(func() { srv, srvErr = start() })
	if missing != "" {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s and RUNHUB_REQUIRE_SERVERS=1 (run make deps)", missing)
		}
		t.Skipf("%s, skipping (make deps installs PostgreSQL)", missing)
	}
	if srvErr != nil {
		t.Fatalf("pgtest: %v", srvErr)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbCount.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := srv.admin(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		// FORCE ends the connections a test left open, so a leaked pool
		// does not make the drop fail.
		if err := srv.admin(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return srv.url(name)
}

// Main runs the tests and then stops the server, if one was started, and
// removes its directory.
func Main(m *testing.M) {
	code := m.Run()
	if srv != nil {
		if err := srv.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// binDir finds the directory of initdb and postgres: Debian's newest
// /usr/lib/postgresql/N/bin (not on PATH), else PATH.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // numerically: 9 < 15
		return versionOf(b) - versionOf(a)
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	initdb, err := exec.LookPath("initdb")
	if err == nil {
		d := filepath.Dir(initdb)
		if isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL's initdb and postgres not found (in /usr/lib/postgresql/*/bin or PATH)")
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// runAs is the credential of the server's processes: PostgreSQL refuses
// to run as root, so as root they run as the postgres user that Debian's
// package creates; otherwise as the current user.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root and no postgres user to run the server as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// start runs initdb in a new temp dir and starts the server on a free
// loopback port. A missing installation sets missing and returns nil.
func start() (*server, error) {
	s, why, err := initServer()
	if err != nil || s == nil {
		missing = why
		return nil, err
	}
	if err := s.launch(); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	return s, nil
}

// initServer finds the binaries, runs initdb in a new temp dir and picks a
// free loopback port; it does not start the server. Without PostgreSQL's
// binaries it returns no server, no error and why they were not found.
func initServer() (_ *server, missing string, _ error) {
	bin, err := binDir()
	if err != nil {
		return nil, err.Error(), nil
	}
	cred, err := runAs()
	if err != nil {
		return nil, "", err
	}
	dir, err := os.MkdirTemp("", "runhub-pgtest-")
	if err != nil {
		return nil, "", err
	}
	s := &server{dir: dir, bin: bin, cred: cred}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// --no-sync: initdb's own files need no fsync for a throwaway server;
	// the running server keeps PostgreSQL's default durability.
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", s.data(), "-U", superuser, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("initdb: %w: %s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ok = true
	return s, "", nil
}

func (s *server) data() string { return filepath.Join(s.dir, "data") }

// launch starts the server process on s's data dir and port and waits
// until it answers. Its output is appended to postgres.log in s.dir, so a
// restarted server's log follows the previous run's.
func (s *server) launch() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child holds its own descriptor
	serverLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	s.cmd = exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.data(), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.dir,
		// Every test opens a few pools of its own.
		"-c", "max_connections=200")
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// Pdeathsig: the server dies with the test binary even when no
	// TestMain stops it (a panic, a test binary without pgtest.Main).
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exit := make(chan error, 1)
	s.exit = exit
	go func() { exit <- s.cmd.Wait() }()
	for {
		err := s.admin(ctx, "SELECT 1")
		if err == nil {
			return nil
		}
		select {
		case werr := <-exit:
			s.cmd = nil
			return fmt.Errorf("postgres exited: %v: %s", werr, serverLog())
		case <-ctx.Done():
			s.cmd.Process.Kill()
			<-exit
			s.cmd = nil
			return fmt.Errorf("postgres did not answer within %v: %v: %s", startTimeout, err, serverLog())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// halt sends the server sig (SIGINT: fast shutdown; SIGQUIT: immediate,
// which is a crash to the data dir) and waits for it to exit, killing it
// past stopTimeout. A halted server may be launched again.
func (s *server) halt(sig syscall.Signal) error {
	if s.cmd == nil {
		return nil
	}
	defer func() { s.cmd = nil }()
	if s.cmd.Process.Signal(sig) != nil {
		return nil // already gone
	}
	select {
	case <-s.exit:
		return nil
	case <-time.After(stopTimeout):
		s.cmd.Process.Kill()
		<-s.exit
		return fmt.Errorf("postgres did not stop within %v; killed", stopTimeout)
	}
}

func (s *server) url(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", superuser, s.port, db)
}

// admin runs one statement in the postgres database.
func (s *server) admin(ctx context.Context, sql string) error {
	c, err := pgx.Connect(ctx, s.url("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// stop shuts the server down (SIGINT: fast shutdown, which ends open
// connections) and removes its directory.
func (s *server) stop() error {
	err := s.halt(syscall.SIGINT)
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// Server is a PostgreSQL server of one test's own, which the test may stop
// and start again (an outage) on the same port and data dir, unlike the
// binary's shared server behind DB. It mirrors hub/redis/redistest.Server.
type Server struct {
	t testing.TB
	s *server
}

// Start runs initdb and starts a server for t alone; it is stopped and its
// directory removed when t ends. Without PostgreSQL's binaries t is
// skipped (failed under RUNHUB_REQUIRE_SERVERS=1), as with DB.
func Start(t testing.TB) *Server {
	t.Helper()
	s, missing, err := initServer()
	if s == nil && err == nil {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s and RUNHUB_REQUIRE_SERVERS=1 (run make deps)", missing)
		}
		t.Skipf("%s, skipping (make deps installs PostgreSQL)", missing)
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	srv := &Server{t: t, s: s}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	srv.Restart()
	return srv
}

// URL is the postgres:// URL of the server's postgres database, the same
// across restarts.
func (s *Server) URL() string { return s.s.url("postgres") }

// Stop stops the server with PostgreSQL's immediate shutdown: every
// connection is cut and no checkpoint is written, as in a crash, so the
// next start recovers from the WAL. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.s.halt(syscall.SIGQUIT); err != nil {
		s.t.Fatalf("pgtest: %v", err)
	}
}

// Restart starts the server (again, on the same port and data dir) and
// waits until it answers a query. It must follow Stop (or Start's own
// first call).
func (s *Server) Restart() {
	s.t.Helper()
	if s.s.cmd != nil {
		s.t.Fatal("pgtest: Restart of a running server (Stop it first)")
	}
	if err := s.s.launch(); err != nil {
		s.t.Fatalf("pgtest: %v", err)
	}
}
