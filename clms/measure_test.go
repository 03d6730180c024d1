package clms_test

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// TestMeasureDetection prints detection and failover times in simulated time
// (1 ms network delay + up to 1 ms jitter), over 20 seeds per figure, for
// both timing profiles. CLMS_MEASURE=1 runs it; docs/CLMS.md has the
// results. These are sanity figures for the protocol; the real numbers come
// from processes (BENCHMARKS.md).
func TestMeasureDetection(t *testing.T) {
	if os.Getenv("CLMS_MEASURE") == "" {
		t.Skip("CLMS_MEASURE=1 to measure")
	}
	const trials = 20
	for _, p := range []struct {
		name string
		tm   clms.Timing
	}{{"lan-fast", clms.LANFastTiming()}, {"default", clms.DefaultTiming()}} {
		for _, sc := range []struct {
			name  string
			fault func(s *clmstest.Sim, n clms.NodeNum)
			who   func(t *testing.T, s *clmstest.Sim) clms.NodeNum
			done  func(s *clmstest.Sim, victim clms.NodeNum) bool
		}{
			{"member crash -> down everywhere", (*clmstest.Sim).Crash, member, downAll},
			{"member hang -> down everywhere", (*clmstest.Sim).Pause, member, downAll},
			{"master crash -> new master", (*clmstest.Sim).Crash, master, newMaster},
			{"master hang -> new master", (*clmstest.Sim).Pause, master, newMaster},
		} {
			var d []time.Duration
			suspended := 0
			for seed := uint64(1); seed <= trials; seed++ {
				s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(5, 3), Timing: p.tm})
				form(t, s)
				s.Run(time.Duration(seed) * p.tm.Heartbeat / trials) // vary the phase against the heartbeats
				victim := sc.who(t, s)
				sc.fault(s, victim)
				at := s.Now
				d = append(d, s.RunUntil(30*time.Second, func() bool { return sc.done(s, victim) }))
				s.Run(p.tm.LeaseTimeout + p.tm.LeaseMargin)
				for _, n := range s.Nodes() {
					if n.Num != victim && slices.ContainsFunc(n.Actions, func(a clmstest.TimedAction) bool {
						return a.At > at && a.Kind == clms.ActLease && !a.Valid
					}) {
						suspended++ // a survivor lost its lease in the failover
						break
					}
				}
			}
			slices.Sort(d)
			t.Logf("%-8s %-32s min %6v  p50 %6v  max %6v  trials with a survivor suspended: %d/%d",
				p.name, sc.name, d[0], d[len(d)/2], d[len(d)-1], suspended, trials)
		}
	}
}

func member(t *testing.T, s *clmstest.Sim) clms.NodeNum { return other(t, s) }

func master(_ *testing.T, s *clmstest.Sim) clms.NodeNum { return s.Master() }

func downAll(s *clmstest.Sim, v clms.NodeNum) bool { return s.DownEverywhere(v, 1) }

func newMaster(s *clmstest.Sim, old clms.NodeNum) bool { m := s.Master(); return m != 0 && m != old }

// TestMeasureScale prints formation time and the master's steady traffic
// for 3, 16 and 64 nodes (5 eligible, 3 for the smallest) with the fast
// profile, in simulated time. CLMS_MEASURE=1 runs it.
func TestMeasureScale(t *testing.T) {
	if os.Getenv("CLMS_MEASURE") == "" {
		t.Skip("CLMS_MEASURE=1 to measure")
	}
	for _, n := range []int{3, 16, 64} {
		eligible := min(n, 5)
		if n == 3 {
			eligible = 3
		}
		s := seededSim(t, t, clmstest.Options{Seed: 1, Nodes: clmstest.Table(n, eligible), Timing: clms.LANFastTiming()})
		took := form(t, s)
		s.Run(time.Second)
		m := s.Node(s.Master())
		msgs, bytes := m.SentMsgs, m.SentBytes
		const window = 10 * time.Second
		s.Run(window)
		if !s.AllUp() {
			t.Fatalf("%d nodes: not all up", n)
		}
		sec := window.Seconds()
		t.Logf("%2d nodes: formed in %v; master sends %.0f msg/s, %.1f KiB/s in steady state",
			n, took, float64(m.SentMsgs-msgs)/sec, float64(m.SentBytes-bytes)/sec/1024)
	}
}

