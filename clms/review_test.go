package clms_test

import (
	"math"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"go.etcd.io/raft/v3/raftpb"
)

// Review findings (clms-review): adversarial scenarios, each a deterministic
// regression test for a hole found in the core or the simulator.

// cut drops every message between a and b, both ways (a non-transitive
// partition: the others still hear both).
func cut(s *clmstest.Sim, a, b clms.NodeNum) {
	s.Drop(a, b, 1)
	s.Drop(b, a, 1)
}

// REVIEW FINDING 1: raft's CheckQuorum lease (A3: a voter ignores vote
// requests for ElectionTimeout after accepting the leader's heartbeat) lives
// in memory only. A voter that restarts right after accepting the master's
// heartbeat starts with no leader and votes at once, so another voter can be
// elected while the old master still counts the restarted voter in its
// quorum contact and grants leases: two nodes grant leases at once.
//
// Voters A (master), B, C. B is cut from A and campaigns in vain (C still
// hears A). Then C is cut from A and restarts: its new incarnation must not
// vote for B before ElectionTimeout has passed on its own clock.
func TestRestartedVoterKeepsLeaderLease(t *testing.T) {
	s := newSim(t, 4, 3, clms.LANFastTiming())
	form(t, s)
	a := s.Master()
	var b, c clms.NodeNum
	for _, n := range []clms.NodeNum{1, 2, 3} {
		if n != a {
			if b == 0 {
				b = n
			} else {
				c = n
			}
		}
	}
	cut(s, a, b)
	cut(s, 4, b)
	// B's turns come every half election timeout: let a few go by in vain.
	s.Run(300 * time.Millisecond)
	if s.Master() != a {
		t.Fatalf("master moved to %d while C still heard A", s.Master())
	}
	for i := 0; i < 60 && s.Master() == a; i++ {
		// Restart C just after it accepted A's heartbeat (A sends one every
		// raft heartbeat); vary the instant against B's campaign turns.
		s.Run(time.Duration(1+i%7) * time.Millisecond)
		cut(s, a, c)
		s.Restart(c)
		// Two leaseholders at once is what the checker reports; run past
		// the old master's grant window and B's next turns.
		s.Run(200 * time.Millisecond)
		if s.Master() != a {
			break
		}
		s.Drop(a, c, 0)
		s.Drop(c, a, 0)
		s.Run(100 * time.Millisecond)
	}
	// Not vacuous: B did win an election (once C's own ElectionTimeout had
	// passed), so the checker watched the handover from A to B.
	if m := s.Master(); m != b {
		t.Fatalf("master is %d, want B (%d) elected by the restarted C", m, b)
	}
	t.Logf("B (node %d) master at %v, %d checks", b, s.Now, s.Check.Checks)
	s.Heal()
	s.RunUntil(10*time.Second, func() bool {
		for _, n := range s.Nodes() {
			if n.Fenced() {
				s.Restart(n.Num)
			}
		}
		return s.AllUp() && s.Master() != 0
	})
}

// REVIEW FINDING 2 (runner requirement, not a core bug): a voter that loses
// its raft storage and starts again empty forgets its vote and the records
// it helped commit. Voters A (master), B, C: B is cut off and declared down
// by A and C; C then loses its disk; A is cut off and B and C elect B, whose
// log lacks what A and C committed, so B commits different records under the
// same numbers. The checker sees it as soon as C's disk is gone (a committed
// entry on one disk of three), else when the histories diverge. The core cannot tell
// an empty disk from a first boot: the runner must refuse to start a node
// that was ever a voter without its raft state (docs/CLMS.md).
func TestCheckerCatchesVoterDiskLoss(t *testing.T) {
	tb := &catchTB{T: t}
	s := seededSim(t, tb, clmstest.Options{Seed: 1, Nodes: clmstest.Table(3, 3), Timing: clms.LANFastTiming()})
	func() {
		defer tb.recover()
		form(t, s)
		a := s.Master()
		b := other(t, s)
		c := other(t, s, b)
		s.Partition([]clms.NodeNum{b})
		s.RunUntil(2*time.Second, func() bool { return s.DownEverywhere(b, 1) })
		s.LoseDisk(c)
		s.Restart(c)
		s.Partition([]clms.NodeNum{a})
		s.Run(3 * time.Second)
	}()
	if !strings.Contains(tb.failure, "invariant violated") {
		t.Fatalf("checker reported %q, want a committed entry off a majority of disks, diverging histories or two leaders in a term", tb.failure)
	}
	t.Logf("as expected: %s", strings.SplitN(tb.failure, "\n", 2)[0])
}

