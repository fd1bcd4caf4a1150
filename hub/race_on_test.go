//go:build race

package hub_test

// raceOn: the race detector allocates on its own (shadow memory, per
// goroutine state), so heap sizes are not asserted under it.
const raceOn = true
