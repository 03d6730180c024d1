package engine

import "testing"

// TestDefaultEventLoopsLeaveAP pins the rule behind issue 10's fix: event
// loops by default leave one P that no loop can hold in epoll_wait (a loop
// per P let every P be held and goroutines waited milliseconds for sysmon),
// and there is always a loop. Before the fix the default was GOMAXPROCS,
// which fails the procs > 1 rows.
func TestDefaultEventLoopsLeaveAP(t *testing.T) {
	for _, tc := range []struct{ procs, want int }{{1, 1}, {2, 1}, {3, 2}, {8, 7}, {64, 63}} {
		if got := DefaultEventLoops(tc.procs); got != tc.want {
			t.Errorf("DefaultEventLoops(%d) = %d, want %d", tc.procs, got, tc.want)
		}
	}
}