// REVIEW FINDING 3: clusternode_setinfo loses updates to a late request. A
// member sets node 2's info to A, then to B; a copy of the A request that
// arrives late at the master (a retransmission, a resend to a new master
// that crossed the newer request) is committed again after B, and node 2's
// info goes back to A on every node while the asker believes B is in.
func TestSetNodeInfoLateRequestDoesNotUndo(t *testing.T) {
	s := newSim(t, 5, 3, clms.LANFastTiming())
	form(t, s)
	asker := other(t, s, 1, 2, 3)
	infoA := clms.NodeInfo{CPUsTotal: 8, Capabilities: []string{"a"}}
	infoB := clms.NodeInfo{CPUsTotal: 16, Capabilities: []string{"b"}}
	everywhere := func(want clms.NodeInfo) func() bool {
		return func() bool {
			for _, n := range s.Nodes() {
				if m, _ := n.Core.State().Member(2); !reflect.DeepEqual(m.Info, want) {
					return false
				}
			}
			return true
		}
	}
	base := s.Node(asker).Core.State().LastSeq() // what the asker had applied when it asked
	if err := s.Node(asker).Core.SetNodeInfo(2, infoA); err != nil {
		t.Fatal(err)
	}
	s.RunUntil(time.Second, everywhere(infoA))
	if err := s.Node(asker).Core.SetNodeInfo(2, infoB); err != nil {
		t.Fatal(err)
	}
	s.RunUntil(time.Second, everywhere(infoB))
	// The first request again, late, exactly as the asker sent it.
	s.Inject(clms.Message{Type: clms.MsgSetInfo, From: asker, To: s.Master(), Node: 2, Info: infoA, Applied: base})
	s.Run(time.Second)
	for _, n := range s.Nodes() {
		if m, _ := n.Core.State().Member(2); !reflect.DeepEqual(m.Info, infoB) {
			t.Fatalf("node %d has node 2's info %+v after a late copy of an earlier request, want %+v", n.Num, m.Info, infoB)
		}
	}
}

// REVIEW FINDING 4: an imalive answer names only the heartbeat's sequence
// number, which restarts at 1 with every incarnation. A grant the master
// sent to a node's previous incarnation, delivered to the new one (a late
// copy, a transport that replays a queue on reconnection), extends the new
// incarnation's lease from the send time of its own heartbeat with that
// number, which the master never received: after a partition the node acts
// as a member past the point where the master declares it down.
func TestStaleGrantForPreviousIncarnation(t *testing.T) {
	s := newSim(t, 4, 3, clms.LANFastTiming())
	form(t, s)
	s.Run(2 * time.Second)
	n := s.Node(4)
	oldSent := n.Core.Stats().HeartbeatsSent // inc 1 had answers for every one of these
	s.Restart(4)
	s.RunUntil(5*time.Second, func() bool { return s.Up(4) })
	if n.Core.Stats().HeartbeatsSent+5 > oldSent {
		t.Fatalf("inc 2 already sent %d heartbeats, inc 1 only %d", n.Core.Stats().HeartbeatsSent, oldSent)
	}
	master := s.Master()
	s.Partition([]clms.NodeNum{4})
	// Two heartbeats into the partition, a grant the master once sent to
	// inc 1 for the sequence number inc 2 just used reaches inc 2.
	s.Run(2 * s.Timing().Heartbeat)
	s.Inject(clms.Message{Type: clms.MsgImAliveAck, From: master, To: 4, Seq: n.Core.Stats().HeartbeatsSent, Status: clms.StatusOK})
	s.RunUntil(2*time.Second, func() bool { return s.DownEverywhere(4, 2) })
	s.Heal()
	s.RunUntil(time.Second, n.Fenced)
}

