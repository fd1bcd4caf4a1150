package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"runhub/store"
)

const runColumns = "r.rid, r.id, t.id, r.project_id, r.stage, r.branch, r.status, r.environment, r.error_message, r.output, r.state, r.artifacts, r.created_at, r.updated_at, r.completed_at, r.last_seq, r.log_count"

const runFrom = " FROM runs r JOIN tasks t ON t.seq = r.task_rowid "

// runRow is a run with its internal row id.
type runRow struct {
	store.Run
	rid int64
}

func scanRun(sc interface{ Scan(...any) error }) (*runRow, error) {
	var r runRow
	var output *string
	var state, artifacts string
	var created, updated int64
	var completed *int64
	if err := sc.Scan(&r.rid, &r.ID, &r.TaskID, &r.ProjectID, &r.Stage, &r.Branch, &r.Status, &r.Environment, &r.ErrorMessage,
		&output, &state, &artifacts, &created, &updated, &completed, &r.LastSeq, &r.LogCount); err != nil {
		return nil, err
	}
	if err := store.DecodeRunColumns(&r.Run, output, state, artifacts); err != nil {
		return nil, err
	}
	r.CreatedAt, r.UpdatedAt, r.CompletedAt = fromMicros(created), fromMicros(updated), nullMicros(completed)
	return &r, nil
}

const findRunSQL = "SELECT " + runColumns + runFrom + "WHERE r.id = $1 AND r.project_id = $2 AND t.id = $3 AND NOT t.deleted"

// lockRunSQL finds the run and takes its row lock: the writers of one run,
// in every process, take turns from here to their commit, and each one
// reads the last_seq its predecessor committed.
const lockRunSQL = findRunSQL + " FOR UPDATE OF r"

// runKey is the argument list of findRunSQL.
func runKey(ref store.RunRef) []any { return []any{ref.RunID, ref.ProjectID, ref.TaskID} }

// findRun runs findRunSQL (or lockRunSQL): a run that lives in ref's
// project and (live) task.
func findRun(ctx context.Context, q querier, sql string, ref store.RunRef) (*runRow, error) {
	r, err := scanRun(q.QueryRow(ctx, sql, runKey(ref)...))
	if err != nil {
		return nil, notFound(err, "get run")
	}
	return r, nil
}

// GetRun returns one run.
func (s *Store) GetRun(ctx context.Context, ref store.RunRef) (*store.Run, error) {
	r, err := findRun(ctx, s.pool, findRunSQL, ref)
	if err != nil {
		return nil, err
	}
	return &r.Run, nil
}

// RunByID returns a run of a live task by id.
func (s *Store) RunByID(ctx context.Context, id string) (*store.Run, error) {
	r, err := scanRun(s.pool.QueryRow(ctx, "SELECT "+runColumns+runFrom+"WHERE r.id = $1 AND NOT t.deleted", id))
	if err != nil {
		return nil, notFound(err, "get run")
	}
	return &r.Run, nil
}

// ListRuns returns a page of a live task's runs, newest first, and the
// total, from one snapshot.
func (s *Store) ListRuns(ctx context.Context, project int64, task string, limit, offset int) ([]store.Run, int64, error) {
	tx, err := s.begin(ctx, pgxReadSnapshot)
	if err != nil {
		return nil, 0, fmt.Errorf("begin read: %w", classify(err))
	}
	defer rollback(ctx, tx)
	_, rowid, err := taskRow(ctx, tx, project, task, noLock)
	if err != nil {
		return nil, 0, err
	}
	var total int64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM runs WHERE task_rowid = $1", rowid).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count runs: %w", classify(err))
	}
	rows, err := tx.Query(ctx, "SELECT "+runColumns+runFrom+"WHERE r.task_rowid = $1 ORDER BY r.rid DESC LIMIT $2 OFFSET $3", rowid, limit, offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list runs: %w", classify(err))
	}
	defer rows.Close()
	out := []store.Run{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("scan run: %w", err)
		}
		out = append(out, r.Run)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list runs: %w", classify(err))
	}
	return out, total, nil
}

