package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"runhub/store"
)

// CreateRelay stores an accepted relay message.
func (s *Store) CreateRelay(ctx context.Context, r store.Relay) error {
	now := micros(s.clock())
	_, err := s.w.ExecContext(ctx, `INSERT INTO relays (id, run_id, channel, thread_ts, text, status, attempts, next_at, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)`, r.ID, r.RunID, r.Channel, r.ThreadTS, r.Text, store.RelayPending, micros(r.NextAt), now, now)
	if err != nil {
		return fmt.Errorf("create relay: %w", classify(err))
	}
	return nil
}

const relayColumns = "id, run_id, channel, thread_ts, text, status, attempts, last_error, next_at, created_at"

func scanRelay(sc interface{ Scan(...any) error }) (*store.Relay, error) {
	var r store.Relay
	var lastErr sql.NullString
	var next, created int64
	if err := sc.Scan(&r.ID, &r.RunID, &r.Channel, &r.ThreadTS, &r.Text, &r.Status, &r.Attempts, &lastErr, &next, &created); err != nil {
		return nil, err
	}
	r.LastError, r.NextAt, r.CreatedAt = lastErr.String, fromMicros(next), fromMicros(created)
	return &r, nil
}

// DueRelays returns pending relays whose next_at has come, oldest first.
func (s *Store) DueRelays(ctx context.Context, now time.Time, limit int) ([]store.Relay, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT "+relayColumns+" FROM relays WHERE status = ? AND next_at <= ? ORDER BY next_at, created_at LIMIT ?",
		store.RelayPending, micros(now), limit)
	if err != nil {
		return nil, fmt.Errorf("due relays: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Relay
	for rows.Next() {
		r, err := scanRelay(rows)
		if err != nil {
			return nil, fmt.Errorf("due relays: %w", classify(err))
		}
		out = append(out, *r)
	}
	return out, rows.Err()
}

// UpdateRelay records a relay's progress.
func (s *Store) UpdateRelay(ctx context.Context, r store.Relay) error {
	res, err := s.w.ExecContext(ctx, "UPDATE relays SET status = ?, attempts = ?, last_error = ?, next_at = ?, updated_at = ? WHERE id = ?",
		r.Status, r.Attempts, sql.NullString{String: r.LastError, Valid: r.LastError != ""}, micros(r.NextAt), micros(s.clock()), r.ID)
	if err != nil {
		return fmt.Errorf("update relay: %w", classify(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return store.ErrNotFound
	}
	return nil
}

// GetRelay reads one relay.
func (s *Store) GetRelay(ctx context.Context, id string) (*store.Relay, error) {
	r, err := scanRelay(s.r.QueryRowContext(ctx, "SELECT "+relayColumns+" FROM relays WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get relay: %w", classify(err))
	}
	return r, nil
}