// REVIEW FINDING 5 (liveness): a node whose COMINGUP was committed but that
// never heard of it (the master's answers and pushes were lost) is declared
// down for silence; once the links heal, its joins as the same incarnation
// were answered "OK" and proposed as no-ops (an incarnation joins once), so
// it waited out the whole JoinTimeout before its supervisor could restart
// it. Found by TestRandomized (seed 4, with one-way cuts). It must learn at
// once that this incarnation is done, and fence, so that it comes back as a
// new one.
func TestJoinOfIncarnationAlreadyDown(t *testing.T) {
	s := newSim(t, 4, 3, clms.LANFastTiming())
	startSome(t, s, 1, 2, 3)
	master := s.Master()
	s.Drop(master, 4, 1) // node 4 is heard but hears nothing from the master
	s.Start(4)
	s.RunUntil(2*time.Second, func() bool {
		m, _ := s.Node(master).Core.State().Member(4)
		return m.Incarnation == 1 && m.State == clms.StateDown
	})
	s.Heal()
	n := s.Node(4)
	start := s.Now
	s.RunUntil(time.Second, func() bool { return n.Fenced() || n.JoinErr != nil })
	t.Logf("node 4 inc 1 gave up %v after the heal (fenced=%v)", s.Now-start, n.Fenced())
	s.Restart(4)
	s.RunUntil(5*time.Second, func() bool { return s.Up(4) })
}

// REVIEW FINDING 6 (liveness): with the link from the master to a member cut
// one way, the master still hears every imalive, so the member is never
// silent; but no grant reaches it, so its lease lapses and it stays
// suspended: UP in every view and acting nowhere, for as long as the cut
// lasts (a key service it owns would be stuck, never failed over). The
// member says in each imalive that it holds no lease; a master whose grants
// evidently do not arrive stops granting it and declares it down (cause
// fenced) once every lease it granted has run out.
func TestOneWayCutFromMasterDeclaresMemberDown(t *testing.T) {
	s := newSim(t, 5, 3, clms.LANFastTiming())
	form(t, s)
	master := s.Master()
	x := other(t, s, 1, 2, 3)
	s.Drop(master, x, 1)
	took := s.RunUntil(3*time.Second, func() bool { return s.DownEverywhere(x, 1) })
	t.Logf("node %d, deaf to the master, down everywhere after %v", x, took)
	if got := transitionsOf(s, x, 1); len(got) < 3 || got[2] != "UP->GOINGDOWN(fenced)" {
		t.Fatalf("node %d went %v, want GOINGDOWN because it holds no lease", x, got)
	}
	s.Heal()
	s.RunUntil(time.Second, s.Node(x).Fenced)
	s.Restart(x)
	s.RunUntil(5*time.Second, s.AllUp)
}

// The master stops (SIGSTOP) right after it granted a lease, with the
// members' clocks as slow and the voters' as fast as A1 allows: the grant
// it just sent must have run out on the member's clock before the new
// master declares the old one, or a member it cannot reach, down. The
// checker runs at every step; the test also shows the grant was in flight
// when the master stopped.
func TestMasterPausedRightAfterGrant(t *testing.T) {
	tm := clms.LANFastTiming()
	s := newSim(t, 5, 3, tm)
	form(t, s)
	lo := math.Sqrt(tm.MinClockRatio())
	old := s.Master()
	for _, n := range s.Nodes() {
		n.Rate = lo
		if n.Eligible && n.Num != old {
			n.Rate = 1 / lo
		}
	}
	s.Run(time.Second)
	// Stop the master in the step in which it answers x's next imalive.
	x := other(t, s, 1, 2, 3)
	hb := s.Node(x).Core.Stats().HeartbeatsSent
	for s.Node(x).Core.Stats().HeartbeatsSent == hb {
		s.Step()
	}
	acks := s.Sent[clms.MsgImAliveAck]
	for s.Sent[clms.MsgImAliveAck] == acks {
		s.Step()
	}
	s.Pause(old)
	s.Partition([]clms.NodeNum{old, x}) // x hears only the stopped master
	took := s.RunUntil(3*time.Second, func() bool { m := s.Master(); return m != 0 && m != old && s.DownEverywhere(x, 1) })
	t.Logf("new master %d; node %d, cut off with the stopped master, down everywhere after %v", s.Master(), x, took)
	if s.Node(x).Core.Acting() {
		t.Fatalf("node %d acts while down", x)
	}
	s.Heal()
	s.Resume(old)
	s.RunUntil(5*time.Second, func() bool {
		for _, n := range s.Nodes() {
			if n.Fenced() {
				s.Restart(n.Num)
			}
		}
		return s.AllUp() && s.Master() != 0
	})
}