// jsonOrNull renders m as JSON text, or NULL for a nil map.
func jsonOrNull(m map[string]json.RawMessage) (*string, error) {
	if m == nil {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	s := string(b)
	return &s, nil
}

// writeRun stores every column of r that a mutation may change.
func writeRun(ctx context.Context, tx pgx.Tx, r *runRow) error {
	state, err := json.Marshal(r.State)
	if err != nil {
		return fmt.Errorf("encode run state: %w", err)
	}
	artifacts, err := json.Marshal(r.Artifacts)
	if err != nil {
		return fmt.Errorf("encode run artifacts: %w", err)
	}
	output, err := jsonOrNull(r.Output)
	if err != nil {
		return fmt.Errorf("encode run output: %w", err)
	}
	var completed *int64
	if r.CompletedAt != nil {
		c := micros(*r.CompletedAt)
		completed = &c
	}
	_, err = tx.Exec(ctx, `UPDATE runs SET stage = $1, branch = $2, status = $3, environment = $4, error_message = $5, output = $6, state = $7,
		artifacts = $8, updated_at = $9, completed_at = $10, last_seq = $11, log_count = $12 WHERE rid = $13`,
		r.Stage, r.Branch, r.Status, r.Environment, r.ErrorMessage, output, string(state), string(artifacts),
		micros(r.UpdatedAt), completed, r.LastSeq, r.LogCount, r.rid)
	if err != nil {
		return fmt.Errorf("update run: %w", classify(err))
	}
	return nil
}

// insertEventsSQL appends a batch of events in one statement, whatever its
// size: the columns travel as arrays and unnest turns them into rows, so
// an append of 100 entries is one round trip, not 100.
const insertEventsSQL = `INSERT INTO run_events (rid, seq, kind, event_type, ts, data)
	SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bytea[])`

// insertEvents appends events (numbered by the rules) to run rid's log;
// times[i] is the timestamp of events[i] (nil: NULL).
func insertEvents(ctx context.Context, tx pgx.Tx, rid int64, events []store.Event, times []*time.Time) error {
	if len(events) == 0 {
		return nil
	}
	seqs := make([]int64, len(events))
	kinds := make([]string, len(events))
	types := make([]string, len(events))
	stamps := make([]*int64, len(events))
	data := make([][]byte, len(events))
	for i, ev := range events {
		seqs[i], kinds[i], types[i], data[i] = ev.Seq, ev.Kind, ev.Type, ev.Data
		if t := times[i]; t != nil {
			us := micros(*t)
			stamps[i] = &us
		}
	}
	if _, err := tx.Exec(ctx, insertEventsSQL, rid, seqs, kinds, types, stamps, data); err != nil {
		return fmt.Errorf("insert events: %w", classify(err))
	}
	return nil
}

// sameTime repeats t for n events.
func sameTime(t time.Time, n int) []*time.Time {
	out := make([]*time.Time, n)
	for i := range out {
		out[i] = &t
	}
	return out
}

// CreateRun inserts a run and its first task_run_state event.
func (s *Store) CreateRun(ctx context.Context, project int64, task string, nr store.NewRun) (*store.MutationResult, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer rollback(ctx, tx)
	_, taskRowid, err := taskRow(ctx, tx, project, task, forShare)
	if err != nil {
		return nil, err
	}
	run, events := store.NewRunFrom(uuid.NewString(), project, task, nr, s.clock())
	r := &runRow{Run: *run}
	state, err := json.Marshal(r.State)
	if err != nil {
		return nil, fmt.Errorf("encode run state: %w", err)
	}
	if err := tx.QueryRow(ctx, `INSERT INTO runs (id, task_rowid, project_id, status, environment, state, artifacts, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, '[]', $7, $7) RETURNING rid`,
		r.ID, taskRowid, project, r.Status, r.Environment, string(state), micros(r.CreatedAt)).Scan(&r.rid); err != nil {
		return nil, fmt.Errorf("insert run: %w", classify(err))
	}
	if err := insertEvents(ctx, tx, r.rid, events, sameTime(r.CreatedAt, len(events))); err != nil {
		return nil, err
	}
	if err := writeRun(ctx, tx, r); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit run: %w", classify(err))
	}
	return &store.MutationResult{Run: &r.Run, Events: events}, nil
}

// change is what a mutation made of a run: the events to publish (every
// one, in order), those of them to store with their timestamps, and
// whether columns other than last_seq and log_count changed.
type change struct {
	events     []store.Event
	stored     []store.Event
	times      []*time.Time
	rowChanged bool
	queue      json.RawMessage // user_message params to queue in the same transaction
}

// stateChange is a change of the run row with its events, all stored and
// stamped now.
func stateChange(events []store.Event, now time.Time) change {
	return change{events: events, stored: events, times: sameTime(now, len(events)), rowChanged: true}
}

