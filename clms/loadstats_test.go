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

// A voter that stops hearing the master (here: every message from the
// master to it is lost, as when the voter is starved of CPU and reads its
// socket late) has its election timer fire and pre-votes, which changes no
// term: the master of the term is still the master, and the voter must go
// on sending it imalives (and answering its probes). Found by TestCPUHog
// (docs/CLMS.md, "Loaded nodes"): a pre-candidate forgot the master,
// skipped its imalive and its answer to the master's probe, and was
// declared down for silence.
func TestPreCandidateKeepsImAlive(t *testing.T) {
	tm := clms.LANFastTiming()
	s := newSim(t, 3, 3, tm)
	form(t, s)
	victim := other(t, s)
	master := s.Master()
	n, m := s.Node(victim), s.Node(master)
	before, mbefore := n.Core.Stats(), m.Core.Stats()
	s.Drop(master, victim, 1)
	s.Run(350 * time.Millisecond) // beyond 2 election timeouts, within the lease and margin
	s.Drop(master, victim, 0)
	st, mst := n.Core.Stats(), m.Core.Stats()
	if st.LeaderChanges == before.LeaderChanges {
		t.Fatalf("node %d never pre-voted: the test does not test what it says", victim)
	}
	if sent := st.HeartbeatsSent - before.HeartbeatsSent; sent < 3 {
		t.Errorf("node %d sent %d imalives in 350 ms, want one every 100 ms heartbeat", victim, sent)
	}
	if got := mst.Suspicions - mbefore.Suspicions; got != 0 {
		t.Errorf("the master suspected node %d %d times: its imalives stopped", victim, got)
	}
	s.Run(time.Second)
	if !s.Up(victim) {
		t.Fatalf("node %d declared down", victim)
	}
}
