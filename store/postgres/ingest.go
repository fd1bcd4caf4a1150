package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"runhub/store"
)

// ingestState reads run rid's ingest row (zero when it has none).
func ingestState(ctx context.Context, q querier, rid int64) (store.IngestState, error) {
	var st store.IngestState
	err := q.QueryRow(ctx, "SELECT last_accepted_seq, completed FROM run_ingest WHERE rid = $1", rid).Scan(&st.LastAccepted, &st.Complete)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("read ingest state: %w", classify(err))
	}
	return st, nil
}

// writeIngestState stores run rid's ingest row.
func writeIngestState(ctx context.Context, tx pgx.Tx, rid int64, st store.IngestState) error {
	_, err := tx.Exec(ctx, `INSERT INTO run_ingest (rid, last_accepted_seq, completed) VALUES ($1, $2, $3)
		ON CONFLICT (rid) DO UPDATE SET last_accepted_seq = EXCLUDED.last_accepted_seq, completed = EXCLUDED.completed`,
		rid, st.LastAccepted, st.Complete)
	if err != nil {
		return fmt.Errorf("write ingest state: %w", classify(err))
	}
	return nil
}

// IngestState reads the run's ingest sequence.
func (s *Store) IngestState(ctx context.Context, ref store.RunRef) (store.IngestState, error) {
	r, err := findRun(ctx, s.pool, findRunSQL, ref)
	if err != nil {
		return store.IngestState{}, err
	}
	return ingestState(ctx, s.pool, r.rid)
}

// ingestTx runs fn on the run under its row lock (the lock every writer of
// the run takes, on every node), with the run's ingest state read after
// the lock, and commits what fn wrote.
func (s *Store) ingestTx(ctx context.Context, ref store.RunRef,
	fn func(tx pgx.Tx, r *runRow, st store.IngestState) ([]store.Event, error)) (*store.MutationResult, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer rollback(ctx, tx)
	r, err := findRun(ctx, tx, lockRunSQL, ref)
	if err != nil {
		return nil, err
	}
	st, err := ingestState(ctx, tx, r.rid)
	if err != nil {
		return nil, err
	}
	events, err := fn(tx, r, st)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", classify(err))
	}
	return &store.MutationResult{Run: &r.Run, Events: events}, nil
}

// IngestEvents checks the lines' sender seqs against the run's ingest row
// and appends the accepted ones, under the run's row lock: a node that
// sends the same seq at the same moment waits for this commit and then
// finds it accepted.
func (s *Store) IngestEvents(ctx context.Context, ref store.RunRef, lines []store.IngestLine) (*store.IngestResult, error) {
	var out store.IngestResult
	res, err := s.ingestTx(ctx, ref, func(tx pgx.Tx, r *runRow, st store.IngestState) ([]store.Event, error) {
		accept, dup, after, conflict := store.SequenceIngest(st, lines)
		out.Accepted, out.Duplicate, out.State, out.Conflict = len(accept), dup, after, conflict
		if len(accept) == 0 {
			return nil, nil
		}
		a := store.AppendEntries(&r.Run, accept)
		if err := insertEvents(ctx, tx, r.rid, a.Stored, a.Times); err != nil {
			return nil, err
		}
		if len(a.Stored) > 0 {
			if _, err := tx.Exec(ctx, "UPDATE runs SET last_seq = $1, log_count = $2 WHERE rid = $3", r.LastSeq, r.LogCount, r.rid); err != nil {
				return nil, fmt.Errorf("update run seq: %w", classify(err))
			}
		}
		return a.Events, writeIngestState(ctx, tx, r.rid, after)
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
	res, err := s.ingestTx(ctx, ref, func(tx pgx.Tx, r *runRow, st store.IngestState) ([]store.Event, error) {
		after, conflict := store.CompleteIngestRule(st, finalSeq)
		out.State, out.Conflict = after, conflict
		if conflict != nil || st.Complete {
			return nil, nil
		}
		return nil, writeIngestState(ctx, tx, r.rid, after)
	})
	if err != nil {
		return nil, err
	}
	out.MutationResult = *res
	return &out, nil
}
