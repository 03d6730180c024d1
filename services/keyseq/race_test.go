//go:build race

package keyseq_test

const raceEnabled = true
