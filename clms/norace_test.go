//go:build !race

package clms_test

const raceEnabled = false
