package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"runhub/store"
)

// EnqueueUserMessage appends a user message to the run's queue; the run
// lookup, the count and the insert share the writer's transaction, so the
// bound holds against concurrent senders.
func (s *Store) EnqueueUserMessage(ctx context.Context, ref store.RunRef, params json.RawMessage) (int64, error) {
	var id int64
	_, err := s.write(ctx, func(tx *wtx) (*store.MutationResult, error) {
		if _, err := findRun(tx.queryRow(qFindRun, ref.RunID, ref.ProjectID, ref.TaskID)); err != nil {
			return nil, err
		}
		var err error
		id, err = enqueueTx(tx, ref.RunID, params, s.clock())
		return &store.MutationResult{}, err
	})
	if err != nil {
		return 0, err
	}
	return id, nil
}

const queueCountSQL = "SELECT count(*) FROM user_message_queue WHERE run_id = ?"

const queueInsertSQL = "INSERT INTO user_message_queue (run_id, params, created_at) VALUES (?, ?, ?)"

// enqueueTx appends params to the queue of the run in tx, within
// store.MaxQueuedUserMessages (the caller has found the run in tx).
func enqueueTx(tx *wtx, runID string, params json.RawMessage, now time.Time) (int64, error) {
	var n int
	if err := tx.queryRow(qQueueCount, runID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count queued messages: %w", classify(err))
	}
	if n >= store.MaxQueuedUserMessages {
		return 0, store.ErrQueueFull
	}
	res, err := tx.exec(qQueueInsert, runID, string(params), micros(now))
	if err != nil {
		return 0, fmt.Errorf("queue user message: %w", classify(err))
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("queue user message: %w", classify(err))
	}
	return id, nil
}

// PendingUserMessages counts the run's queued messages.
func (s *Store) PendingUserMessages(ctx context.Context, runID string) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM user_message_queue WHERE run_id = ?", runID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count queued messages: %w", classify(err))
	}
	return n, nil
}

// TakeUserMessage deletes and returns the run's oldest queued message in
// one statement on the one writer connection.
func (s *Store) TakeUserMessage(ctx context.Context, runID string) (*store.QueuedMessage, error) {
	var m store.QueuedMessage
	var params string
	var created int64
	err := s.w.QueryRowContext(ctx, `DELETE FROM user_message_queue WHERE id =
		(SELECT id FROM user_message_queue WHERE run_id = ? ORDER BY id LIMIT 1)
		RETURNING id, run_id, params, created_at`, runID).Scan(&m.ID, &m.RunID, &params, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("take queued message: %w", classify(err))
	}
	m.Params, m.CreatedAt = json.RawMessage(params), fromMicros(created)
	return &m, nil
}

// RequeueUserMessage puts a taken message back under its id.
func (s *Store) RequeueUserMessage(ctx context.Context, m *store.QueuedMessage) error {
	if _, err := s.w.ExecContext(ctx, "INSERT INTO user_message_queue (id, run_id, params, created_at) VALUES (?, ?, ?, ?)",
		m.ID, m.RunID, string(m.Params), micros(m.CreatedAt)); err != nil {
		return fmt.Errorf("requeue user message: %w", classify(err))
	}
	return nil
}
