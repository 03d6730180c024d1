//go:build !race

package examplesvc

const raceEnabled = false
