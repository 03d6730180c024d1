package clms_test

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// A new master watches the members from the moment it is ready, so the
// members without raft learn its first records (here the crashed master's
// GOINGDOWN) as it applies them: one push, 2 ms in the simulator. Watched
// only from its first tick, they learned them up to a Tick (50 ms in the
// default profile) later: 18-34 ms over these seeds. 10 seeds
// (CLMS_SEEDS=N for more).
func TestNewMasterPushesAtOnce(t *testing.T) {
	tm := clms.DefaultTiming()
	for seed := uint64(1); seed <= seedCount(t, 10); seed++ {
		s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(5, 3), Timing: tm})
		form(t, s)
		old := s.Master()
		s.Crash(old)
		down := func(n clms.NodeNum) (time.Duration, bool) {
			for _, a := range s.Node(n).Actions {
				if a.Kind == clms.ActPeerDown && a.Node == old {
					return a.At, true
				}
			}
			return 0, false
		}
		s.RunUntil(10*time.Second, func() bool {
			for _, n := range []clms.NodeNum{4, 5} {
				if _, ok := down(n); !ok {
					return false
				}
			}
			m := s.Master()
			_, ok := down(m)
			return m != 0 && m != old && ok
		})
		at, _ := down(s.Master())
		for _, n := range []clms.NodeNum{4, 5} {
			if got, _ := down(n); got-at > tm.Tick/5 {
				t.Errorf("seed %d: node %d (no raft log) applied the old master's GOINGDOWN %v after the new master did", seed, n, got-at)
			}
		}
	}
}

// The members a new master watches from masterReady on (TestNewMasterPushesAtOnce)
// get pushes from what was committed then, a guess of what they applied.
// The three tests below are the members behind that guess, found by
// review: each must catch up within a few ticks of the new master being
// ready, as when the first tick pushed from the start (it still does for a
// member not heard from by then); with only the guess they waited a
// Heartbeat (990 ms against 40 ms).

// masterStopsUntilReplaced pauses the master old until another node leads,
// then lets it run again.
func masterStopsUntilReplaced(s *clmstest.Sim, old clms.NodeNum) {
	s.Pause(old)
	s.RunUntil(10*time.Second, func() bool { m := s.Master(); return m != 0 && m != old })
	s.Resume(old)
}

// comingUpOnVoters runs until incarnation inc of node n is COMINGUP on
// every voter (nodes 1-3).
func comingUpOnVoters(s *clmstest.Sim, n clms.NodeNum, inc uint64) {
	s.RunUntil(10*time.Second, func() bool {
		for _, v := range []clms.NodeNum{1, 2, 3} {
			m, _ := s.Node(v).Core.State().Member(n)
			if m.State != clms.StateComingUp || m.Incarnation != inc {
				return false
			}
		}
		return true
	})
}

// A node without raft joins; its COMINGUP commits but the master's answer
// and push are lost (link master->5 down). The master then loses leadership
// without any new record (it stops for a while: SIGSTOP). The new master's
// guess covers the COMINGUP; node 5, still joining, sends no imalive, and
// its join retries are answered "already in; the records tell it".
func TestNewMasterJoinerBehindGuess(t *testing.T) {
	tm := clms.DefaultTiming()
	for seed := uint64(1); seed <= seedCount(t, 5); seed++ {
		s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(5, 3), Timing: tm})
		for _, n := range []clms.NodeNum{1, 2, 3, 4} {
			s.Start(n)
		}
		s.RunUntil(10*time.Second, func() bool {
			for _, n := range []clms.NodeNum{1, 2, 3, 4} {
				if !s.Up(n) {
					return false
				}
			}
			return true
		})
		old := s.Master()
		s.Drop(old, 5, 1)
		s.Start(5)
		comingUpOnVoters(s, 5, 1)
		masterStopsUntilReplaced(s, old) // the link old->5 stays down: only the new master can tell 5
		elected := s.Now
		took := s.RunUntil(10*time.Second, func() bool { return s.Node(5).Has(clms.ActJoined, 5) })
		if took > 4*tm.Tick {
			t.Errorf("seed %d: node 5 learned its COMINGUP %v after the new master was ready (at %v); want within a few ticks", seed, took, elected)
		}
	}
}

// The records window is cut (node 5 restarts again and again), then node 4
// (no raft) restarts: its new incarnation is empty and needs a state image.
// Its COMINGUP commits, the old master's answers to it are lost, and the
// old master stops.
func TestNewMasterJoinerNeedsImage(t *testing.T) {
	tm := clms.DefaultTiming()
	for seed := uint64(1); seed <= seedCount(t, 5); seed++ {
		s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(5, 3), Timing: tm,
			Compaction: clms.Compaction{SnapshotEvery: 64, LogMargin: 16, HistoryKeep: 48}})
		form(t, s)
		for i := 0; i < 14; i++ {
			s.Restart(5)
			s.RunUntil(10*time.Second, func() bool { return s.Up(5) })
		}
		old := s.Master()
		s.Drop(old, 4, 1)
		s.Restart(4)
		comingUpOnVoters(s, 4, 2)
		masterStopsUntilReplaced(s, old)
		ready := s.Now
		s.RunUntil(10*time.Second, func() bool { return s.Node(4).Has(clms.ActJoined, 4) })
		if took := s.Now - ready; took > 4*tm.Tick || s.Node(4).Restores == 0 {
			t.Errorf("seed %d: node 4 joined %v after the new master was ready, from %d state images; want within a few ticks, from one", seed, took, s.Node(4).Restores)
		}
		s.RunUntil(10*time.Second, func() bool { return s.Up(4) })
	}
}

