// Package migrate copies an embedded install (the SQLite file of a data
// directory) into an empty PostgreSQL database: what a user does when one
// machine is no longer enough.
//
// Guarantees: every table is copied row for row with its ids, seqs and
// bytes unchanged (log entries stay byte-identical, API keys keep their
// hashes, so old keys work), together with the secrets given (the data
// directory's signing key and link secret, so tokens and links made before
// the move keep working); the copy is one transaction, so a failure leaves
// the target empty; a target that holds anything is refused; afterwards
// the row counts of every table and the last seq of every run are compared
// between source and target. The source is only read.
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"runhub/store/postgres"
	"runhub/store/sqlite"
)

// Tables are the tables of the store, in an order that satisfies their
// references. A table that a migration adds must be added here (a test
// compares this list with both schemas).
var Tables = []string{"projects", "api_keys", "tasks", "runs", "run_events", "idempotency_keys", "relays", "run_ingest", "user_message_queue"}

// Bookkeeping tables of a backend that are not data: each backend's own
// migration record, and the secrets table that Copy fills from the data
// directory's files.
var (
	SQLiteOwn   = []string{}
	PostgresOwn = []string{"schema_migrations", "secrets"}
)

// identities are the generated id columns whose sequences continue after
// the copied ids.
var identities = map[string]string{"projects": "id", "api_keys": "id", "tasks": "seq", "runs": "rid", "user_message_queue": "id"}

// ErrTargetNotEmpty refuses a copy into a database that holds data.
var ErrTargetNotEmpty = errors.New("the target database is not empty")

// Report is what was copied.
type Report struct {
	Rows    map[string]int64 // rows per table
	Runs    int              // runs whose last seq was compared
	Secrets []string         // names of the secrets stored
}

// Copy copies the SQLite store at sqlitePath into the PostgreSQL database
// at url (migrated first), with secrets (name → value) stored in the
// database, then verifies the copy.
func Copy(ctx context.Context, sqlitePath, url string, secrets map[string][]byte) (*Report, error) {
	// Both schemas current: opening applies what is missing.
	src, err := sqlite.Open(ctx, sqlitePath)
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	src.Close()
	dst, err := postgres.Open(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("open target: %w", err)
	}
	dst.Close()

	from, err := sql.Open("sqlite", "file:"+sqlitePath+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	defer from.Close()
	if err := coversTables(ctx, from); err != nil {
		return nil, err
	}
	to, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect target: %w", err)
	}
	defer to.Close(context.WithoutCancel(ctx))

	// One read transaction on the source: a consistent snapshot even if a
	// server still writes it.
	rtx, err := from.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("read source: %w", err)
	}
	defer rtx.Rollback()
	wtx, err := to.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("write target: %w", err)
	}
	defer wtx.Rollback(context.WithoutCancel(ctx))

	for _, t := range append(slices.Clone(Tables), "secrets") {
		var has bool
		if err := wtx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+t+")").Scan(&has); err != nil {
			return nil, fmt.Errorf("target %s: %w", t, err)
		}
		if has {
			return nil, fmt.Errorf("%w: table %s has rows", ErrTargetNotEmpty, t)
		}
	}
	rep := &Report{Rows: map[string]int64{}}
	for _, t := range Tables {
		n, err := copyTable(ctx, rtx, wtx, t)
		if err != nil {
			return nil, fmt.Errorf("copy %s: %w", t, err)
		}
		rep.Rows[t] = n
	}
	for t, col := range identities {
		if _, err := wtx.Exec(ctx, fmt.Sprintf("SELECT setval(pg_get_serial_sequence('%s', '%s'), COALESCE((SELECT max(%s) FROM %s), 0) + 1, false)",
			t, col, col, t)); err != nil {
			return nil, fmt.Errorf("continue %s ids: %w", t, err)
		}
	}
	names := make([]string, 0, len(secrets))
	for name := range secrets {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if _, err := wtx.Exec(ctx, "INSERT INTO secrets (name, value, created_at) VALUES ($1, $2, (extract(epoch from now()) * 1000000)::bigint)",
			name, secrets[name]); err != nil {
			return nil, fmt.Errorf("store secret %s: %w", name, err)
		}
	}
	rep.Secrets = names
	if err := wtx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit target: %w", err)
	}
	if rep.Runs, err = verify(ctx, rtx, to, rep.Rows); err != nil {
		return nil, err
	}
	return rep, nil
}

// coversTables fails when the source has a table that Copy does not copy.
func coversTables(ctx context.Context, db *sql.DB) error {
	have, err := SQLiteTables(ctx, db)
	if err != nil {
		return err
	}
	for _, t := range have {
		if !slices.Contains(Tables, t) && !slices.Contains(SQLiteOwn, t) {
			return fmt.Errorf("the source has a table migrate-store does not copy: %s", t)
		}
	}
	return nil
}

