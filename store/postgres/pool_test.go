package postgres_test

import (
	"strings"
	"testing"

	"runhub/store/postgres"
)

// TestPoolSize: without pool_max_conns in the URL the pool holds
// DefaultPoolConns connections, so that many commits can wait on one WAL
// flush together; the URL's own setting wins.
func TestPoolSize(t *testing.T) {
	s, url := openTemp(t)
	if n := postgres.PoolMaxConns(s); n != postgres.DefaultPoolConns {
		t.Fatalf("pool of %d connections, want %d", n, postgres.DefaultPoolConns)
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	small, err := postgres.Open(t.Context(), url+sep+"pool_max_conns=5")
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	if n := postgres.PoolMaxConns(small); n != 5 {
		t.Fatalf("pool_max_conns=5: pool of %d", n)
	}
}
