package postgres

import "time"

// WithScanHook has fn told the size of every entry QueryLog, Events and
// EventsBefore receive from PostgreSQL (those dropped past the budget
// included), so tests can bound what a read transfers without timing.
func WithScanHook(fn func(bytes int)) Option { return func(s *Store) { s.onScan = fn } }

// WithLockTimeout replaces lockTimeout, so a test of a stalled lock holder
// takes a fraction of a second.
func WithLockTimeout(d time.Duration) Option { return func(s *Store) { s.lockTimeout = d } }

// PoolMaxConns is the size of the store's connection pool.
func PoolMaxConns(s *Store) int32 { return s.pool.Config().MaxConns }

// DefaultPoolConns is defaultPoolConns for tests.
const DefaultPoolConns = defaultPoolConns
