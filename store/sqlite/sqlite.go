// Package sqlite is the embedded store.Store: one SQLite file in WAL mode on
// modernc.org/sqlite (pure Go, no cgo).
//
// Every write goes through a single writer connection, so transactions are
// serialised in-process and seq assignment (read last_seq, insert events
// after it) cannot race; other processes (the `runhub keys` command
// while the server runs) are serialised by SQLite's own lock with a busy
// timeout, past which a write fails with store.ErrBusy. Mutations of runs
// that arrive while another runs share the next transaction and its one
// commit (group commit, see group), each in its own savepoint and each
// answered only after that commit. Reads use a separate pool of read-only connections and never wait
// for the writer. synchronous=NORMAL in WAL mode keeps every committed
// transaction across a process crash (kill -9); only an OS crash or power
// loss may drop the last few commits, never half of one.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"runhub/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// busyTimeout is how long a connection waits for another process's write lock
// (the CLI creating a key while the server runs) before failing.
const busyTimeout = 10 * time.Second

// writerCacheKiB is the writer connection's page cache (cache_size, in
// KiB). SQLite's default, 2 MiB (500 pages of 4 KiB), is smaller than what
// appends to many runs at once touch: each hot run's row and the last leaf
// of its events (2,000 runs at once: over 2,000 pages, 8 MiB, plus the
// indexes that find them), so without it most appends read pages back from
// the WAL or the file (a lookup and a pread each). 64 MiB holds that
// several times over; it is memory of the one writer only, taken as pages
// are touched, and the readers keep the default.
const writerCacheKiB = 64 << 10

// Store is the SQLite implementation of store.Store.
type Store struct {
	w     *sql.DB // exactly one connection: all writes
	r     *sql.DB // read-only pool
	now   func() time.Time
	busy  time.Duration          // how long a connection waits for another's lock
	stmts [numPrepared]*sql.Stmt // read-only after Open: prepared on w
	group group                  // gathers concurrent mutations into shared commits
	ckpt  checkpointer           // copies the WAL back off the commit path
	runs  runCache               // decoded run rows, for appends (the writer's)
	dir   string                 // the database file's directory (ProbeWrite)
	// onScan, when set (tests), is told the size of every entry a bounded
	// read (QueryLog, EventsBefore) copied out of SQLite.
	onScan func(bytes int)
}

var _ store.Store = (*Store)(nil)

// Option configures a Store.
type Option func(*Store)

// WithClock injects the clock (tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithBusyTimeout replaces busyTimeout, how long a statement waits for a
// lock another connection holds before it fails with store.ErrBusy (tests
// shorten it to see that failure in milliseconds).
func WithBusyTimeout(d time.Duration) Option { return func(s *Store) { s.busy = d } }

// Open opens (creating if needed) the database file at path and applies the
// embedded migrations.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	// Create the file 0600 before SQLite does (it would make it 0644): the
	// -wal and -shm files SQLite creates beside it take the database
	// file's mode, so none of the three is readable by other users.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create database file: %w", err)
	}
	f.Close()
	s := &Store{now: time.Now, busy: busyTimeout, dir: filepath.Dir(path)}
	s.ckpt.interval, s.ckpt.hard, s.ckpt.restart = checkpointInterval, walHardFrames, walRestartFrames
	s.ckpt.exclusive = s.exclusive
	for _, o := range opts {
		o(s)
	}
	// dsn names the database with the pragmas every connection runs; a
	// busy_timeout among extra replaces the store's, rather than racing it
	// in an order the driver picks.
	dsn := func(extra ...string) string {
		q := url.Values{}
		busy := "busy_timeout(" + strconv.Itoa(int(s.busy/time.Millisecond)) + ")"
		for _, p := range extra {
			if strings.HasPrefix(p, "busy_timeout(") {
				busy = ""
			}
		}
		for _, p := range []string{
			"journal_mode(WAL)",
			busy,
			"synchronous(NORMAL)",
			"foreign_keys(ON)",
		} {
			if p != "" {
				q.Add("_pragma", p)
			}
		}
		for _, p := range extra {
			q.Add("_pragma", p)
		}
		q.Set("_txlock", "immediate")
		return "file:" + path + "?" + q.Encode()
	}
	// The writer never checkpoints (the checkpointer does, see
	// checkpointInterval) and shrinks the WAL file when it resets it.
	w, err := sql.Open("sqlite", dsn("wal_autocheckpoint(0)", "journal_size_limit("+strconv.Itoa(walSizeLimit)+")",
		"cache_size(-"+strconv.Itoa(writerCacheKiB)+")"))
	if err != nil {
		return nil, fmt.Errorf("open sqlite writer: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s.w = w
	if err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, err
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", dsn("query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite readers: %w", err)
	}
	n := max(4, runtime.GOMAXPROCS(0)*2)
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	s.r = r
	if err := s.ckpt.start(dsn("busy_timeout(" + strconv.Itoa(int(truncateWait/time.Millisecond)) + ")")); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close stops the checkpointer (waiting for it) and closes the
// connections; the last one to close checkpoints the whole WAL and
// removes it.
func (s *Store) Close() error {
	ckErr := s.ckpt.stop()
	for _, st := range s.stmts {
		if st != nil {
			st.Close()
		}
	}
	err := s.w.Close()
	if s.r != nil {
		if e := s.r.Close(); err == nil {
			err = e
		}
	}
	if err == nil {
		err = ckErr
	}
	return err
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.r.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("ping sqlite: %w", classify(err))
	}
	return nil
}

