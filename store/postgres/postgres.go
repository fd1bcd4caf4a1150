// Package postgres is the store.Store for several nodes: PostgreSQL through
// pgx's connection pool (github.com/jackc/pgx/v5/pgxpool).
//
// Several processes may open the same database. A run's seqs are assigned
// under the run's row lock (SELECT ... FOR UPDATE), so writers of one run,
// in any process, take turns and seq stays 1, 2, 3, ... with no gap, while
// writers of different runs never wait for each other. A batch of log
// entries is one INSERT, whatever its size. Durability is PostgreSQL's
// default: a mutation returns after its commit is flushed
// (synchronous_commit=on).
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"runhub/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the key of the advisory lock that the nodes of one
// database take while they migrate: the first applies the migrations, the
// others wait and then find nothing to do. Any constant works as long as
// nothing else in the database uses it; this one spells "runhub" in ASCII.
const migrationLock int64 = 0x72756e687562

var (
	_ store.Store   = (*Store)(nil)
	_ store.Secrets = (*Store)(nil)
)

// pgxReadSnapshot reads a count and a page from one snapshot.
var pgxReadSnapshot = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}

// lockTimeout is the longest a statement waits for a row lock (a run's,
// held by another node's write) before it fails with store.ErrBusy, the
// same 10 s SQLite waits for its write lock: a healthy holder keeps a run's
// lock for milliseconds, so a wait this long means a stalled holder, and
// the client is better told to retry than left hanging.
const lockTimeout = 10 * time.Second

// connectTimeout bounds opening one connection. A server that is down on a
// live host refuses at once; this bounds the other case, a host that does
// not answer at all (a dead machine, a partition), where TCP would retry
// its SYN for about two minutes while the request, and its client, wait.
// 5 s is far above a healthy connect (milliseconds, even with TLS on a
// loaded server) and below the 10 s a client or a balancer commonly waits
// before giving up on a request.
const connectTimeout = 5 * time.Second

// Store is the PostgreSQL implementation of store.Store.
type Store struct {
	pool        *pgxpool.Pool
	now         func() time.Time
	lockTimeout time.Duration
	relayLease  time.Duration // how long DueRelays gives a node its relays
	// onScan, when set (tests), is told the size of every entry a bounded
	// read (QueryLog, Events, EventsBefore) copied out of PostgreSQL.
	onScan func(bytes int)
}

// Option configures a Store.
type Option func(*Store)

// WithClock injects the clock (tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithRelayLease sets how long a node that took relays in DueRelays has
// them to itself (default DefaultRelayLease). Every node sharing the
// database should use the same value, longer than one delivery (the
// Slack relay checks: slack.CheckLease); a shorter lease lets a node that
// died mid-delivery hold its messages back for less time. d <= 0 keeps
// the default.
func WithRelayLease(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.relayLease = d
		}
	}
}

// defaultPoolConns is the pool size unless the URL sets pool_max_conns.
// pgxpool's default (the CPU count, at least 4) lets only that many
// requests commit at once; every commit waits for its WAL flush
// (synchronous_commit=on), so more connections in flight is what lets the
// server flush many commits together. 32 stays well inside PostgreSQL's
// default max_connections of 100 for three nodes.
const defaultPoolConns = 32

// Open connects to the database at url (postgres://...) and applies the
// embedded migrations that it lacks.
func Open(ctx context.Context, url string, opts ...Option) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	s := &Store{now: time.Now, lockTimeout: lockTimeout, relayLease: DefaultRelayLease}
	for _, o := range opts {
		o(s)
	}
	if !strings.Contains(url, "connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = strconv.FormatInt(s.lockTimeout.Milliseconds(), 10)
	if !strings.Contains(url, "pool_max_conns") && cfg.MaxConns < defaultPoolConns {
		cfg.MaxConns = defaultPoolConns
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("open postgres pool: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pool, waiting for connections in use to be released.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", classify(err))
	}
	return nil
}

