package clms_test

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
)

// The near-miss counters of a loaded node (docs/CLMS.md, "Loaded nodes"):
// every answered imalive lands in the round-trip bucket of its whole ticks.
// lan-fast ticks are 10 ms; 1 ms of network each way plus 40 ms extra at
// the slow node each way is an 82 ms round trip: 8 whole ticks, inside
// the 100 ms heartbeat, so none counts as missed.
func TestHeartbeatRTTStats(t *testing.T) {
	tm := clms.LANFastTiming()
	s := newSim(t, 3, 3, tm)
	form(t, s)
	slow := other(t, s)
	n := s.Node(slow)
	n.ExtraDelay = 40 * time.Millisecond
	before := n.Core.Stats()
	s.Run(10 * time.Second)
	st := n.Core.Stats()
	var answered uint64
	for i, c := range st.HeartbeatRTT {
		c -= before.HeartbeatRTT[i]
		answered += c
		if c != 0 && i != 8 {
			t.Errorf("%d imalives answered after %d ticks, want every one after 8", c, i)
		}
	}
	sent := st.HeartbeatsSent - before.HeartbeatsSent
	if answered == 0 || sent-answered > 2 {
		t.Fatalf("%d imalives answered of %d sent: at most the last two may be in flight", answered, sent)
	}
	if st.LeaseLapses != 0 || st.HeartbeatsMissed != before.HeartbeatsMissed {
		t.Fatalf("lease lapses %d, heartbeats missed %d: want none at 82 ms round trips", st.LeaseLapses, st.HeartbeatsMissed-before.HeartbeatsMissed)
	}
}

// A member whose grants are lost (the master hears its imalives, the
// answers do not arrive) lapses once when its lease runs out, and is not
// declared down when the answers arrive again.
func TestLeaseLapseStats(t *testing.T) {
	tm := clms.LANFastTiming()
	s := newSim(t, 3, 3, tm)
	form(t, s)
	victim := other(t, s)
	n := s.Node(victim)
	before := n.Core.Stats()
	master := s.Master()
	s.Drop(master, victim, 1)
	s.RunUntil(tm.LeaseTimeout+tm.LeaseMargin, func() bool { return !n.Core.Acting() })
	s.Drop(master, victim, 0)
	s.Run(time.Second)
	if got := n.Core.Stats().LeaseLapses - before.LeaseLapses; got != 1 {
		t.Fatalf("lease lapses %d, want 1", got)
	}
	if !s.Up(victim) || !n.Core.Acting() {
		t.Fatalf("node %d: up %v acting %v after the cut healed", victim, s.Up(victim), n.Core.Acting())
	}
}