// mutate applies fn to the run under its row lock, in one transaction that
// also stores fn's events and the run's new row, and handles the
// idempotency key: a key already applied returns its snapshot and runs
// nothing; otherwise the run after fn is recorded under the key.
func (s *Store) mutate(ctx context.Context, ref store.RunRef, idem *store.Idempotency,
	fn func(r *store.Run, now time.Time) (change, error)) (*store.MutationResult, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer rollback(ctx, tx)
	r, err := findRun(ctx, tx, lockRunSQL, ref)
	if err != nil {
		return nil, err
	}
	now := s.clock() // read while holding the run's lock, so time follows seq order
	if idem != nil {
		var hash, snapshot []byte
		err := tx.QueryRow(ctx, "SELECT request_hash, response FROM idempotency_keys WHERE rid = $1 AND key = $2", r.rid, idem.StoredKey()).Scan(&hash, &snapshot)
		switch {
		case err == nil:
			return idem.Replay(hash, snapshot)
		case !errors.Is(err, pgx.ErrNoRows):
			return nil, fmt.Errorf("idempotency lookup: %w", classify(err))
		}
	}
	c, err := fn(&r.Run, now)
	if err != nil {
		return nil, err
	}
	if err := insertEvents(ctx, tx, r.rid, c.stored, c.times); err != nil {
		return nil, err
	}
	if c.rowChanged {
		err = writeRun(ctx, tx, r)
	} else if len(c.stored) > 0 {
		_, err = tx.Exec(ctx, "UPDATE runs SET last_seq = $1, log_count = $2 WHERE rid = $3", r.LastSeq, r.LogCount, r.rid)
		if err != nil {
			err = fmt.Errorf("update run seq: %w", classify(err))
		}
	}
	if err != nil {
		return nil, err
	}
	if len(c.queue) > 0 {
		if _, err := enqueueTx(ctx, tx, r.ID, c.queue, now); err != nil {
			return nil, err
		}
	}
	if idem != nil {
		snapshot, err := store.EncodeRunSnapshot(&r.Run)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO idempotency_keys (rid, key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5)",
			r.rid, idem.StoredKey(), idem.RequestHash, snapshot, micros(now)); err != nil {
			return nil, fmt.Errorf("record idempotency key: %w", classify(err))
		}
		// Keys are kept at least store.IdempotencyTTL; older ones of this run go now.
		if _, err := tx.Exec(ctx, "DELETE FROM idempotency_keys WHERE rid = $1 AND created_at < $2", r.rid, micros(store.IdempotencyCutoff(now))); err != nil {
			return nil, fmt.Errorf("expire idempotency keys: %w", classify(err))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", classify(err))
	}
	return &store.MutationResult{Run: &r.Run, Events: c.events}, nil
}

// UpdateRun applies a PATCH.
func (s *Store) UpdateRun(ctx context.Context, ref store.RunRef, p store.RunPatch, idem *store.Idempotency) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, idem, func(r *store.Run, now time.Time) (change, error) {
		events, err := store.ApplyPatch(r, p, now)
		if err != nil || len(events) == 0 { // refused, or nothing to change (only_if_non_terminal)
			return change{}, err
		}
		c := stateChange(events, now)
		c.queue = p.QueueMessage
		return c, nil
	})
}

// SetOutput replaces the run's output.
func (s *Store) SetOutput(ctx context.Context, ref store.RunRef, output map[string]json.RawMessage, idem *store.Idempotency) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, idem, func(r *store.Run, now time.Time) (change, error) {
		return stateChange(store.ReplaceOutput(r, output, now), now), nil
	})
}

// AppendLog stores the entries (ephemeral ones excepted) with the run's next
// seq values, contiguous and in order, in one INSERT, and returns every
// entry as an event (ephemeral ones with seq 0) in request order.
func (s *Store) AppendLog(ctx context.Context, ref store.RunRef, entries []store.LogEntry, idem *store.Idempotency) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, idem, func(r *store.Run, now time.Time) (change, error) {
		a := store.AppendEntries(r, entries)
		return change{events: a.Events, stored: a.Stored, times: a.Times}, nil
	})
}

// AddArtifacts appends manifest entries and their artifact events.
func (s *Store) AddArtifacts(ctx context.Context, ref store.RunRef, entries []json.RawMessage) (*store.MutationResult, error) {
	return s.mutate(ctx, ref, nil, func(r *store.Run, now time.Time) (change, error) {
		events, err := store.AddArtifactEntries(r, entries, now)
		if err != nil {
			return change{}, err
		}
		return stateChange(events, now), nil
	})
}
