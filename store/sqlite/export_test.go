package sqlite

// WithScanHook has fn told the size of every entry QueryLog and EventsBefore
// copy out of SQLite, so tests can bound what a read holds without timing.
func WithScanHook(fn func(bytes int)) Option { return func(s *Store) { s.onScan = fn } }
