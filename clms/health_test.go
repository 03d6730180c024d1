package clms_test

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// A member stalls for 280 ms of its own, just after an imalive (its lease
// holds: it resumes before LeaseTimeout), and as it resumes the master
// stalls for 90 ms (under the election timeout: it stays master), so its
// imalive waits in the master's socket. The member's silence on the
// master's clock reaches LeaseTimeout+LeaseMargin (360 ms) only by the
// master's own stall. A master that counts that stall declares the member
// down (the runner before local health awareness, Options.Unaware); one
// that the runner tells of its late ticks (Core.Late) does not
// (docs/CLMS.md, "Local health").
func TestMasterStallIsNotMemberSilence(t *testing.T) {
	for _, unaware := range []bool{true, false} {
		s := seededSim(t, t, clmstest.Options{Seed: 1, Nodes: clmstest.Table(5, 3), Timing: clms.LANFastTiming(), Unaware: unaware})
		form(t, s)
		s.Run(time.Second)
		m := s.Master()
		victim := other(t, s, 1, 2, 3)
		// Stop it just after it sent an imalive.
		sent := s.Node(victim).Core.Stats().HeartbeatsSent
		s.RunUntil(time.Second, func() bool { return s.Node(victim).Core.Stats().HeartbeatsSent > sent })
		s.Pause(victim)
		s.Run(280 * time.Millisecond)
		s.Resume(victim)
		s.Pause(m)
		s.Run(90 * time.Millisecond)
		s.Resume(m)
		s.Run(2 * time.Second)
		all, silence := downs(s)
		deferred := s.Node(m).Core.Stats().DownsDeferred
		t.Logf("unaware=%v: GOINGDOWNs %d (silence %d), victim %d fenced %v, master %d -> %d, downs deferred %d",
			unaware, all, silence, victim, s.Node(victim).Fenced(), m, s.Master(), deferred)
		if unaware {
			if silence != 1 || !s.Node(victim).Fenced() {
				t.Fatalf("without awareness: want the false declaration (1 GOINGDOWN for silence, victim fenced), got %d, fenced %v", silence, s.Node(victim).Fenced())
			}
			continue
		}
		if all != 0 || s.Node(victim).Fenced() || !s.Up(victim) || s.Master() != m {
			t.Fatalf("with awareness: %d GOINGDOWNs, victim fenced %v up %v, master %d -> %d; want none, up, same master",
				all, s.Node(victim).Fenced(), s.Up(victim), m, s.Master())
		}
		if deferred == 0 {
			t.Fatalf("the master deferred no declaration: the scenario no longer reaches the threshold")
		}
	}
}

// A hung member is still declared while the master itself stalls half of
// the time (50 ms of every 100 ms, each stall under the election timeout so
// it stays master): the master forgives at most LeaseTimeout of its own
// stalls per silence, so the member is declared within 2 x LeaseTimeout +
// LeaseMargin of silence (660 ms with lan-fast), plus the commit.
func TestHungMemberDeclaredThroughMasterStalls(t *testing.T) {
	tm := clms.LANFastTiming()
	s := newSim(t, 5, 3, tm)
	form(t, s)
	s.Run(time.Second)
	m := s.Master()
	victim := other(t, s, 1, 2, 3)
	s.Pause(victim)
	start := s.Now
	for !s.DownEverywhere(victim, 1) {
		if s.Now-start > 5*time.Second {
			t.Fatalf("hung node %d not declared down within 5 s\n%s", victim, s.Dump())
		}
		s.Pause(m)
		s.Run(50 * time.Millisecond)
		s.Resume(m)
		for k := 0; k < 50 && !s.DownEverywhere(victim, 1); k++ {
			s.Step()
		}
	}
	took := s.Now - start
	bound := 2*tm.LeaseTimeout + tm.LeaseMargin + tm.ElectionTimeout // one stall and the commit
	t.Logf("hung node %d declared down everywhere %v after it stopped (master %d stalled half the time, deferred %d); bound %v",
		victim, took, m, s.Node(m).Core.Stats().DownsDeferred, bound)
	if got := transitionsOf(s, victim, 1); len(got) < 3 || got[2] != "UP->GOINGDOWN(silence)" {
		t.Fatalf("victim went %v, want GOINGDOWN for silence", got)
	}
	if took > bound {
		t.Fatalf("declared after %v, over the bound %v", took, bound)
	}
	if s.Node(m).Core.Stats().DownsDeferred == 0 {
		t.Fatalf("the master deferred nothing: its stalls did not count")
	}
}
