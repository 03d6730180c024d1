//go:build race

package examplesvc

// raceEnabled: under the race detector sync.Pool drops a share of what it
// is given on purpose, so pooled code allocates and cannot be measured.
const raceEnabled = true