// Late messages from a deposed master change nothing: a push of records the
// member has (the new master committed more since), and a grant answering
// a heartbeat the member sent before the change.
func TestLateMessagesFromDeposedMaster(t *testing.T) {
	s := newSim(t, 5, 3, clms.LANFastTiming())
	form(t, s)
	old := s.Master()
	x := other(t, s, 1, 2, 3)
	n := s.Node(x)
	early := slices.Clone(n.Core.State().Records(0))
	seq := n.Core.Stats().HeartbeatsSent
	s.Crash(old)
	s.RunUntil(2*time.Second, func() bool { return s.DownEverywhere(old, 1) && s.Master() != 0 })
	s.Run(time.Second)
	have, lease := n.Core.State().LastSeq(), n.Core.Acting()
	s.Node(old).Dead = false // the old process's last words, still in the network
	s.Inject(clms.Message{Type: clms.MsgRecords, From: old, To: x, Records: early})
	s.Inject(clms.Message{Type: clms.MsgImAliveAck, From: old, To: x, Seq: seq, Status: clms.StatusOK, Node: x, Inc: n.Inc})
	s.Node(old).Dead = true
	if got := n.Core.State().LastSeq(); got != have || n.Core.Acting() != lease {
		t.Fatalf("node %d: %d records (had %d), acting %v (was %v)", x, got, have, n.Core.Acting(), lease)
	}
	if n.Core.Master() == old {
		t.Fatalf("node %d follows the deposed master again", x)
	}
	s.Run(time.Second)
	if !s.AllUp() {
		t.Fatal("not every live node is UP")
	}
}

// A2 is load-bearing, by design: crash proof of an incarnation that is in
// fact alive (a runner that reports a timeout or a reset as a refusal)
// makes the master declare it down at once, while it still holds its lease
// and acts. The checker reports it within a commit. Nothing in the core can
// tell such a proof from a real one; the runner must keep to A2.
func TestCheckerCatchesBogusCrashProof(t *testing.T) {
	tb := &catchTB{T: t}
	s := seededSim(t, tb, clmstest.Options{Seed: 1, Nodes: clmstest.Table(5, 3), Timing: clms.LANFastTiming()})
	var at time.Duration
	func() {
		defer tb.recover()
		form(t, s)
		x := other(t, s, 1, 2, 3)
		at = s.Now
		s.Node(s.Master()).Core.PeerCrashProof(x, s.Node(x).Inc)
		s.Run(time.Second)
	}()
	if !actsWhileDown(tb.failure) {
		t.Fatalf("checker reported %q, want the live node acting while down", tb.failure)
	}
	t.Logf("proof given at %v; %s", at, strings.SplitN(tb.failure, "\n", 2)[0])
}

