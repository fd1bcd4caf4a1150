package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"runhub/store"
)

const runColumns = "r.rid, r.id, t.id, r.project_id, r.stage, r.branch, r.status, r.environment, r.error_message, r.output, r.state, r.artifacts, r.created_at, r.updated_at, r.completed_at, r.last_seq, r.log_count, " + maxSeq

// maxSeq is the run's last stored seq, from its events. An append does not
// write the run's row (that would be a second page written per append, in
// the WAL and again by the checkpoint, and a statement): the row's
// last_seq and log_count are as its last other write left them, and every
// event past that last_seq is a log entry an append stored, so the run's
// counters are the row's advanced by max(seq) - last_seq (see seqCounters).
const maxSeq = "(SELECT max(e.seq) FROM run_events e WHERE e.rid = r.rid)"

// CopiedColumns is, for a tool that copies the runs table's rows out of
// the file (store/migrate), the expression that reads each column's value
// as the store answers it: last_seq and log_count advanced by the appends
// since the row was written (see maxSeq); "" for a column of the SQLite
// store's own (version, see runCache), not to be copied.
var CopiedColumns = map[string]map[string]string{
	"runs": {
		"last_seq":  copiedLastSeq,
		"log_count": "runs.log_count + " + copiedLastSeq + " - runs.last_seq",
		"version":   "",
	},
}

const copiedLastSeq = "max(runs.last_seq, coalesce((SELECT max(e.seq) FROM run_events e WHERE e.rid = runs.rid), 0))"

// seqCounters is the run's last_seq and log_count, from the row's and the
// largest seq of its events (see maxSeq).
func seqCounters(rowLast, rowLogs int64, top sql.NullInt64) (lastSeq, logCount int64) {
	if top.Valid && top.Int64 > rowLast {
		return top.Int64, rowLogs + top.Int64 - rowLast
	}
	return rowLast, rowLogs
}

const runFrom = " FROM runs r JOIN tasks t ON t.seq = r.task_rowid "

// runRow is a run with its internal row id.
type runRow struct {
	store.Run
	rid int64
}

func scanRun(sc interface{ Scan(...any) error }) (*runRow, error) {
	var r runRow
	var stage, branch, errMsg, output sql.NullString
	var state, artifacts string
	var created, updated int64
	var completed, top sql.NullInt64
	if err := sc.Scan(&r.rid, &r.ID, &r.TaskID, &r.ProjectID, &stage, &branch, &r.Status, &r.Environment, &errMsg,
		&output, &state, &artifacts, &created, &updated, &completed, &r.LastSeq, &r.LogCount, &top); err != nil {
		return nil, err
	}
	r.LastSeq, r.LogCount = seqCounters(r.LastSeq, r.LogCount, top)
	r.Stage, r.Branch, r.ErrorMessage = nullString(stage), nullString(branch), nullString(errMsg)
	if err := store.DecodeRunColumns(&r.Run, nullString(output), state, artifacts); err != nil {
		return nil, err
	}
	r.CreatedAt, r.UpdatedAt, r.CompletedAt = fromMicros(created), fromMicros(updated), nullMicros(completed)
	return &r, nil
}

const findRunSQL = "SELECT " + runColumns + runFrom + "WHERE r.id = ? AND r.project_id = ? AND t.id = ? AND t.deleted = 0"

// runKey is the argument list of findRunSQL.
func runKey(ref store.RunRef) []any { return []any{ref.RunID, ref.ProjectID, ref.TaskID} }

// findRun scans the row of findRunSQL: a run that lives in ref's project
// and (live) task.
func findRun(row *sql.Row) (*runRow, error) {
	r, err := scanRun(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get run: %w", classify(err))
	}
	return r, nil
}

// GetRun returns one run.
func (s *Store) GetRun(ctx context.Context, ref store.RunRef) (*store.Run, error) {
	r, err := findRun(s.r.QueryRowContext(ctx, findRunSQL, runKey(ref)...))
	if err != nil {
		return nil, err
	}
	return &r.Run, nil
}

// RunByID returns a run of a live task by id.
func (s *Store) RunByID(ctx context.Context, id string) (*store.Run, error) {
	r, err := scanRun(s.r.QueryRowContext(ctx, "SELECT "+runColumns+runFrom+"WHERE r.id = ? AND t.deleted = 0", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get run: %w", classify(err))
	}
	return &r.Run, nil
}

// ListRuns returns a page of a live task's runs, newest first, and the total.
func (s *Store) ListRuns(ctx context.Context, project int64, task string, limit, offset int) ([]store.Run, int64, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, 0, fmt.Errorf("begin read: %w", classify(err))
	}
	defer tx.Rollback()
	_, rowid, err := taskRow(ctx, tx, project, task)
	if err != nil {
		return nil, 0, err
	}
	var total int64
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM runs WHERE task_rowid = ?", rowid).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count runs: %w", classify(err))
	}
	rows, err := tx.QueryContext(ctx, "SELECT "+runColumns+runFrom+"WHERE r.task_rowid = ? ORDER BY r.rid DESC LIMIT ? OFFSET ?", rowid, limit, offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list runs: %w", classify(err))
	}
	defer rows.Close()
	out := []store.Run{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("scan run: %w", classify(err))
		}
		out = append(out, r.Run)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list runs: %w", classify(err))
	}
	return out, total, nil
}

