package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"runhub/store"
)

// streamPage is how many entries StreamLog reads per query: large enough to
// amortise the query, small enough to keep memory flat for any log length.
const streamPage = 1000

// scanned reports an entry copied out of SQLite by a bounded read.
func (s *Store) scanned(n int) {
	if s.onScan != nil {
		s.onScan(n)
	}
}

// Events returns up to limit events of the run with seq > after, in order,
// stopping at the read budget.
func (s *Store) Events(ctx context.Context, runID string, after int64, limit int) ([]store.Event, error) {
	return s.boundedEvents(ctx, runID, "seq > ? ORDER BY seq", after, limit, store.ReadPageBytes)
}

// boundedEvents reads the events of run matching where (on seq, with its
// order) and stops before the event that would take their data past
// maxBytes, keeping at least one: it never copies more than maxBytes and one
// event out of SQLite.
func (s *Store) boundedEvents(ctx context.Context, runID, where string, seq int64, limit, maxBytes int) ([]store.Event, error) {
	var rid int64
	err := s.r.QueryRowContext(ctx, "SELECT rid FROM runs WHERE id = ?", runID).Scan(&rid)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("find run: %w", classify(err))
	}
	rows, err := s.r.QueryContext(ctx, "SELECT seq, kind, event_type, data FROM run_events WHERE rid = ? AND "+where+" LIMIT ?", rid, seq, limit)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Event
	size := 0
	for rows.Next() {
		ev := store.Event{RunID: runID}
		var data []byte
		if err := rows.Scan(&ev.Seq, &ev.Kind, &ev.Type, &data); err != nil {
			return nil, fmt.Errorf("scan event: %w", classify(err))
		}
		s.scanned(len(data))
		if len(out) > 0 && size+len(data) > maxBytes {
			break
		}
		size += len(data)
		ev.Data = data
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events: %w", classify(err))
	}
	return out, nil
}

// logFilter builds the WHERE clause shared by session_logs' count and page.
func logFilter(rid int64, q store.LogQuery) (string, []any) {
	var b strings.Builder
	args := []any{rid, q.AfterSeq}
	b.WriteString(" WHERE rid = ? AND kind = 'log' AND seq > ?")
	if q.After != nil {
		b.WriteString(" AND ts > ?")
		args = append(args, q.After.UnixMicro())
	}
	in := func(op string, types []string) {
		if len(types) == 0 {
			return
		}
		b.WriteString(" AND event_type " + op + " (")
		for i, t := range types {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("?")
			args = append(args, t)
		}
		b.WriteString(")")
	}
	in("IN", q.EventTypes)
	in("NOT IN", q.ExcludeTypes)
	return b.String(), args
}

// QueryLog returns one filtered page of a run's stored log entries; the
// counts and the page come from one snapshot.
func (s *Store) QueryLog(ctx context.Context, ref store.RunRef, q store.LogQuery) (*store.LogPage, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("begin read: %w", classify(err))
	}
	defer tx.Rollback()
	r, err := findRun(tx.QueryRowContext(ctx, findRunSQL, runKey(ref)...))
	if err != nil {
		return nil, err
	}
	where, args := logFilter(r.rid, q)
	page := &store.LogPage{Total: r.LogCount, Entries: []json.RawMessage{}}
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM run_events"+where, args...).Scan(&page.Matching); err != nil {
		return nil, fmt.Errorf("count log entries: %w", classify(err))
	}
	rows, err := tx.QueryContext(ctx, "SELECT data FROM run_events"+where+" ORDER BY seq LIMIT ? OFFSET ?", append(args, q.Limit, q.Offset)...)
	if err != nil {
		return nil, fmt.Errorf("read log entries: %w", classify(err))
	}
	defer rows.Close()
	budget := q.MaxBytes
	if budget <= 0 {
		budget = store.ReadPageBytes
	}
	size := 0
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("scan log entry: %w", classify(err))
		}
		s.scanned(len(data))
		if len(page.Entries) > 0 && size+len(data) > budget {
			break // the rows after it are never read
		}
		size += len(data)
		page.Entries = append(page.Entries, data)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read log entries: %w", classify(err))
	}
	return page, nil
}

// EventsBefore returns the newest events of the run with seq < before, in
// seq order, reading newest first and stopping at the byte budget.
func (s *Store) EventsBefore(ctx context.Context, runID string, before int64, limit, maxBytes int) ([]store.Event, error) {
	out, err := s.boundedEvents(ctx, runID, "seq < ? ORDER BY seq DESC", before, limit, maxBytes)
	slices.Reverse(out)
	return out, err
}

// StreamLog calls fn with each stored entry of the run, in seq order, up to
// the last seq the run had when the call began.
func (s *Store) StreamLog(ctx context.Context, ref store.RunRef, fn func(entry []byte) error) error {
	r, err := findRun(s.r.QueryRowContext(ctx, findRunSQL, runKey(ref)...))
	if err != nil {
		return err
	}
	after := int64(0)
	for after < r.LastSeq {
		rows, err := s.r.QueryContext(ctx, "SELECT seq, data FROM run_events WHERE rid = ? AND seq > ? AND seq <= ? AND kind = 'log' ORDER BY seq LIMIT ?",
			r.rid, after, r.LastSeq, streamPage)
		if err != nil {
			return fmt.Errorf("read log: %w", classify(err))
		}
		n := 0
		for rows.Next() {
			var data []byte
			if err := rows.Scan(&after, &data); err != nil {
				rows.Close()
				return fmt.Errorf("scan log entry: %w", classify(err))
			}
			n++
			if err := fn(data); err != nil {
				rows.Close()
				return err
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read log: %w", classify(err))
		}
		if n == 0 {
			break
		}
	}
	return nil
}
