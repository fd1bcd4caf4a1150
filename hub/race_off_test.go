//go:build !race

package hub_test

const raceOn = false
