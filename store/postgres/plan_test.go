package postgres_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestIdempotencyExpiryPlan: the delete of a run's expired idempotency
// keys, which every keyed append runs, seeks by (rid, created_at) instead
// of reading every key the run kept. Sequential scans are turned off for
// the EXPLAIN so that the planner's choice on an empty table is the index
// it would use on a large one.
func TestIdempotencyExpiryPlan(t *testing.T) {
	_, url := openTemp(t)
	ctx := t.Context()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	var plan []string
	rows, err := c.Query(ctx, "EXPLAIN DELETE FROM idempotency_keys WHERE rid = 1 AND created_at < 2")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(plan, "\n")
	if !strings.Contains(got, "idempotency_keys_expiry") || !strings.Contains(got, "Index Cond: ((rid = 1) AND (created_at < 2))") {
		t.Errorf("plan:\n%s\nwant an index condition on (rid, created_at) with idempotency_keys_expiry", got)
	}
}
