package postgres

// WithScanHook has fn told the size of every entry QueryLog, Events and
// EventsBefore receive from PostgreSQL (those dropped past the budget
// included), so tests can bound what a read transfers without timing.
func WithScanHook(fn func(bytes int)) Option { return func(s *Store) { s.onScan = fn } }