// jsonOrNull renders v as JSON text, or SQL NULL for a nil map.
func jsonOrNull(m map[string]json.RawMessage) any {
	if m == nil {
		return nil
	}
	b, _ := json.Marshal(m)
	return string(b)
}

const writeRunSQL = `UPDATE runs SET stage = ?, branch = ?, status = ?, environment = ?, error_message = ?, output = ?, state = ?,
		artifacts = ?, updated_at = ?, completed_at = ?, last_seq = ?, log_count = ?, version = ? WHERE rid = ?`

// writeRun stores every column of r that a mutation may change.
func writeRun(tx *wtx, r *runRow) error {
	state, _ := json.Marshal(r.State)
	artifacts, _ := json.Marshal(r.Artifacts)
	var completed any
	if r.CompletedAt != nil {
		completed = micros(*r.CompletedAt)
	}
	_, err := tx.exec(qWriteRun,
		r.Stage, r.Branch, r.Status, r.Environment, r.ErrorMessage, jsonOrNull(r.Output), string(state), string(artifacts),
		micros(r.UpdatedAt), completed, r.LastSeq, r.LogCount, newVersion(), r.rid)
	if err != nil {
		return fmt.Errorf("update run: %w", classify(err))
	}
	return nil
}

// insertEvents stores events the domain rules numbered, each stamped ts.
func insertEvents(tx *wtx, rid int64, events []store.Event, ts time.Time) error {
	for _, ev := range events {
		if _, err := tx.exec(qInsertOne, rid, ev.Seq, ev.Kind, ev.Type, ts.UnixMicro(), []byte(ev.Data)); err != nil {
			return fmt.Errorf("insert event: %w", classify(err))
		}
	}
	return nil
}

const insertRunSQL = `INSERT INTO runs (id, task_rowid, project_id, status, environment, state, artifacts, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, '[]', ?, ?)`

// CreateRun inserts a run and its first task_run_state event.
func (s *Store) CreateRun(ctx context.Context, project int64, task string, nr store.NewRun) (*store.MutationResult, error) {
	return s.write(ctx, func(tx *wtx) (*store.MutationResult, error) {
		now := s.clock() // read while holding the writer, so time follows seq order
		_, taskRowid, err := taskRow(tx.ctx, tx, project, task)
		if err != nil {
			return nil, err
		}
		run, events := store.NewRunFrom(uuid.NewString(), project, task, nr, now)
		r := &runRow{Run: *run}
		state, _ := json.Marshal(r.State)
		res, err := tx.exec(qInsertRun, r.ID, taskRowid, project, r.Status, r.Environment, string(state), micros(now), micros(now))
		if err != nil {
			return nil, fmt.Errorf("insert run: %w", classify(err))
		}
		if r.rid, err = res.LastInsertId(); err != nil {
			return nil, fmt.Errorf("run rowid: %w", classify(err))
		}
		if err := insertEvents(tx, r.rid, events, now); err != nil {
			return nil, err
		}
		if err := writeRun(tx, r); err != nil {
			return nil, err
		}
		return &store.MutationResult{Run: &r.Run, Events: events}, nil
	})
}

// mutate runs fn on the run inside a write transaction (shared with
// concurrent mutations of other runs, see group), handling the idempotency
// key: a key already applied returns its snapshot and runs nothing;
// otherwise the run after fn is recorded under the key.
func (s *Store) mutate(ctx context.Context, ref store.RunRef, idem *store.Idempotency,
	fn func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error)) (*store.MutationResult, error) {
	return s.mutateRun(ctx, ref, idem, false, fn)
}

// mutateLog is mutate for an fn that changes nothing of the run but its
// seq counters (appendEntries): the run comes from the writer's cache
// when it is current (see runCache), and fn must not change it otherwise.
func (s *Store) mutateLog(ctx context.Context, ref store.RunRef, idem *store.Idempotency,
	fn func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error)) (*store.MutationResult, error) {
	return s.mutateRun(ctx, ref, idem, true, fn)
}

