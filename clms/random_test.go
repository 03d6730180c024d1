package clms_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// randomSeeds is how many seeds TestRandomized runs: a handful by default,
// CLMS_SEEDS=N for the long mode (make test-long, or by hand), and
// CLMS_SEED=S to replay one seed with a log of every action.
func randomSeeds(t *testing.T) (first, n uint64, verbose bool) {
	if s := os.Getenv("CLMS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CLMS_SEED: %v", err)
		}
		return v, 1, true
	}
	n = 4
	if s := os.Getenv("CLMS_SEEDS"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CLMS_SEEDS: %v", err)
		}
		n = v
	}
	return 1, n, false
}

// TestRandomized injects random crashes, hangs, partitions, message loss,
// clock drift (within the profile's bound), restarts, planned shutdowns and
// node info changes
// into clusters of 5 and 7 nodes whose voters' disk writes take a while, with the invariant checker after every
// simulated millisecond; then heals everything and requires the cluster to
// form again with every node UP.
func TestRandomized(t *testing.T) {
	first, n, verbose := randomSeeds(t)
	for seed := first; seed < first+n; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			size, eligible := 5, 3
			if seed%2 == 0 {
				size, eligible = 7, 5
			}
			keys, capable := randomKeys(size)
			// Voters' writes take 0, 1 or 3 ms (longer than a message's
			// trip), so crashes land in the middle of some: a leader's
			// append is out before its own write (clms.SendBeforeSave).
			save := [...]time.Duration{0, time.Millisecond, 3 * time.Millisecond}[seed%3]
			s := seededSim(t, t, clmstest.Options{Seed: seed, Nodes: clmstest.Table(size, eligible),
				Timing: clms.LANFastTiming(), Verbose: verbose, Keys: keys, KeyCapable: capable, SaveTime: save})
			rng := rand.New(rand.NewPCG(seed, 7))
			s.SetCompaction(randomCompaction(t))
			form(t, s)
			// Some messages arrive twice, the copy up to three heartbeats late
			// (after newer ones, possibly at a restarted process).
			s.Duplicate(0.05, 3*s.Timing().Heartbeat)
			// Clock rates anywhere in [lo, hi], often at the ends: any two
			// nodes' ratio stays within Timing.MinClockRatio (A1), and some
			// pairs sit exactly at that edge.
			lo := math.Sqrt(s.Timing().MinClockRatio())
			hi := 1 / lo
			pick := func() clms.NodeNum { return clms.NodeNum(1 + rng.IntN(size)) }
			for range 60 {
				s.Run(time.Duration(50+rng.IntN(300)) * time.Millisecond)
				n := s.Node(pick())
				switch r := rng.IntN(100); {
				case r < 12:
					s.Crash(n.Num)
				case r < 22:
					if !n.Dead {
						s.Pause(n.Num)
					}
				case r < 35:
					s.Resume(n.Num)
				case r < 45:
					var a []clms.NodeNum
					for _, x := range s.Nodes() {
						if rng.IntN(2) == 0 {
							a = append(a, x.Num)
						}
					}
					s.Partition(a)
				case r < 55:
					s.Heal()
				case r < 62:
					if rng.IntN(2) == 0 {
						s.Drop(n.Num, pick(), 1) // one way only: the other hears it
					} else {
						s.Drop(n.Num, pick(), rng.Float64()*0.5)
					}
				case r < 70:
					// Drift within what the lease margin covers.
					switch rng.IntN(3) {
					case 0:
						n.Rate = lo
					case 1:
						n.Rate = hi
					default:
						n.Rate = lo + rng.Float64()*(hi-lo)
					}
				case r < 75:
					if !n.Dead && !n.Paused {
						n.Core.Shutdown()
					}
				case r < 78:
					if !n.Dead && !n.Paused && n.Core.Acting() {
						_ = n.Core.SetNodeInfo(pick(), clms.NodeInfo{CPUsTotal: uint32(rng.IntN(128)), KeyServices: capable[n.Num]})
					}
				case r < 82:
					if !n.Dead && !n.Paused && n.Core.Acting() {
						_ = n.Core.MoveKeyService(keys.Services[rng.IntN(len(keys.Services))].Name, pick())
					}
				default:
					if n.Dead || n.Fenced() || n.JoinErr != nil || n.Has(clms.ActLeft, 0) {
						s.Restart(n.Num)
					}
				}
			}
			// Heal and bring everything back: the cluster must form again.
			s.Heal()
			for _, n := range s.Nodes() {
				s.Resume(n.Num)
				n.Rate = 1
			}
			// A node may learn only now that it was declared down (it fences
			// when it hears from the master): restart such nodes as they
			// turn up, as a supervisor would.
			s.RunUntil(20*time.Second, func() bool {
				for _, n := range s.Nodes() {
					if n.Dead || n.Fenced() || n.JoinErr != nil || n.Has(clms.ActLeft, 0) {
						s.Restart(n.Num)
					}
				}
				return s.AllUp() && s.Master() != 0 && randomKeysReady(s, keys)
			})
			if s.Check.Checks == 0 {
				t.Fatal("the checker never ran")
			}
			st := s.Node(1).Core.Stats()
			t.Logf("%d records, %d checks, %d key failovers, %d key hand-overs, %d keypulls and %d keydata sent (pushed or asked)",
				len(s.Check.Canon()), s.Check.Checks, st.KeyFailovers, st.KeyHandovers, s.Sent[clms.MsgKeyPull], s.Sent[clms.MsgKeyData])
			restores, compactions := 0, 0
			for _, n := range s.Nodes() {
				restores, compactions = restores+n.Restores, compactions+n.Compactions
			}
			t.Logf("%d snapshots stored, %d states restored", compactions, restores)
		})
	}
}