// migrate applies every embedded migration newer than the newest recorded
// in schema_migrations, in one transaction that holds migrationLock, so
// nodes starting together apply each migration once and none starts on a
// half-migrated schema.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return fmt.Errorf("begin migration: %w", classify(err))
	}
	defer rollback(ctx, tx)
	// The nodes that start while one migrates wait for it however long the
	// migration takes, not lockTimeout.
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = 0"); err != nil {
		return fmt.Errorf("migration lock timeout: %w", classify(err))
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("take migration lock: %w", classify(err))
	}
	// An up-to-date database is opened without a write, so a node can
	// start (and serve reads) on a database that refuses writes for now.
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("find schema_migrations: %w", classify(err))
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE TABLE schema_migrations (
			version    integer PRIMARY KEY,
			applied_at bigint  NOT NULL)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", classify(err))
		}
	}
	var version int
	if err := tx.QueryRow(ctx, "SELECT COALESCE(max(version), 0) FROM schema_migrations").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", classify(err))
	}
	for _, name := range names {
		n, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: bad name", name)
		}
		if n <= version {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return fmt.Errorf("read migration %s: %w", name, err)
		}
		// Exec without arguments uses the simple protocol, which runs a
		// file of several statements.
		if _, err := tx.Exec(ctx, string(body)); err != nil {
			return fmt.Errorf("apply migration %s: %w", name, classify(err))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", n, micros(s.clock())); err != nil {
			return fmt.Errorf("record migration %s: %w", name, classify(err))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit migrations: %w", classify(err))
	}
	return nil
}

// classify marks an error that means the database cannot be written or
// reached now, through no fault of the request, with store.ErrUnavailable:
// a full disk or exhausted resources (SQLSTATE class 53), a read-only
// transaction or server (25006, a hot standby), an I/O error (58030), a
// server shutting down or starting (57P01-57P03), a lost or refused
// connection (class 08, no connection at all, or one the server's end
// closed: connLost). A lock not taken within
// lockTimeout (55P03), a deadlock (40P01) or a serialization failure
// (40001) is store.ErrBusy. Both are answered 503 rather than 500. Other
// errors, and nil, are returned as they are.
func classify(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrBusy) {
		return err
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || connLost(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch {
	case strings.HasPrefix(pe.Code, "53"), strings.HasPrefix(pe.Code, "08"),
		pe.Code == "25006", pe.Code == "58030", pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03":
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	case pe.Code == "55P03", pe.Code == "40P01", pe.Code == "40001":
		return fmt.Errorf("%w: %w", store.ErrBusy, err)
	}
	return err
}

// connLost reports whether err is a connection that died under a statement
// (the server crashed, restarted or was cut off): end of stream, a reset,
// a closed conn. Cancellation by the caller's context is not one: that is
// the client leaving, not the store failing.
func connLost(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	return errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.As(err, &ne)
}

// begin starts a transaction. A transaction that could not even begin
// applied nothing, so when its connection turns out to have died (the
// server restarted since it was last used) it is safe to begin once more:
// the pool is reset first, because the dead connection's idle siblings
// died with it, and the retry opens a fresh one. Every other failure, and
// a second one, is the caller's (classified by it).
func (s *Store) begin(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	tx, err := s.pool.BeginTx(ctx, opts)
	if err != nil && connLost(err) && ctx.Err() == nil {
		s.pool.Reset()
		tx, err = s.pool.BeginTx(ctx, opts)
	}
	return tx, err
}

// ProbeWrite proves that the store can commit a write now, for readiness
// checks; it fails with store.ErrUnavailable when it cannot (a read-only
// server, a full disk, no connection). It rewrites the newest migration's
// row with its own values, which writes a tuple and flushes a commit.
func (s *Store) ProbeWrite(ctx context.Context) error {
	tag, err := s.pool.Exec(ctx,
		"UPDATE schema_migrations SET applied_at = applied_at WHERE version = (SELECT max(version) FROM schema_migrations)")
	if err != nil {
		return fmt.Errorf("write probe: %w", classify(err))
	}
	if tag.RowsAffected() != 1 {
		return errors.New("write probe: no schema version recorded")
	}
	return nil
}

// micros converts a time to the stored form.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros converts a stored time back.
func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullMicros(n *int64) *time.Time {
	if n == nil {
		return nil
	}
	t := fromMicros(*n)
	return &t
}

// clock returns the store's notion of now, truncated to the wire precision.
func (s *Store) clock() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// notFound turns "no row" into store.ErrNotFound and wraps other errors.
func notFound(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	return fmt.Errorf("%s: %w", what, classify(err))
}

// rollback ends a transaction that was not committed; it runs in defers,
// after the request's context may have ended, so it ignores cancellation.
func rollback(ctx context.Context, tx pgx.Tx) { tx.Rollback(context.WithoutCancel(ctx)) }
