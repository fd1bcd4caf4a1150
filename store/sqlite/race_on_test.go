//go:build race

package sqlite_test

// raceEnabled: the race detector allocates on its own, so allocation
// counts are not asserted under it (make test counts them in a pass
// without -race).
const raceEnabled = true
