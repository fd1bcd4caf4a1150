package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"runhub/store"
)

// EnqueueUserMessage appends a user message to the run's queue. The run's
// row lock serialises the count and the insert against other senders on
// any node, so the bound holds.
func (s *Store) EnqueueUserMessage(ctx context.Context, ref store.RunRef, params json.RawMessage) (int64, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return 0, fmt.Errorf("begin: %w", classify(err))
	}
	defer rollback(ctx, tx)
	if _, err := findRun(ctx, tx, lockRunSQL, ref); err != nil {
		return 0, err
	}
	id, err := enqueueTx(ctx, tx, ref.RunID, params, s.clock())
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", classify(err))
	}
	return id, nil
}

// enqueueTx appends params to the queue of the run in tx, within
// store.MaxQueuedUserMessages; the caller holds the run's row lock.
func enqueueTx(ctx context.Context, tx pgx.Tx, runID string, params json.RawMessage, now time.Time) (int64, error) {
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM user_message_queue WHERE run_id = $1", runID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count queued messages: %w", classify(err))
	}
	if n >= store.MaxQueuedUserMessages {
		return 0, store.ErrQueueFull
	}
	var id int64
	if err := tx.QueryRow(ctx, "INSERT INTO user_message_queue (run_id, params, created_at) VALUES ($1, $2, $3) RETURNING id",
		runID, string(params), micros(now)).Scan(&id); err != nil {
		return 0, fmt.Errorf("queue user message: %w", classify(err))
	}
	return id, nil
}

// PendingUserMessages counts the run's queued messages.
func (s *Store) PendingUserMessages(ctx context.Context, runID string) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM user_message_queue WHERE run_id = $1", runID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count queued messages: %w", classify(err))
	}
	return n, nil
}

// TakeUserMessage deletes and returns the run's oldest queued message in
// one statement. Of two nodes racing, the second waits on the row lock
// the subquery takes and then finds the row gone: it gets nothing (and
// looks again at its next turn), never the same message.
func (s *Store) TakeUserMessage(ctx context.Context, runID string) (*store.QueuedMessage, error) {
	var m store.QueuedMessage
	var params string
	var created int64
	err := s.pool.QueryRow(ctx, `DELETE FROM user_message_queue WHERE id =
		(SELECT id FROM user_message_queue WHERE run_id = $1 ORDER BY id LIMIT 1 FOR UPDATE)
		RETURNING id, run_id, params, created_at`, runID).Scan(&m.ID, &m.RunID, &params, &created)
	if errors.Is(err, pgx.ErrNoRows) {
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
	if _, err := s.pool.Exec(ctx, "INSERT INTO user_message_queue (id, run_id, params, created_at) VALUES ($1, $2, $3, $4)",
		m.ID, m.RunID, string(m.Params), micros(m.CreatedAt)); err != nil {
		return fmt.Errorf("requeue user message: %w", classify(err))
	}
	return nil
}