// TestMeasureCompaction prints what a voter keeps after a crash loop of
// 5,000 transitions (a non-voter restarting over and over, 5 nodes of
// which 3 voters), with compaction at its defaults and with bounds too
// large to reach (the log and history kept whole, as before compaction).
// CLMS_MEASURE=1 runs it; docs/CLMS.md ("Log compaction") has the results.
func TestMeasureCompaction(t *testing.T) {
	if os.Getenv("CLMS_MEASURE") == "" {
		t.Skip("CLMS_MEASURE=1 to measure")
	}
	for _, tc := range []struct {
		name string
		c    clms.Compaction
	}{
		{"whole", clms.Compaction{SnapshotEvery: 1 << 40, HistoryKeep: 1 << 15}},
		{"defaults", clms.Compaction{}},
	} {
		s := compactSim(t, 5, 3, tc.c)
		form(t, s)
		churn(t, s, 5, 20000)
		s.Run(time.Second)
		v := s.Node(other(t, s, 4, 5))
		st := v.Core.Stats()
		snap, ents, count := v.DiskBytes()
		recs := v.Core.State().Records(v.Core.State().FirstSeq() - 1)
		t.Logf("%-8s %d transitions, %d records: stored snapshot %d B + %d entries %d B; in memory %d raft entries, %d records, %d transitions",
			tc.name, v.Core.State().LastTransition(), v.Core.State().LastSeq(), snap, count, ents, st.RaftLogEntries, len(recs), st.HistoryKept)
	}
}

// TestMeasureMassJoin prints how long 60 nodes starting at once take to be
// UP everywhere in a formed 5-node cluster (3 voters), with voters' synced
// writes of 2, 10 and 30 ms, in simulated time over 30 seeds, and the raft
// messages the cluster sent meanwhile, and the master's proposals and the
// raft appends that carried them (medians). CLMS_MEASURE=1 runs it;
// docs/CLMS.md has the results ("The runner").
func TestMeasureMassJoin(t *testing.T) {
	if os.Getenv("CLMS_MEASURE") == "" {
		t.Skip("CLMS_MEASURE=1 to measure")
	}
	const trials = 30
	for _, save := range []time.Duration{2 * time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond} {
		var took []time.Duration
		var msgs, props, appends []int
		for seed := uint64(1); seed <= trials; seed++ {
			s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(65, 3), Timing: clms.LANFastTiming(), SaveTime: save})
			startSome(t, s, 1, 2, 3, 4, 5)
			raftBefore := s.Sent[clms.MsgRaft]
			before := s.Node(s.Master()).Core.Stats()
			for n := clms.NodeNum(6); n <= 65; n++ {
				s.Start(n)
			}
			took = append(took, s.RunUntil(10*time.Second, s.AllUp))
			if !s.AllUp() {
				t.Fatalf("save %v seed %d: not all up", save, seed)
			}
			m := s.Node(s.Master()).Core.Stats()
			msgs = append(msgs, s.Sent[clms.MsgRaft]-raftBefore)
			props, appends = append(props, int(m.Proposals-before.Proposals)), append(appends, int(m.ProposalBatches-before.ProposalBatches))
		}
		slices.Sort(took)
		for _, v := range [][]int{msgs, props, appends} {
			slices.Sort(v)
		}
		var sum time.Duration
		for _, d := range took {
			sum += d
		}
		t.Logf("save %-4v: 60 joins all up in %v/%v/%v (min/p50/max), mean %v; %d raft messages; the master proposed %d commands in %d raft appends",
			save, took[0], took[trials/2], took[trials-1], (sum / trials).Round(time.Millisecond), msgs[trials/2], props[trials/2], appends[trials/2])
	}
}