// SQLiteTables lists the tables of a SQLite database (not SQLite's own).
func SQLiteTables(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list source tables: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// copyTable streams one table into the target with COPY, converting each
// value to the target column's type (SQLite keeps booleans as integers and
// may hand text back as bytes).
func copyTable(ctx context.Context, rtx *sql.Tx, wtx pgx.Tx, table string) (int64, error) {
	types := map[string]string{}
	rows, err := wtx.Query(ctx, "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1", table)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		var c, t string
		if err := rows.Scan(&c, &t); err != nil {
			rows.Close()
			return 0, err
		}
		types[c] = t
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	all, err := sqliteColumns(ctx, rtx, table)
	if err != nil {
		return 0, err
	}
	// Columns the SQLite store reads through an expression are copied as
	// it reads them (sqlite.CopiedColumns), and its own are left out.
	var cols, exprs []string
	for _, c := range all {
		expr, special := sqlite.CopiedColumns[table][c]
		if special && expr == "" {
			continue
		}
		if types[c] == "" {
			return 0, fmt.Errorf("column %s has no counterpart in the target", c)
		}
		if !special {
			expr = c
		}
		cols, exprs = append(cols, c), append(exprs, expr)
	}
	src, err := rtx.QueryContext(ctx, "SELECT "+strings.Join(exprs, ", ")+" FROM "+table)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	return wtx.CopyFrom(ctx, pgx.Identifier{table}, cols, &rowSource{rows: src, cols: cols, types: types})
}

func sqliteColumns(ctx context.Context, rtx *sql.Tx, table string) ([]string, error) {
	rows, err := rtx.QueryContext(ctx, "SELECT name FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("no table %s in the source", table)
	}
	return cols, rows.Err()
}

// rowSource feeds COPY from the source rows one at a time, so a table of
// any size is never held in memory.
type rowSource struct {
	rows  *sql.Rows
	cols  []string
	types map[string]string
	vals  []any
	err   error
}

func (r *rowSource) Next() bool {
	if !r.rows.Next() {
		return false
	}
	raw := make([]any, len(r.cols))
	ptrs := make([]any, len(r.cols))
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	if r.err = r.rows.Scan(ptrs...); r.err != nil {
		return false
	}
	for i, c := range r.cols {
		if raw[i], r.err = convert(raw[i], r.types[c]); r.err != nil {
			r.err = fmt.Errorf("column %s: %w", c, r.err)
			return false
		}
	}
	r.vals = raw
	return true
}

func (r *rowSource) Values() ([]any, error) { return r.vals, r.err }

func (r *rowSource) Err() error {
	if r.err != nil {
		return r.err
	}
	return r.rows.Err()
}

// convert turns a SQLite value into one of the PostgreSQL column type.
func convert(v any, pgType string) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch pgType {
	case "boolean":
		n, ok := v.(int64)
		if !ok {
			return nil, fmt.Errorf("boolean from %T", v)
		}
		return n != 0, nil
	case "bytea":
		switch b := v.(type) {
		case []byte:
			return b, nil
		case string:
			return []byte(b), nil
		}
	case "text":
		switch b := v.(type) {
		case string:
			return b, nil
		case []byte:
			return string(b), nil
		}
	case "bigint", "integer":
		if n, ok := v.(int64); ok {
			return n, nil
		}
	default:
		return nil, fmt.Errorf("unexpected target type %s", pgType)
	}
	return nil, fmt.Errorf("%s from %T", pgType, v)
}

// verify compares the row counts of every table and the last seq of every
// run between the source snapshot and the committed target.
func verify(ctx context.Context, rtx *sql.Tx, to *pgx.Conn, copied map[string]int64) (int, error) {
	for _, t := range Tables {
		var src, dst int64
		if err := rtx.QueryRowContext(ctx, "SELECT count(*) FROM "+t).Scan(&src); err != nil {
			return 0, fmt.Errorf("verify %s: %w", t, err)
		}
		if err := to.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&dst); err != nil {
			return 0, fmt.Errorf("verify %s: %w", t, err)
		}
		if src != dst || dst != copied[t] {
			return 0, fmt.Errorf("verify %s: %d rows in the source, %d in the target", t, src, dst)
		}
	}
	want := map[string]int64{}
	rows, err := rtx.QueryContext(ctx, "SELECT id, "+sqlite.CopiedColumns["runs"]["last_seq"]+", COALESCE((SELECT max(seq) FROM run_events e WHERE e.rid = runs.rid), 0) FROM runs")
	if err != nil {
		return 0, fmt.Errorf("verify runs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var last, maxSeq int64
		if err := rows.Scan(&id, &last, &maxSeq); err != nil {
			return 0, err
		}
		if last != maxSeq {
			return 0, fmt.Errorf("verify: source run %s has last_seq %d but events up to %d", id, last, maxSeq)
		}
		want[id] = last
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	prow, err := to.Query(ctx, "SELECT r.id, r.last_seq, COALESCE((SELECT max(seq) FROM run_events e WHERE e.rid = r.rid), 0) FROM runs r")
	if err != nil {
		return 0, fmt.Errorf("verify runs: %w", err)
	}
	defer prow.Close()
	n := 0
	for prow.Next() {
		var id string
		var last, maxSeq int64
		if err := prow.Scan(&id, &last, &maxSeq); err != nil {
			return 0, err
		}
		if w, ok := want[id]; !ok || last != w || maxSeq != w {
			return 0, fmt.Errorf("verify: run %s has last_seq %d (events to %d) in the target, %d in the source", id, last, maxSeq, w)
		}
		n++
	}
	if err := prow.Err(); err != nil {
		return 0, err
	}
	if n != len(want) {
		return 0, fmt.Errorf("verify: %d runs in the target, %d in the source", n, len(want))
	}
	return n, nil
}