func (s *Store) mutateRun(ctx context.Context, ref store.RunRef, idem *store.Idempotency, logOnly bool,
	fn func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error)) (*store.MutationResult, error) {
	return s.write(ctx, func(tx *wtx) (*store.MutationResult, error) {
		now := s.clock() // read while holding the writer, so time follows seq order
		var r *runRow
		var err error
		if logOnly {
			r, err = appendRun(tx, ref)
		} else {
			r, err = findRun(tx.queryRow(qFindRun, ref.RunID, ref.ProjectID, ref.TaskID))
		}
		if err != nil {
			return nil, err
		}
		if idem != nil {
			var hash, snapshot []byte
			err := tx.queryRow(qIdemLookup, r.rid, idem.StoredKey()).Scan(&hash, &snapshot)
			switch {
			case err == nil:
				return idem.Replay(hash, snapshot)
			case !errors.Is(err, sql.ErrNoRows):
				return nil, fmt.Errorf("idempotency lookup: %w", classify(err))
			}
		}
		events, err := fn(tx, r, now)
		if err != nil {
			return nil, err
		}
		if idem != nil {
			snapshot, err := store.EncodeRunSnapshot(&r.Run)
			if err != nil {
				return nil, err
			}
			if _, err := tx.exec(qIdemInsert, r.rid, idem.StoredKey(), idem.RequestHash, snapshot, micros(now)); err != nil {
				return nil, fmt.Errorf("record idempotency key: %w", classify(err))
			}
			// Keys are kept at least store.IdempotencyTTL; older ones of this run go now.
			if _, err := tx.exec(qIdemExpire, r.rid, micros(store.IdempotencyCutoff(now))); err != nil {
				return nil, fmt.Errorf("expire idempotency keys: %w", classify(err))
			}
		}
		return &store.MutationResult{Run: &r.Run, Events: events}, nil
	})
}

// recordChange writes the run row and appends the events a rule returned.
func recordChange(tx *wtx, r *runRow, events []store.Event, now time.Time) ([]store.Event, error) {
	if err := insertEvents(tx, r.rid, events, now); err != nil {
		return nil, err
	}
	if err := writeRun(tx, r); err != nil {
		return nil, err
	}
	return events, nil
}

// UpdateRun applies a PATCH (store.ApplyPatch).
func (s *Store) UpdateRun(ctx context.Context, ref store.RunRef, p store.RunPatch, idem *store.Idempotency) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, idem, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		events, err := store.ApplyPatch(&r.Run, p, now)
		if err != nil || len(events) == 0 { // refused, or nothing to change (only_if_non_terminal)
			return nil, err
		}
		if len(p.QueueMessage) > 0 {
			if _, err := enqueueTx(tx, r.ID, p.QueueMessage, now); err != nil {
				return nil, err
			}
		}
		return recordChange(tx, r, events, now)
	})
}

// SetOutput replaces the run's output (store.ReplaceOutput).
func (s *Store) SetOutput(ctx context.Context, ref store.RunRef, output map[string]json.RawMessage, idem *store.Idempotency) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, idem, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		return recordChange(tx, r, store.ReplaceOutput(&r.Run, output, now), now)
	})
}

// insertChunk is the most events one INSERT statement carries: 6
// parameters each stays far below SQLite's parameter limit, and one
// statement per chunk instead of per entry is most of append_log's speed.
const insertChunk = 64

// insertEventsSQL returns the INSERT of n events.
func insertEventsSQL(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO run_events (rid, seq, kind, event_type, ts, data) VALUES ")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?,?)")
	}
	return b.String()
}

// AppendLog stores the entries (ephemeral ones excepted) with the run's next
// seq values, contiguous and in order, and returns every entry as an event
// (ephemeral ones with seq 0) in request order for publishing.
func (s *Store) AppendLog(ctx context.Context, ref store.RunRef, entries []store.LogEntry, idem *store.Idempotency) (*store.MutationResult, error) {
	return s.mutateLog(ctx, ref, idem, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		return appendEntries(tx, r, entries)
	})
}

// appendEntries is the body of AppendLog inside a mutation's transaction:
// it numbers the entries (store.AppendEntries), inserts the stored ones
// (which advance the run's counters, see maxSeq), and returns every entry
// as an event for publishing.
func appendEntries(tx *wtx, r *runRow, entries []store.LogEntry) ([]store.Event, error) {
	ap := store.AppendEntries(&r.Run, entries)
	stored, stamps := ap.Stored, ap.Times
	if len(stored) == 0 {
		return ap.Events, nil
	}
	args := tx.argBuf(6 * min(len(stored), insertChunk))
	for start := 0; start < len(stored); start += insertChunk {
		chunk := stored[start:min(start+insertChunk, len(stored))]
		args = args[:0]
		for i, ev := range chunk {
			var ts any
			if t := stamps[start+i]; t != nil {
				ts = t.UnixMicro()
			}
			args = append(args, r.rid, ev.Seq, ev.Kind, ev.Type, ts, []byte(ev.Data))
		}
		var err error
		switch len(chunk) {
		case 1:
			_, err = tx.exec(qInsertOne, args...)
		case insertChunk:
			_, err = tx.exec(qInsertChunk, args...)
		default: // the tail of a long append: once per call, not worth a statement each length
			_, err = tx.ExecContext(tx.ctx, insertEventsSQL(len(chunk)), args...)
		}
		if err != nil {
			return nil, fmt.Errorf("insert log entries: %w", classify(err))
		}
	}
	return ap.Events, nil
}

// AddArtifacts appends manifest entries and their artifact events.
func (s *Store) AddArtifacts(ctx context.Context, ref store.RunRef, entries []json.RawMessage) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, nil, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		events, err := store.AddArtifactEntries(&r.Run, entries, now)
		if err != nil {
			return nil, err
		}
		return recordChange(tx, r, events, now)
	})
}
