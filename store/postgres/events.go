package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"runhub/store"
)

// streamPage is how many entries StreamLog reads per query: large enough to
// amortise the query, small enough that a page ends soon after it starts.
const streamPage = 1000

// scanned reports an entry received from PostgreSQL by a bounded read.
func (s *Store) scanned(n int) {
	if s.onScan != nil {
		s.onScan(n)
	}
}

// budgeted wraps a page query (which must select seq and data, ordered by
// seq in the direction order, with its LIMIT and OFFSET) so that the server
// returns only the rows that start within maxBytes, the one that crosses it
// included: a running sum of the entries' sizes, computed from the sizes
// alone (octet_length of a stored value reads its header, not the value),
// drops the rest before their data is read or sent. Without it the server
// would send every row up to the limit, 5,000 entries of 1 MiB, and the
// client would read them all to discard them.
func budgeted(page, order, budgetParam string) string {
	return "SELECT * FROM (SELECT *, sum(octet_length(data)) OVER (ORDER BY seq " + order + ") - octet_length(data) AS before FROM (" +
		page + ") p) w WHERE before < " + budgetParam + " ORDER BY seq " + order
}

// Events returns up to limit events of the run with seq > after, in order,
// stopping at the read budget.
func (s *Store) Events(ctx context.Context, runID string, after int64, limit int) ([]store.Event, error) {
	return s.boundedEvents(ctx, runID, ">", "ASC", after, limit, store.ReadPageBytes)
}

// EventsBefore returns the newest events of the run with seq < before, in
// seq order, reading newest first and stopping at the byte budget.
func (s *Store) EventsBefore(ctx context.Context, runID string, before int64, limit, maxBytes int) ([]store.Event, error) {
	out, err := s.boundedEvents(ctx, runID, "<", "DESC", before, limit, maxBytes)
	slices.Reverse(out)
	return out, err
}

// boundedEvents reads the events of run with seq op seq, in order, and
// stops before the event that would take their data past maxBytes, keeping
// at least one.
func (s *Store) boundedEvents(ctx context.Context, runID, op, order string, seq int64, limit, maxBytes int) ([]store.Event, error) {
	var rid int64
	if err := s.pool.QueryRow(ctx, "SELECT rid FROM runs WHERE id = $1", runID).Scan(&rid); err != nil {
		return nil, notFound(err, "find run")
	}
	page := "SELECT seq, kind, event_type, data FROM run_events WHERE rid = $1 AND seq " + op + " $2 ORDER BY seq " + order + " LIMIT $3"
	rows, err := s.pool.Query(ctx, budgeted(page, order, "$4"), rid, seq, limit, maxBytes)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Event
	size, full := 0, false
	for rows.Next() {
		ev := store.Event{RunID: runID}
		var data []byte
		var before int64
		if err := rows.Scan(&ev.Seq, &ev.Kind, &ev.Type, &data, &before); err != nil {
			return nil, fmt.Errorf("scan event: %w", err)
		}
		s.scanned(len(data))
		if full || (len(out) > 0 && size+len(data) > maxBytes) {
			full = true // the rest is read to the end of the reply, and dropped
			continue
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
	b.WriteString(" WHERE rid = $1 AND kind = 'log' AND seq > $2")
	if q.After != nil {
		args = append(args, micros(*q.After))
		b.WriteString(" AND ts > $" + strconv.Itoa(len(args)))
	}
	in := func(op string, types []string) {
		if len(types) == 0 {
			return
		}
		args = append(args, types)
		b.WriteString(" AND " + op + "(event_type = ANY($" + strconv.Itoa(len(args)) + "))")
	}
	in("", q.EventTypes)
	in("NOT ", q.ExcludeTypes)
	return b.String(), args
}

// QueryLog returns one filtered page of a run's stored log entries; the
// counts and the page come from one snapshot.
func (s *Store) QueryLog(ctx context.Context, ref store.RunRef, q store.LogQuery) (*store.LogPage, error) {
	tx, err := s.begin(ctx, pgxReadSnapshot)
	if err != nil {
		return nil, fmt.Errorf("begin read: %w", classify(err))
	}
	defer rollback(ctx, tx)
	r, err := findRun(ctx, tx, findRunSQL, ref)
	if err != nil {
		return nil, err
	}
	where, args := logFilter(r.rid, q)
	page := &store.LogPage{Total: r.LogCount, Entries: []json.RawMessage{}}
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM run_events"+where, args...).Scan(&page.Matching); err != nil {
		return nil, fmt.Errorf("count log entries: %w", classify(err))
	}
	budget := q.MaxBytes
	if budget <= 0 {
		budget = store.ReadPageBytes
	}
	n := len(args)
	sql := budgeted("SELECT seq, data FROM run_events"+where+" ORDER BY seq LIMIT $"+strconv.Itoa(n+1)+" OFFSET $"+strconv.Itoa(n+2),
		"ASC", "$"+strconv.Itoa(n+3))
	rows, err := tx.Query(ctx, sql, append(args, q.Limit, q.Offset, budget)...)
	if err != nil {
		return nil, fmt.Errorf("read log entries: %w", classify(err))
	}
	defer rows.Close()
	size, full := 0, false
	for rows.Next() {
		var seq, before int64
		var data []byte
		if err := rows.Scan(&seq, &data, &before); err != nil {
			return nil, fmt.Errorf("scan log entry: %w", err)
		}
		s.scanned(len(data))
		if full || (len(page.Entries) > 0 && size+len(data) > budget) {
			full = true // the rest is read to the end of the reply, and dropped
			continue
		}
		size += len(data)
		page.Entries = append(page.Entries, data)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read log entries: %w", classify(err))
	}
	return page, nil
}

// StreamLog calls fn with each stored entry of the run, in seq order, up to
// the last seq the run had when the call began. pgx hands rows over as they
// arrive, so a page of large entries is never held whole.
func (s *Store) StreamLog(ctx context.Context, ref store.RunRef, fn func(entry []byte) error) error {
	r, err := findRun(ctx, s.pool, findRunSQL, ref)
	if err != nil {
		return err
	}
	after := int64(0)
	for after < r.LastSeq {
		n, err := s.streamPage(ctx, r, &after, fn)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
	}
	return nil
}

// streamPage hands fn one page of entries after *after and advances it.
func (s *Store) streamPage(ctx context.Context, r *runRow, after *int64, fn func(entry []byte) error) (int, error) {
	rows, err := s.pool.Query(ctx, "SELECT seq, data FROM run_events WHERE rid = $1 AND seq > $2 AND seq <= $3 AND kind = 'log' ORDER BY seq LIMIT $4",
		r.rid, *after, r.LastSeq, streamPage)
	if err != nil {
		return 0, fmt.Errorf("read log: %w", classify(err))
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var data []byte
		if err := rows.Scan(after, &data); err != nil {
			return n, fmt.Errorf("scan log entry: %w", err)
		}
		n++
		if err := fn(data); err != nil {
			return n, err
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("read log: %w", classify(err))
	}
	return n, nil
}
