//go:build !race

package keyseq_test

const raceEnabled = false
