package store_test

import (
	"testing"

	"runhub/store"
)

func TestTaskSlug(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int64
		want string
	}{
		{"Acme", 1, "ACM-1"},
		{"a-c m e", 12, "ACM-12"},
		{"Žluťoučký kůň", 3, "LUO-3"}, // ASCII letters only
		{"Go", 4, "TSK-4"},            // fewer than three letters
		{"", 5, "TSK-5"},
		{"42 things", 6, "THI-6"},
	} {
		if got := store.TaskSlug(tc.name, tc.n); got != tc.want {
			t.Errorf("TaskSlug(%q, %d) = %q, want %q", tc.name, tc.n, got, tc.want)
		}
	}
}
