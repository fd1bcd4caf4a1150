package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"runhub/store"
)

// DefaultRelayLease is how long the node that took a relay in DueRelays
// has it to itself unless WithRelayLease says otherwise: longer than one
// delivery (a thread lookup and a post, each bounded by the Slack client's
// 30 s timeout) so that no other node posts it meanwhile, and short enough
// that a node that died mid-delivery delays the message by no more than
// two minutes. A lease that does expire mid-post is still safe: the next
// taker looks in the thread before it posts again (Attempts > 0).
const DefaultRelayLease = 2 * time.Minute

// CreateRelay stores an accepted relay message.
func (s *Store) CreateRelay(ctx context.Context, r store.Relay) error {
	now := micros(s.clock())
	_, err := s.pool.Exec(ctx, `INSERT INTO relays (id, run_id, channel, thread_ts, text, status, attempts, next_at, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9)`, r.ID, r.RunID, r.Channel, r.ThreadTS, r.Text, store.RelayPending, micros(r.NextAt), now, now)
	if err != nil {
		return fmt.Errorf("create relay: %w", classify(err))
	}
	return nil
}

const relayColumns = "id, run_id, channel, thread_ts, text, status, attempts, last_error, next_at, created_at"

func scanRelay(sc interface{ Scan(...any) error }) (*store.Relay, error) {
	var r store.Relay
	var lastErr *string
	var next, created int64
	if err := sc.Scan(&r.ID, &r.RunID, &r.Channel, &r.ThreadTS, &r.Text, &r.Status, &r.Attempts, &lastErr, &next, &created); err != nil {
		return nil, err
	}
	if lastErr != nil {
		r.LastError = *lastErr
	}
	r.NextAt, r.CreatedAt = fromMicros(next), fromMicros(created)
	return &r, nil
}

// DueRelays takes up to limit pending relays whose next_at has come and
// that no node holds, oldest first, and leases them to the caller until
// now + the relay lease (DefaultRelayLease, or WithRelayLease): the relay workers of several nodes share the outbox
// and each relay goes to one of them. SKIP LOCKED lets two nodes claiming
// at once take different rows instead of waiting for each other.
func (s *Store) DueRelays(ctx context.Context, now time.Time, limit int) ([]store.Relay, error) {
	rows, err := s.pool.Query(ctx, `UPDATE relays SET lease_until = $2 WHERE id IN (
		SELECT id FROM relays WHERE status = $3 AND next_at <= $1 AND lease_until <= $1
		ORDER BY next_at, created_at LIMIT $4 FOR UPDATE SKIP LOCKED)
		RETURNING `+relayColumns, micros(now), micros(now.Add(s.relayLease)), store.RelayPending, limit)
	if err != nil {
		return nil, fmt.Errorf("due relays: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Relay
	for rows.Next() {
		r, err := scanRelay(rows)
		if err != nil {
			return nil, fmt.Errorf("due relays: %w", err)
		}
		out = append(out, *r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("due relays: %w", classify(err))
	}
	// RETURNING has no order.
	slices.SortFunc(out, func(a, b store.Relay) int {
		if c := a.NextAt.Compare(b.NextAt); c != 0 {
			return c
		}
		return a.CreatedAt.Compare(b.CreatedAt)
	})
	return out, nil
}

// UpdateRelay records a relay's progress. Recording an attempt (status
// and next_at unchanged) keeps the lease, since the post follows; an
// outcome (sent, failed, or a retry at a new next_at) ends it, so that a
// retry is due at its next_at on any node.
func (s *Store) UpdateRelay(ctx context.Context, r store.Relay) error {
	var lastErr *string
	if r.LastError != "" {
		lastErr = &r.LastError
	}
	tag, err := s.pool.Exec(ctx, `UPDATE relays SET status = $1, attempts = $2, last_error = $3, next_at = $4, updated_at = $5,
		lease_until = CASE WHEN status = $1 AND next_at = $4 THEN lease_until ELSE 0 END WHERE id = $6`,
		r.Status, r.Attempts, lastErr, micros(r.NextAt), micros(s.clock()), r.ID)
	if err != nil {
		return fmt.Errorf("update relay: %w", classify(err))
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}

// GetRelay reads one relay.
func (s *Store) GetRelay(ctx context.Context, id string) (*store.Relay, error) {
	r, err := scanRelay(s.pool.QueryRow(ctx, "SELECT "+relayColumns+" FROM relays WHERE id = $1", id))
	if err != nil {
		return nil, notFound(err, "get relay")
	}
	return r, nil
}
