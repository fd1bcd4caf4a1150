package sqlite

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestAppendPathPlans: every statement a keyed append runs seeks by its
// index rather than reading a run's rows; in particular the expiry of old
// idempotency keys seeks to created_at (idempotency_keys_expiry) instead
// of reading every key the run recorded in the last 48 h on each append.
func TestAppendPathPlans(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "runhub.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		q    int
		args []any
		want string // in the plan
	}{
		{qIdemExpire, []any{1, 2}, "created_at<?"},
		{qIdemLookup, []any{1, "k"}, "rid=? AND key=?"},
		{qFindRun, []any{"r", 1, "t"}, "USING INDEX sqlite_autoindex_runs"},
		{qFindRunVersion, []any{"r", 1, "t"}, "SEARCH e USING PRIMARY KEY (rid=?)"},
	} {
		q := preparedQueries[tc.q]
		if got := queryPlan(t, s, q, tc.args...); !strings.Contains(got, tc.want) {
			t.Errorf("%s: plan %q, want %q in it", q, got, tc.want)
		}
	}
}