// Node 4 (a member, no raft) misses one record (node 5's new info: the old
// master's push to it is lost), then the old master stops. With lost, node
// 4's imalives and acks are lost too for 3 s: the new master never hears
// from it, and pushes from the start at its first tick.
func TestNewMasterMemberBehindGuess(t *testing.T) {
	tm := clms.DefaultTiming()
	for _, lost := range []bool{false, true} {
		for seed := uint64(1); seed <= seedCount(t, 3); seed++ {
			s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(5, 3), Timing: tm})
			form(t, s)
			s.Run(500 * time.Millisecond)
			old := s.Master()
			s.Drop(old, 4, 1)
			if err := s.Node(5).Core.SetNodeInfo(5, saveInfo); err != nil {
				t.Fatal(err)
			}
			s.RunUntil(time.Second, func() bool {
				return s.Node(5).Core.State().LastSeq() > s.Node(4).Core.State().LastSeq()
			})
			s.Pause(old)
			if lost {
				for _, v := range []clms.NodeNum{1, 2, 3} {
					s.Drop(4, v, 1)
				}
			}
			s.RunUntil(10*time.Second, func() bool { m := s.Master(); return m != 0 && m != old })
			s.Resume(old)
			ready := s.Now
			s.RunUntil(10*time.Second, func() bool {
				if lost && s.Now-ready >= 3*time.Second {
					for _, v := range []clms.NodeNum{1, 2, 3} {
						s.Drop(4, v, 0)
					}
				}
				return s.Node(4).Core.State().LastSeq() >= s.Node(s.Master()).Core.State().LastSeq()
			})
			if took := s.Now - ready; took > 4*tm.Tick {
				t.Errorf("lost=%v seed %d: node 4 caught up %v after the new master was ready; want within a few ticks", lost, seed, took)
			}
		}
	}
}

// A node without raft leaving on purpose learns its SHUTDOWN from the
// master's push. If that push is lost, the master used to resend it only
// while the node was not yet DOWN (it drops its watch then), and with the
// NODEDOWN's steps committed in pairs DOWN follows within milliseconds:
// the leaver asked again and again and was never told, and the first
// imalive answer saying it was no longer a member fenced it. Its leave
// request now says what it applied, a master whose records already have it
// out pushes the rest, and a leaver told it is no longer a member asks
// again instead of fencing. Perhaps what TestRunnerMasterCloseAndShutdown's
// leaver hit once (a 10 s hang); 10 seeds (CLMS_SEEDS=N).
func TestLeaverMissingItsShutdownPush(t *testing.T) {
	tm := clms.LANFastTiming()
	const leaver = 4
	for seed := uint64(1); seed <= seedCount(t, 10); seed++ {
		s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(5, 3), Timing: tm})
		form(t, s)
		master := s.Master()
		s.Drop(master, leaver, 1) // every push from now on is lost
		s.Node(leaver).Core.Shutdown()
		s.RunUntil(5*time.Second, func() bool {
			st, _ := s.Node(master).Core.State().Member(leaver)
			return st.State == clms.StateDown
		})
		if s.Node(leaver).Has(clms.ActLeft, 0) {
			t.Fatalf("seed %d: the leaver left with every push to it lost", seed)
		}
		s.Drop(master, leaver, 0)
		took := s.RunUntil(5*time.Second, func() bool { return s.Node(leaver).Has(clms.ActLeft, 0) })
		if !s.Node(leaver).Has(clms.ActLeft, 0) || took > 3*tm.Heartbeat {
			t.Errorf("seed %d: the leaver learned it left %v after the pushes got through again (left: %v); want within a few heartbeats", seed, took, s.Node(leaver).Has(clms.ActLeft, 0))
		}
		if s.Node(leaver).Fenced() {
			t.Errorf("seed %d: the leaver fenced instead of leaving", seed)
		}
	}
}

// The adversary's side of masterLeftAlready: a node whose incarnation has
// left, spraying leave requests that each claim it applied nothing, gets at
// most one push (a batch of records) per half heartbeat, not one a request.
func TestLeaveRequestsOfALeftNodeBounded(t *testing.T) {
	tm := clms.LANFastTiming()
	const leaver = 4
	s := seededSim(t, t, clmstest.Options{Seed: 1, Nodes: clmstest.Table(5, 3), Timing: tm})
	form(t, s)
	master := s.Master()
	s.Drop(master, leaver, 1)
	s.Node(leaver).Core.Shutdown()
	s.RunUntil(5*time.Second, func() bool {
		st, _ := s.Node(master).Core.State().Member(leaver)
		return st.State == clms.StateDown
	})
	pushes := func() int { return s.SentOn[clmstest.Link{From: master, To: leaver, Type: clms.MsgRecords}] }
	before := pushes()
	for range 1000 {
		s.Inject(clms.Message{Type: clms.MsgLeave, From: leaver, To: master, Applied: 0})
	}
	if got := pushes() - before; got > 1 {
		t.Fatalf("1000 leave requests at once got %d pushes, want at most 1", got)
	}
	s.Run(tm.Heartbeat) // the node's own requests, every heartbeat
	if got := pushes() - before; got < 1 || got > 3 {
		t.Fatalf("%d pushes within a heartbeat of the spray, want 1 to 3", got)
	}
}