// migrate applies every embedded migration newer than PRAGMA user_version,
// each in its own transaction together with the version bump.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	var version int
	if err := s.w.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	// A database a newer binary migrated is refused, not used: from 0008 on
	// a run's row no longer holds its current seq counters, so an older
	// binary would number appends from stale ones.
	if newest, err := migrationNumber(names[len(names)-1]); err != nil {
		return err
	} else if version > newest {
		return fmt.Errorf("the database is at schema version %d, newer than this binary's %d: it was written by a newer runhub", version, newest)
	}
	for _, name := range names {
		n, err := migrationNumber(name)
		if err != nil {
			return err
		}
		if n <= version {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return fmt.Errorf("read migration %s: %w", name, err)
		}
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("begin migration: %w", err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("apply migration %s: %w", name, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", n)); err != nil {
			tx.Rollback()
			return fmt.Errorf("set schema version: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit migration %s: %w", name, err)
		}
	}
	return nil
}

// migrationNumber is the version a migration file's name starts with.
func migrationNumber(name string) (int, error) {
	n, err := strconv.Atoi(strings.SplitN(filepath.Base(name), "_", 2)[0])
	if err != nil {
		return 0, fmt.Errorf("migration %s: bad name", name)
	}
	return n, nil
}

// The statements of the mutation path, prepared once on the writer
// connection at Open: SQLite parses SQL on every unprepared Exec, which
// costs more than running these small statements, and every append runs
// them. They must be prepared before any transaction exists, since the
// writer pool has one connection and a transaction holds it.
const (
	qFindRun = iota
	qFindRunVersion
	qInsertOne
	qInsertChunk
	qWriteRun
	qInsertRun
	qIdemLookup
	qIdemInsert
	qIdemExpire
	qSavepoint
	qRelease
	qRollbackTo
	qIngestRead
	qIngestWrite
	qQueueCount
	qQueueInsert
	numPrepared
)

// preparedQueries holds the SQL of each prepared statement, by its q constant.
var preparedQueries = [numPrepared]string{
	qFindRun:        findRunSQL,
	qFindRunVersion: findRunVersionSQL,
	qInsertOne:      insertEventsSQL(1),
	qInsertChunk:    insertEventsSQL(insertChunk),
	qWriteRun:       writeRunSQL,
	qInsertRun:      insertRunSQL,
	qIdemLookup:     "SELECT request_hash, response FROM idempotency_keys WHERE rid = ? AND key = ?",
	qIdemInsert:     "INSERT INTO idempotency_keys (rid, key, request_hash, response, created_at) VALUES (?, ?, ?, ?, ?)",
	qIdemExpire:     "DELETE FROM idempotency_keys WHERE rid = ? AND created_at < ?",
	// One name serves every member of a batch: each member's savepoint is
	// released (or rolled back to and released) before the next begins.
	qSavepoint:   "SAVEPOINT mutation",
	qRelease:     "RELEASE mutation",
	qRollbackTo:  "ROLLBACK TO mutation",
	qIngestRead:  ingestReadSQL,
	qIngestWrite: ingestWriteSQL,
	qQueueCount:  queueCountSQL,
	qQueueInsert: queueInsertSQL,
}

func (s *Store) prepare(ctx context.Context) error {
	for i, q := range preparedQueries {
		st, err := s.w.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		s.stmts[i] = st
	}
	return nil
}

// micros converts a time to the stored form.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros converts a stored time back.
func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullMicros(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromMicros(n.Int64)
	return &t
}

func nullString(n sql.NullString) *string {
	if !n.Valid {
		return nil
	}
	s := n.String
	return &s
}

// clock returns the store's notion of now, truncated to the wire precision.
func (s *Store) clock() time.Time { return s.now().UTC().Truncate(time.Microsecond) }
