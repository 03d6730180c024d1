package clms_test

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// Runner.Shutdown gives up with ErrNoQuorum when Core.NoQuorum says no
// master can commit its SHUTDOWN. It must not say so while one can: here
// voter 3 is gone for good and voter 2 restarted, its new incarnation a
// raft follower of master 1 but not yet a member (node 1's subsystem
// callbacks hang, so the NODEDOWN of 2's old incarnation, and 2's join
// behind it, wait for the callback timeout). Node 1's view then has one
// member voter of three, yet 1 and 2's new incarnation are a raft majority
// and node 1's SHUTDOWN is committed: counted as hopeless, the planned
// leave would have gone unrecorded (a crash, for the others).
func TestNoQuorumNotWhileVoterRejoins(t *testing.T) {
	s := rejoiningVoter(t, 3, 1)
	if alive, voters := s.Node(1).Core.VotersAlive(); alive < 2 {
		t.Errorf("node 1 counts %d of %d voters alive; node 2's new incarnation spoke to it", alive, voters)
	}
	checkShutdownNotHopeless(t, s, 1)
}

// The same for a node that is not master-eligible: it hears from the
// master only, never from voter 2's new incarnation, so its count stays at
// one voter of three. Its lease, granted by a master with quorum contact,
// is what tells it a majority is there.
func TestNoQuorumNotWhileVoterRejoinsNonVoter(t *testing.T) {
	checkShutdownNotHopeless(t, rejoiningVoter(t, 4, 4), 4)
}

// rejoiningVoter forms a cluster of n nodes (voters 1-3), crashes voter 3
// for good and restarts voter 2 while node 1's callbacks hang, so that in
// viewer's view node 2 is not a member again yet.
func rejoiningVoter(t *testing.T, n int, viewer clms.NodeNum) *clmstest.Sim {
	t.Helper()
	s := newSim(t, n, 3, clms.LANFastTiming())
	form(t, s)
	s.Crash(3)
	s.RunUntil(10*time.Second, func() bool { return s.DownEverywhere(3, s.Node(3).Inc) })
	s.Node(1).HangCallbacks = true
	s.Restart(2)
	s.Run(300 * time.Millisecond)
	if m, _ := s.Node(viewer).Core.State().Member(2); m.State.IsMember() {
		t.Fatalf("node 2 is a member again in node %d's view (%v): the test needs it rejoining", viewer, m)
	}
	return s
}

// checkShutdownNotHopeless starts leaver's planned shutdown and fails if
// Core.NoQuorum says hopeless before its SHUTDOWN is committed.
func checkShutdownNotHopeless(t *testing.T, s *clmstest.Sim, leaver clms.NodeNum) {
	t.Helper()
	s.Node(leaver).Core.Shutdown()
	var hopeless []time.Duration
	s.RunUntil(10*time.Second, func() bool {
		if s.Node(leaver).Has(clms.ActLeft, leaver) {
			return true // Runner.Shutdown returns then, whatever NoQuorum says
		}
		if s.Node(leaver).Core.NoQuorum() {
			hopeless = append(hopeless, s.Now)
		}
		return false
	})
	if len(hopeless) > 0 {
		alive, voters := s.Node(leaver).Core.VotersAlive()
		t.Errorf("node %d said no quorum %d times (first at %v; it counts %d of %d voters) before its SHUTDOWN was committed",
			leaver, len(hopeless), hopeless[0], alive, voters)
	}
}

// The other voters left (SHUTDOWN committed) and stopped: no master can
// commit the last one's, and it says so once its lease runs out.
func TestNoQuorumAfterOthersLeft(t *testing.T) {
	s := newSim(t, 3, 3, clms.LANFastTiming())
	form(t, s)
	last := s.Master()
	for n := clms.NodeNum(1); n <= 3; n++ {
		if n == last {
			continue
		}
		s.Node(n).Core.Shutdown()
		s.RunUntil(10*time.Second, func() bool { return s.Node(n).Has(clms.ActLeft, n) })
		s.Crash(n)
	}
	s.Node(last).Core.Shutdown()
	s.RunUntil(10*time.Second, func() bool { return s.Node(last).Core.NoQuorum() })
	if s.Node(last).Has(clms.ActLeft, last) {
		t.Fatalf("node %d left with no other voter running", last)
	}
}
