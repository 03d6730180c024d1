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
			return s.AllUp() && s.DownEverywhere(victim, s.Node(victim).Inc-1)
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