// REVIEW FINDING 7: A3 as raft implements it has a hole. Raft checks its
// CheckQuorum lease only on a vote request of a higher term; any other
// message of a higher term (an answer to a heartbeat this voter sent when
// it led, arriving late from a voter that has since become a candidate)
// moves the voter to that term with no leader, and a vote request of that
// same term is then granted at once, while the master still counts this
// voter's echo in its quorum contact and grants leases. Here the late answer
// and the vote request are injected into voter v right after it accepted
// the master's heartbeat: v must not vote.
func TestVoterKeepsLeaseAfterHigherTermAnswer(t *testing.T) {
	s := newSim(t, 3, 3, clms.LANFastTiming())
	form(t, s)
	a := s.Master()
	v := other(t, s)
	u := other(t, s, v)
	st, _ := s.Node(v).Core.RaftStatus()
	term, last := st.GetTerm(), st.GetCommit()
	logTerm := term
	s.Inject(clms.Message{Type: clms.MsgRaft, From: u, To: v, Raft: &raftpb.Message{
		Type: raftpb.MsgHeartbeatResp.Enum(), From: new(uint64(u)), To: new(uint64(v)), Term: new(term + 1)}})
	s.Inject(clms.Message{Type: clms.MsgRaft, From: u, To: v, Raft: &raftpb.Message{
		Type: raftpb.MsgVote.Enum(), From: new(uint64(u)), To: new(uint64(v)), Term: new(term + 1),
		LogTerm: new(logTerm), Index: new(last + 100)}})
	st, _ = s.Node(v).Core.RaftStatus()
	if st.GetVote() == uint64(u) {
		t.Fatalf("voter %d voted for %d in term %d within its lease of master %d", v, u, st.GetTerm(), a)
	}
	s.RunUntil(5*time.Second, func() bool { return s.AllUp() && s.Master() != 0 })
}

// The voters are cut off from every other node: the master keeps its
// quorum, the members can renew nothing. Each member suspends itself before
// any node applies its GOINGDOWN (the ActLease and ActPeerDown instants,
// besides the checker at every step), and not before its lease ran out.
func TestMembersCutFromVotersSuspendBeforeDown(t *testing.T) {
	tm := clms.LANFastTiming()
	s := newSim(t, 7, 3, tm)
	form(t, s)
	members := []clms.NodeNum{4, 5, 6, 7}
	cutAt := s.Now
	s.Partition([]clms.NodeNum{1, 2, 3}, members)
	s.RunUntil(2*time.Second, func() bool {
		for _, m := range members {
			if !s.DownEverywhere(m, 1) {
				return false
			}
		}
		return true
	})
	for _, m := range members {
		var suspended, down time.Duration
		for _, a := range s.Node(m).Actions {
			if a.Kind == clms.ActLease && !a.Valid && a.At > cutAt && suspended == 0 {
				suspended = a.At
			}
		}
		for _, n := range s.Nodes() {
			for _, a := range n.Actions {
				if a.Kind == clms.ActPeerDown && a.Node == m && (down == 0 || a.At < down) {
					down = a.At
				}
			}
		}
		t.Logf("node %d: suspended %v after the cut, down %v after", m, suspended-cutAt, down-cutAt)
		if suspended == 0 || down == 0 || suspended >= down {
			t.Fatalf("node %d: suspended at %v, first applied down at %v", m, suspended, down)
		}
		if suspended-cutAt < tm.LeaseTimeout-tm.Heartbeat {
			t.Fatalf("node %d suspended %v after the cut, before its lease could run out", m, suspended-cutAt)
		}
	}
	s.Heal()
	s.RunUntil(5*time.Second, func() bool {
		for _, n := range s.Nodes() {
			if n.Fenced() {
				s.Restart(n.Num)
			}
		}
		return s.AllUp() && s.Master() != 0
	})
}

// Formation with one of three voters not started: the other two elect a
// master and every started node comes up; the third joins later.
func TestFormationWithAVoterMissing(t *testing.T) {
	s := newSim(t, 5, 3, clms.LANFastTiming())
	startSome(t, s, 1, 2, 4, 5)
	if m := s.Master(); m != 1 && m != 2 {
		t.Fatalf("master %d, want 1 or 2", m)
	}
	startSome(t, s, 3)
	if !s.AllUp() {
		t.Fatal("not every node is UP")
	}
}

// actsWhileDown: the checker's report is of a node acting as a member
// after its GOINGDOWN was applied: in GOINGDOWN itself, or in KCLEANUP, which
// the master commits together with it.
func actsWhileDown(failure string) bool {
	return regexp.MustCompile(`acts as a member while it is (GOINGDOWN|KCLEANUP) `).MatchString(failure)
}
