package clms_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// smallCompaction snapshots often and keeps little, so that a test reaches
// every bound in a few hundred transitions.
var smallCompaction = clms.Compaction{SnapshotEvery: 64, LogMargin: 16, HistoryKeep: 48}

func compactSim(t *testing.T, n, eligible int, c clms.Compaction) *clmstest.Sim {
	t.Helper()
	return seededSim(t, t, clmstest.Options{Seed: 1, Nodes: clmstest.Table(n, eligible), Timing: clms.LANFastTiming(), Compaction: c})
}

// churn restarts node victim (not master-eligible) until the master has
// applied at least `transitions` transitions: each restart is a COMINGUP,
// an UP and, for the previous incarnation, GOINGDOWN..DOWN.
func churn(t *testing.T, s *clmstest.Sim, victim clms.NodeNum, transitions clms.TransitionID) {
	t.Helper()
	for {
		m := s.Master()
		if m != 0 && s.Node(m).Core.State().LastTransition() >= transitions {
			return
		}
		s.Node(victim).Dead = true // a crash loop faster than detection: the join takes the old one down
		s.Start(victim)
		s.RunUntil(5*time.Second, func() bool {
			m := s.Master()
			if m == 0 {
				return false
			}
			st, _ := s.Node(m).Core.State().Member(victim)
			return st.State == clms.StateUp && st.Incarnation == s.Node(victim).Inc && s.Node(victim).Core.Acting()
		})
	}
}

// sameState fails unless every live node's State has the same members and
// key services as node ref's.
func sameState(t *testing.T, s *clmstest.Sim, ref clms.NodeNum) {
	t.Helper()
	want := s.Node(ref).Core.State()
	for _, n := range s.Nodes() {
		if n.Dead || !n.Started {
			continue
		}
		st := n.Core.State()
		if st.LastSeq() != want.LastSeq() {
			t.Fatalf("node %d applied %d records, node %d %d", n.Num, st.LastSeq(), ref, want.LastSeq())
		}
		if !reflect.DeepEqual(st.Members(), want.Members()) || !reflect.DeepEqual(st.KeyServices(), want.KeyServices()) {
			t.Fatalf("node %d's state %+v differs from node %d's %+v", n.Num, st.Members(), ref, want.Members())
		}
	}
}

// TestSnapshotAtThreshold: every voter snapshots once it applied
// SnapshotEvery entries past its last snapshot, and its log keeps only
// LogMargin entries before the snapshot.
func TestSnapshotAtThreshold(t *testing.T) {
	c := smallCompaction
	s := compactSim(t, 4, 3, c)
	form(t, s)
	for _, n := range s.Nodes()[:3] {
		if st := n.Core.Stats(); st.Snapshots != 0 || st.SnapshotIndex != 1 {
			t.Fatalf("node %d took %d snapshots (index %d) before the threshold", n.Num, st.Snapshots, st.SnapshotIndex)
		}
	}
	churn(t, s, 4, 3*clms.TransitionID(c.SnapshotEvery))
	s.Run(time.Second) // every voter applies what the master committed
	for _, n := range s.Nodes()[:3] {
		st := n.Core.Stats()
		rs, _ := n.Core.RaftStatus()
		if st.Snapshots == 0 || n.Compactions == 0 {
			t.Fatalf("node %d took %d snapshots (%d stored) at applied index %d", n.Num, st.Snapshots, n.Compactions, rs.Applied)
		}
		if rs.Applied-st.SnapshotIndex >= c.SnapshotEvery {
			t.Fatalf("node %d applied %d, last snapshot at %d: over SnapshotEvery %d", n.Num, rs.Applied, st.SnapshotIndex, c.SnapshotEvery)
		}
		// The log starts LogMargin entries before the snapshot, and the
		// next snapshot comes before SnapshotEvery more.
		if max := c.LogMargin + c.SnapshotEvery; st.RaftLogEntries > max {
			t.Fatalf("node %d keeps %d raft entries, want at most %d", n.Num, st.RaftLogEntries, max)
		}
		snap, _, count := n.DiskBytes()
		if snap == 0 || uint64(count) > c.SnapshotEvery+16 {
			t.Fatalf("node %d stored a %d-byte snapshot and %d entries", n.Num, snap, count)
		}
	}
	sameState(t, s, s.Master())
	st := s.Node(s.Master()).Core.Stats()
	t.Logf("%d transitions; master: %d snapshots, last at %d, %d raft entries, %d records and %d transitions kept",
		s.Node(s.Master()).Core.State().LastTransition(), st.Snapshots, st.SnapshotIndex, st.RaftLogEntries, st.RecordsKept, st.HistoryKept)
}

