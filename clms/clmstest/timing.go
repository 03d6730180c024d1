package clmstest

import (
	"time"

	"github.com/clusterinfra/ci/clms"
)

// Stretch multiplies t's protocol timers by k, keeping the tick and the
// callback and join timeouts: for tests of real processes and goroutines on
// a machine shared by many (or under the race detector), where a stall
// longer than lan-fast's 300 ms lease is a (correct) suspension, not what
// the test is about.
func Stretch(t clms.Timing, k time.Duration) clms.Timing {
	t.Heartbeat *= k
	t.LeaseTimeout *= k
	t.LeaseMargin *= k
	t.ProbeAfter *= k
	t.ElectionTimeout *= k
	t.RaftHeartbeat *= k
	return t
}