// TestRandomizedCompaction is TestRandomized with compaction bounds small
// enough that voters snapshot, fall behind the compacted log and restore
// snapshots, and nodes without a log receive state images, all under the
// invariant checker (which checks every restored State against the
// records). CLMS_COMPACTION=every,margin,keep runs TestRandomized so too.
func TestRandomizedCompaction(t *testing.T) {
	t.Setenv("CLMS_COMPACTION", "16,4,16")
	TestRandomized(t)
}

// randomCompaction is CLMS_COMPACTION's bounds (zero: the defaults).
func randomCompaction(t *testing.T) clms.Compaction {
	var c clms.Compaction
	if v := os.Getenv("CLMS_COMPACTION"); v != "" {
		if _, err := fmt.Sscanf(v, "%d,%d,%d", &c.SnapshotEvery, &c.LogMargin, &c.HistoryKeep); err != nil {
			t.Fatalf("CLMS_COMPACTION %q: want every,margin,keep (e.g. 16,4,16): %v", v, err)
		}
	}
	return c
}

// randomKeys: a critical key service with a pull that every node may run
// (degraded on panic, so a run where every node dies goes on), and a
// non-critical one that only nodes 2-4 may run.
func randomKeys(size int) (clms.KeyConfig, map[clms.NodeNum][]string) {
	capable := map[clms.NodeNum][]string{}
	for n := clms.NodeNum(1); n <= clms.NodeNum(size); n++ {
		capable[n] = []string{"crit"}
		if n >= 2 && n <= 4 {
			capable[n] = append(capable[n], "opt")
		}
	}
	return clms.KeyConfig{Panic: clms.PanicDegraded, Services: []clms.KeyServiceSpec{
		{Name: "crit", Critical: true, Pull: true}, {Name: "opt"}}}, capable
}

// randomKeysReady: every key service has a ready owner that acts.
func randomKeysReady(s *clmstest.Sim, keys clms.KeyConfig) bool {
	for _, sp := range keys.Services {
		r, _ := s.Node(1).Core.State().KeyService(sp.Name)
		if r.Phase != clms.KeyReady {
			return false
		}
		if _, ok := s.Node(r.Owner).Core.KeyServiceActing(sp.Name); !ok {
			return false
		}
	}
	return true
}
