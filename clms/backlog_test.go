package clms_test

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// downs counts the GOINGDOWN transitions in the checker's canonical
// history, and those for silence.
func downs(s *clmstest.Sim) (all, silence int) {
	for _, r := range s.Check.Canon() {
		if r.Kind == clms.RecordTransition && r.Transition.To == clms.StateGoingDown {
			all++
			if r.Transition.Cause == clms.CauseSilence {
				silence++
			}
		}
	}
	return all, silence
}

// massJoin forms nodes 1-5 (1-3 eligible) of a 65-node table with synced
// writes of 30 ms (what Store.Save took during the 64-process boot on the
// 2-CPU machine, docs/CLMS.md "Not done yet"), starts the other 60 at once
// and runs 3 s. It returns the master's raft term before and after.
func massJoin(t *testing.T, oneQueue bool) (*clmstest.Sim, uint64, uint64) {
	t.Helper()
	s := seededSim(t, t, clmstest.Options{Seed: 1, Nodes: clmstest.Table(65, 3), Timing: clms.LANFastTiming(),
		SaveTime: 30 * time.Millisecond, OneQueue: oneQueue})
	startSome(t, s, 1, 2, 3, 4, 5)
	term := s.Node(s.Master()).Core.Stats().RaftTerm
	for n := clms.NodeNum(6); n <= 65; n++ {
		s.Start(n)
	}
	s.Run(3 * time.Second)
	var after uint64
	for _, n := range s.Nodes()[:3] {
		after = max(after, n.Core.Stats().RaftTerm)
	}
	return s, term, after
}

// Sixty nodes join a formed cluster at once while synced writes take 30 ms.
// A runner that hands the core its input in arrival order, a Ready (and a
// write) each (Options.OneQueue, the runner before), leaves imalives and
// raft heartbeats queued behind joins and callback reports for longer than
// the election timeout: CheckQuorum deposes master after master, each
// election makes every member resend its callback reports, and the cluster
// has not formed after 3 s. Taking urgent messages first and stepping a
// batch before one write (clms.Runner now) answers every imalive, keeps the
// first master and forms with no GOINGDOWN (docs/CLMS.md, "Loaded nodes").
func TestMassJoinUrgentFirst(t *testing.T) {
	for _, oneQueue := range []bool{true, false} {
		s, before, after := massJoin(t, oneQueue)
		all, _ := downs(s)
		imalives, acks := s.Sent[clms.MsgImAlive], s.Sent[clms.MsgImAliveAck]
		t.Logf("one queue=%v: raft term %d -> %d, all up %v, GOINGDOWNs %d, imalives %d answered %d, callback reports %d",
			oneQueue, before, after, s.AllUp(), all, imalives, acks, s.Sent[clms.MsgCallbacksDone])
		if oneQueue {
			if after == before || s.AllUp() {
				t.Fatalf("one queue: want the master deposed and no formation in 3 s (the failure this test guards), got term %d -> %d, all up %v", before, after, s.AllUp())
			}
			continue
		}
		// At most one imalive per member can be in flight when the run stops.
		if after != before || !s.AllUp() || all != 0 || acks < imalives-65 {
			t.Fatalf("urgent first: term %d -> %d, all up %v, %d GOINGDOWNs, %d of %d imalives answered; want one master, all up, none down, every imalive answered",
				before, after, s.AllUp(), all, acks, imalives)
		}
	}
}