// TestFollowerCatchesUpBySnapshot: a voter cut off while the log moved on
// past its compacted start receives the leader's snapshot, restores its
// State from it, and ends with the others' State; restarted, it rejoins.
func TestFollowerCatchesUpBySnapshot(t *testing.T) {
	c := smallCompaction
	s := compactSim(t, 5, 3, c)
	form(t, s)
	lagger := other(t, s, 4, 5) // a voter, not the master
	s.Partition([]clms.NodeNum{lagger})
	start := s.Node(s.Master()).Core.State().LastTransition()
	churn(t, s, 5, start+3*clms.TransitionID(c.SnapshotEvery+c.LogMargin))
	if st := s.Node(lagger).Core.State(); st.LastSeq() >= s.Node(s.Master()).Core.State().FirstSeq() {
		t.Fatalf("node %d applied %d records while cut off: the test needs it behind the compacted log", lagger, st.LastSeq())
	}
	s.Heal()
	m := s.Master()
	s.RunUntil(5*time.Second, func() bool {
		return s.Node(lagger).Core.State().LastSeq() == s.Node(m).Core.State().LastSeq()
	})
	if s.Node(lagger).Restores == 0 {
		t.Fatalf("node %d caught up without restoring a snapshot", lagger)
	}
	sameState(t, s, m)
	// It was declared down while cut off: a supervisor restarts it.
	if !s.Node(lagger).Fenced() {
		t.Fatalf("node %d was not fenced while cut off", lagger)
	}
	s.Restart(lagger)
	s.RunUntil(5*time.Second, s.AllUp)
	sameState(t, s, s.Master())
}

// TestRestartFromCompactedStore: a voter restarted after compaction starts
// from its stored snapshot (Ready.Restored) and replays only the entries
// after it, with the same State as the others.
func TestRestartFromCompactedStore(t *testing.T) {
	c := smallCompaction
	s := compactSim(t, 4, 3, c)
	form(t, s)
	churn(t, s, 4, 3*clms.TransitionID(c.SnapshotEvery))
	s.Run(time.Second)
	voter := other(t, s, 4)
	if s.Node(voter).Compactions == 0 {
		t.Fatalf("node %d stored no snapshot", voter)
	}
	_, _, stored := s.Node(voter).DiskBytes()
	restores := s.Node(voter).Restores
	s.Restart(voter)
	if s.Node(voter).Restores != restores+1 {
		t.Fatal("the restarted voter did not start from its stored snapshot")
	}
	st := s.Node(voter).Core.State()
	rs, _ := s.Node(voter).Core.RaftStatus()
	// Its State holds only the records of the replayed tail.
	snapAt := s.Node(voter).Core.Stats().SnapshotIndex
	if uint64(stored) > c.SnapshotEvery || snapAt <= 1 || st.LastSeq()+1-st.FirstSeq() > rs.Applied-snapAt {
		t.Fatalf("restarted with %d stored entries, records %d..%d, applied %d", stored, st.FirstSeq(), st.LastSeq(), rs.Applied)
	}
	s.RunUntil(5*time.Second, s.AllUp)
	sameState(t, s, s.Master())
	// And it goes on: the log grows past another snapshot on every voter.
	churn(t, s, 4, s.Node(s.Master()).Core.State().LastTransition()+clms.TransitionID(c.SnapshotEvery))
	s.Run(time.Second)
	sameState(t, s, s.Master())
}

// TestCompactionBounds: after 5,000 transitions of a crash loop, the raft
// log, the stored entries and the State's records and history stay under
// their bounds on every node, and every node has the same State.
func TestCompactionBounds(t *testing.T) {
	c := clms.Compaction{SnapshotEvery: 256, LogMargin: 64, HistoryKeep: 200}
	s := compactSim(t, 5, 3, c)
	form(t, s)
	churn(t, s, 5, 5000)
	s.Run(time.Second)
	keep := uint64(c.HistoryKeep + c.HistoryKeep/4)
	for _, n := range s.Nodes() {
		st := n.Core.Stats()
		if st.RecordsKept > keep || st.HistoryKept > keep {
			t.Errorf("node %d keeps %d records and %d transitions, bound %d", n.Num, st.RecordsKept, st.HistoryKept, keep)
		}
		if st.RaftLogEntries > c.SnapshotEvery+c.LogMargin {
			t.Errorf("node %d keeps %d raft entries, bound %d", n.Num, st.RaftLogEntries, c.SnapshotEvery+c.LogMargin)
		}
		if _, _, count := n.DiskBytes(); uint64(count) > c.SnapshotEvery {
			t.Errorf("node %d stored %d entries, bound %d", n.Num, count, c.SnapshotEvery)
		}
	}
	sameState(t, s, s.Master())
	if got := s.Node(s.Master()).Core.State().LastTransition(); got < 5000 {
		t.Fatalf("%d transitions, want 5000", got)
	}
}
