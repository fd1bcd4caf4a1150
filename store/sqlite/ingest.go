package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"runhub/store"
)

const ingestReadSQL = "SELECT last_accepted_seq, completed FROM run_ingest WHERE rid = ?"

const ingestWriteSQL = `INSERT INTO run_ingest (rid, last_accepted_seq, completed) VALUES (?, ?, ?)
		ON CONFLICT (rid) DO UPDATE SET last_accepted_seq = excluded.last_accepted_seq, completed = excluded.completed`

// scanIngestState reads an ingest row (zero when the run has none).
func scanIngestState(row *sql.Row) (store.IngestState, error) {
	var st store.IngestState
	err := row.Scan(&st.LastAccepted, &st.Complete)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return st, fmt.Errorf("read ingest state: %w", classify(err))
	}
	return st, nil
}

// writeIngestState stores run rid's ingest row.
func writeIngestState(tx *wtx, rid int64, st store.IngestState) error {
	_, err := tx.exec(qIngestWrite, rid, st.LastAccepted, st.Complete)
	if err != nil {
		return fmt.Errorf("write ingest state: %w", classify(err))
	}
	return nil
}

// IngestState reads the run's ingest sequence.
func (s *Store) IngestState(ctx context.Context, ref store.RunRef) (store.IngestState, error) {
	r, err := findRun(s.r.QueryRowContext(ctx, findRunSQL, runKey(ref)...))
	if err != nil {
		return store.IngestState{}, err
	}
	return scanIngestState(s.r.QueryRowContext(ctx, ingestReadSQL, r.rid))
}

// IngestEvents checks the lines' sender seqs against the run's ingest row
// and appends the accepted ones, in the one write transaction SQLite
// allows at a time: no other writer, in this process or another, sees the
// row between the check and the append.
func (s *Store) IngestEvents(ctx context.Context, ref store.RunRef, lines []store.IngestLine) (*store.IngestResult, error) {
	var out store.IngestResult
	res, err := s.mutateLog(ctx, ref, nil, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		st, err := scanIngestState(tx.queryRow(qIngestRead, r.rid))
		if err != nil {
			return nil, err
		}
		accept, dup, after, conflict := store.SequenceIngest(st, lines)
		out.Accepted, out.Duplicate, out.State, out.Conflict = len(accept), dup, after, conflict
		if len(accept) == 0 {
			return nil, nil
		}
		events, err := appendEntries(tx, r, accept)
		if err != nil {
			return nil, err
		}
		return events, writeIngestState(tx, r.rid, after)
	})
	if err != nil {
		return nil, err
	}
	out.MutationResult = *res
	return &out, nil
}

// CompleteIngest marks the run's ingest complete when finalSeq is its last
// accepted seq.
func (s *Store) CompleteIngest(ctx context.Context, ref store.RunRef, finalSeq int64) (*store.IngestResult, error) {
	var out store.IngestResult
	res, err := s.mutateLog(ctx, ref, nil, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		st, err := scanIngestState(tx.queryRow(qIngestRead, r.rid))
		if err != nil {
			return nil, err
		}
		after, conflict := store.CompleteIngestRule(st, finalSeq)
		out.State, out.Conflict = after, conflict
		if conflict != nil || st.Complete {
			return nil, nil
		}
		return nil, writeIngestState(tx, r.rid, after)
	})
	if err != nil {
		return nil, err
	}
	out.MutationResult = *res
	return &out, nil
}
