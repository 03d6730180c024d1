package clms_test

import (
	"testing"
	"time"

	"go.etcd.io/raft/v3"

	"github.com/clusterinfra/ci/clms"
)

// TestCutMasterForgetsItself: a master cut off from every voter steps down
// (raft's CheckQuorum) and then pre-campaigns in its term, alone. Once it
// is not raft's leader it must not go on naming itself the master: the
// pre-vote rule that keeps a starved follower's master (Core.softState,
// TestPreCandidateKeepsImAlive) kept the ex-master's own number, and the
// cut-off node's /v1/status said "master": itself, "is_master": true for as
// long as the cut lasted (tools/cinode TestNetnsPartitionedMaster, 30 s).
func TestCutMasterForgetsItself(t *testing.T) {
	s := newSim(t, 3, 3, clms.LANFastTiming())
	form(t, s)
	// A master that was a follower before: its memory of the leader it
	// followed makes it campaign the moment it steps down, in the same
	// tick (Core.maybeCampaign), so its next Ready says pre-candidate.
	first := s.Master()
	s.Crash(first)
	s.RunUntil(5*time.Second, func() bool { m := s.Master(); return m != 0 && m != first })
	s.Restart(first)
	s.RunUntil(10*time.Second, s.AllUp)
	m := s.Master()
	var rest []clms.NodeNum
	for _, n := range s.Nodes() {
		if n.Num != m {
			rest = append(rest, n.Num)
		}
	}
	s.Partition([]clms.NodeNum{m}, rest)
	n := s.Node(m)
	steppedDown := false
	for range 2000 { // 2 s of simulated time, one millisecond at a time
		s.Step()
		st, _ := n.Core.RaftStatus()
		if st.RaftState == raft.StateLeader {
			continue
		}
		steppedDown = true
		if got := n.Core.Master(); got == m {
			t.Fatalf("at %v node %d is raft %v in term %d and still names itself the master", time.Duration(s.Now), m, st.RaftState, st.GetTerm())
		}
		if n.Core.IsMaster() {
			t.Fatalf("node %d acts as master while raft %v", m, st.RaftState)
		}
	}
	if !steppedDown {
		t.Fatalf("the cut-off master %d never stepped down: the test does not test what it says", m)
	}
}
