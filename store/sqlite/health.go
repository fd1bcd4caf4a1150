package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"runhub/store"
)

// classify marks a SQLite error that is no fault of the request with the
// store's sentinel, so that callers never read driver messages: a database
// that cannot be written now (a read-only file or mount, a full disk, an
// I/O error, a file that cannot be opened) with store.ErrUnavailable, a
// lock another connection held past the busy timeout (SQLITE_BUSY and its
// extended codes) with store.ErrBusy. Both are answered 503 rather than
// 500. Other errors, and nil, are returned as they are.
func classify(err error) error {
	var se *msqlite.Error
	if err == nil || errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrBusy) || !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff { // the primary code of an extended one
	case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM:
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	case sqlite3.SQLITE_BUSY:
		return fmt.Errorf("%w: %w", store.ErrBusy, err)
	}
	return err
}

// probeFile is the file ProbeWrite creates and removes in the database's
// directory.
const probeFile = ".write-probe"

// probeBytes is the probe file's size: one filesystem block, so that a
// disk without a single free block fails the probe.
const probeBytes = 4096

// ProbeWrite proves that the store can commit a write now, for readiness
// checks; it fails with store.ErrUnavailable when it cannot. It writes,
// syncs and removes a small file beside the database (SQLite reuses the
// space of its -wal file, so a full disk or a read-only mount may not fail
// a tiny transaction yet, while every larger write and every blob would),
// then commits a transaction that rewrites the schema version with its own
// value. It takes the writer connection briefly: callers rate-limit it.
func (s *Store) ProbeWrite(ctx context.Context) error {
	p := filepath.Join(s.dir, probeFile)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("%w: write probe: %w", store.ErrUnavailable, err)
	}
	_, err = f.Write(make([]byte, probeBytes))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(p); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("%w: write probe: %w", store.ErrUnavailable, err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write probe: begin: %w", classify(err))
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("write probe: read: %w", classify(err))
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version)); err != nil {
		return fmt.Errorf("write probe: write: %w", classify(err))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write probe: commit: %w", classify(err))
	}
	return nil
}
