package clms_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// The runner sends a leader's appends before its own write, and holds
// acknowledgements and votes until after it (clms.SendBeforeSave). These
// tests crash nodes in the middle of that write: Options.SaveTime makes it
// last longer than a message's trip, a crash loses it, and the checker
// requires every acknowledgement and vote to be on the sender's disk and
// the newest committed entry on a majority of disks at every step.

const saveTime = 5 * time.Millisecond // longer than Delay+Jitter (2 ms)

// saveSim is 3 voters and node 4, which is not one.
func saveSim(t *testing.T, tb clmstest.TB) *clmstest.Sim {
	return seededSim(t, tb, clmstest.Options{Seed: 1, Nodes: clmstest.Table(4, 3), Timing: clms.LANFastTiming(),
		SaveTime: saveTime})
}

// formedSaveSim forms a saveSim and returns its master and the two other
// voters.
func formedSaveSim(t *testing.T) (s *clmstest.Sim, m, f, g clms.NodeNum) {
	s = saveSim(t, t)
	form(t, s)
	f = other(t, s, 4)
	return s, s.Master(), f, other(t, s, 4, f)
}

var saveInfo = clms.NodeInfo{CPUsTotal: 8, CPUsOnline: 8, MemoryBytes: 1 << 33, Capabilities: []string{"saved"}}

// proposeInfo has node 4 ask for a new info of its own, which the master
// commits through raft, and runs until voter v is writing an entry; it
// returns the last entry of that write.
func proposeInfo(t *testing.T, s *clmstest.Sim, v clms.NodeNum) (index, term uint64) {
	t.Helper()
	if err := s.Node(4).Core.SetNodeInfo(4, saveInfo); err != nil {
		t.Fatal(err)
	}
	s.RunUntil(time.Second, func() bool {
		ents, ok := s.Node(v).Saving()
		if ok && len(ents) > 0 {
			index, term = ents[len(ents)-1].GetIndex(), ents[len(ents)-1].GetTerm()
			return true
		}
		return false
	})
	return index, term
}

// infoEverywhere: every live node applied saveInfo for node 4.
func infoEverywhere(s *clmstest.Sim) bool {
	for _, n := range s.Nodes() {
		if n.Dead {
			continue
		}
		if m, _ := n.Core.State().Member(4); !reflect.DeepEqual(m.Info, saveInfo) {
			return false
		}
	}
	return true
}

// The master dies after its append went out and before its own write of
// it: the followers hold the entry, the dead master's disk never will. It
// had not counted itself, so nothing was committed on one disk; the
// survivors elect a master, agree on one history (the checker) and commit
// the record; the old master comes back as a new incarnation.
func TestLeaderCrashWhileSaving(t *testing.T) {
	s, m, f, g := formedSaveSim(t)
	idx, term := proposeInfo(t, s, m)
	s.Crash(m)
	s.RunUntil(time.Second, func() bool { return s.Node(f).OnDisk(idx, term) && s.Node(g).OnDisk(idx, term) })
	if s.Node(m).OnDisk(idx, term) {
		t.Fatalf("the crashed master's disk has entry %d: its write was not lost", idx)
	}
	s.RunUntil(5*time.Second, func() bool { nm := s.Master(); return nm != 0 && nm != m })
	s.RunUntil(time.Second, func() bool { return infoEverywhere(s) })
	s.Restart(m)
	s.RunUntil(10*time.Second, s.AllUp)
	s.RunUntil(time.Second, func() bool { return infoEverywhere(s) })
}

// A follower dies while writing an append; the third voter is cut off, so
// the master's only quorum is itself and that follower. The follower
// acknowledges only after its write, so the entry is not committed on the
// master's disk alone; it is once the follower is back and the third voter
// heard again.
func TestFollowerCrashWhileSaving(t *testing.T) {
	s, m, f, g := formedSaveSim(t)
	s.Partition([]clms.NodeNum{g})
	idx, term := proposeInfo(t, s, f)
	s.Crash(f)
	s.Run(4 * saveTime) // the master's own write is long done
	if !s.Node(m).OnDisk(idx, term) {
		t.Fatalf("the master's disk lacks entry %d after %v", idx, 4*saveTime)
	}
	if s.Node(f).OnDisk(idx, term) {
		t.Fatalf("the crashed follower's disk has entry %d: its write was not lost", idx)
	}
	if st, _ := s.Node(m).Core.RaftStatus(); st.GetCommit() >= idx {
		t.Fatalf("master committed %d with entry %d on its own disk only", st.GetCommit(), idx)
	}
	s.Heal()
	s.Restart(f)
	s.RunUntil(10*time.Second, func() bool {
		if n := s.Node(g); n.Fenced() {
			s.Restart(g) // declared down while cut off, as a supervisor would
		}
		return s.AllUp()
	})
	s.RunUntil(time.Second, func() bool { return infoEverywhere(s) })
}

// A runner that acknowledged appends before writing them (every message
// sent first) is caught by the checker.
func TestCheckerCatchesAckBeforeSave(t *testing.T) {
	tb := &catchTB{T: t}
	s := saveSim(t, tb)
	func() {
		defer tb.recover()
		form(t, s)
		s.UnsafeSendBeforeSave = true
		proposeInfo(t, s, other(t, s, 4))
		s.Run(4 * saveTime)
	}()
	if !strings.Contains(tb.failure, "acknowledges entries") {
		t.Fatalf("checker reported %q, want an acknowledgement of entries not on disk", tb.failure)
	}
	t.Logf("as expected: %s", strings.SplitN(tb.failure, "\n", 2)[0])
}
