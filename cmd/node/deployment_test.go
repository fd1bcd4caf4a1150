package node_test

import (
	"context"
	"testing"

	"runhub/cmd/node"
	"runhub/store"
	"runhub/store/blob"
)

// sharedStore stands for a store that keeps the nodes' secrets (PostgreSQL).
type sharedStore struct{ store.Store }

func (sharedStore) Secret(context.Context, string, func() ([]byte, error)) ([]byte, error) {
	return nil, nil
}

// TestDeploymentWarnings: a shared store with a broker means several
// machines, where artifacts on one node's filesystem cannot work; a single
// node on a shared store, several processes on one SQLite directory, or a
// bucket for the artifacts are fine.
func TestDeploymentWarnings(t *testing.T) {
	var local store.Store // a store that keeps no secrets (SQLite)
	for _, tc := range []struct {
		name string
		cfg  node.Config
		warn bool
	}{
		{"shared store, broker, files", node.Config{Store: sharedStore{}, RedisURL: "redis://r"}, true},
		{"shared store, broker, s3", node.Config{Store: sharedStore{}, RedisURL: "redis://r", S3: &blob.S3Config{}}, false},
		{"shared store alone", node.Config{Store: sharedStore{}}, false},
		{"sqlite, broker", node.Config{Store: local, RedisURL: "redis://r"}, false},
	} {
		if got := node.DeploymentWarnings(tc.cfg); (len(got) > 0) != tc.warn {
			t.Errorf("%s: warnings %q, want any: %v", tc.name, got, tc.warn)
		}
	}
}
