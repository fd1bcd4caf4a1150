package sqlite

import (
	"path/filepath"
	"strings"
	"testing"

	"runhub/store"
)

// The filters PostHog's desktop app sends on every list (repository,
// created_by) are answered from their indexes, not by scanning every task
// of the project.
func TestTaskFilterIndexes(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "runhub.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var key int64 = 7
	for _, tc := range []struct {
		name, index string
		q           store.TaskQuery
	}{
		{"repository", "tasks_by_repository", store.TaskQuery{Repository: new(string)}},
		{"created_by", "tasks_by_creator", store.TaskQuery{CreatedBy: &key}},
	} {
		where, args := taskFilter(1, tc.q)
		if got := queryPlan(t, s, "SELECT t.seq FROM tasks t WHERE "+where+" ORDER BY t.seq DESC", args...); !strings.Contains(got, "USING INDEX "+tc.index) && !strings.Contains(got, "USING COVERING INDEX "+tc.index) {
			t.Errorf("%s: plan %q does not use %s", tc.name, got, tc.index)
		}
	}
}

// queryPlan is SQLite's plan for q, its details joined with "; ".
func queryPlan(t *testing.T, s *Store, q string, args ...any) string {
	t.Helper()
	rows, err := s.r.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(plan, "; ")
}
