package clms_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

func digestBase() clms.Config {
	return clms.Config{
		Self:   1,
		Nodes:  clmstest.Table(4, 3),
		Timing: clms.LANFastTiming(),
		Info:   clms.NodeInfo{CPUsTotal: 2, KeyServices: []string{"ks"}},
		Keys: clms.KeyConfig{Services: []clms.KeyServiceSpec{{Name: "ks", Critical: true, Pull: true}, {Name: "other"}},
			PullTimeout: time.Second},
	}
}

// What every node must share changes the digest; what is a node's own
// does not, nor does the order the lists come in.
func TestConfigDigest(t *testing.T) {
	base := clms.ConfigDigest(digestBase())
	if base == 0 {
		t.Fatal("digest 0 (reserved for not sent)")
	}
	same := map[string]func(*clms.Config){
		"self":             func(c *clms.Config) { c.Self = 3 },
		"incarnation":      func(c *clms.Config) { c.Incarnation = 99 },
		"info":             func(c *clms.Config) { c.Info = clms.NodeInfo{CPUsTotal: 64} },
		"join timeout":     func(c *clms.Config) { c.Timing.JoinTimeout = time.Hour },
		"pull timeout":     func(c *clms.Config) { c.Keys.PullTimeout = time.Minute },
		"node order":       func(c *clms.Config) { slices.Reverse(c.Nodes) },
		"key order":        func(c *clms.Config) { slices.Reverse(c.Keys.Services) },
		"panic zero value": func(c *clms.Config) { c.Keys.Panic = clms.PanicHalt },
	}
	differ := map[string]func(*clms.Config){
		"one node more":    func(c *clms.Config) { c.Nodes = clmstest.Table(5, 3) },
		"eligibility":      func(c *clms.Config) { c.Nodes = clmstest.Table(4, 2) },
		"lease":            func(c *clms.Config) { c.Timing.LeaseTimeout += c.Timing.Tick },
		"margin":           func(c *clms.Config) { c.Timing.LeaseMargin *= 2 },
		"tick":             func(c *clms.Config) { c.Timing.Tick *= 2 },
		"election":         func(c *clms.Config) { c.Timing.ElectionTimeout *= 2 },
		"callback timeout": func(c *clms.Config) { c.Timing.CallbackTimeout *= 2 },
		"key service":      func(c *clms.Config) { c.Keys.Services = c.Keys.Services[:1] },
		"critical":         func(c *clms.Config) { c.Keys.Services[0].Critical = false },
		"pull":             func(c *clms.Config) { c.Keys.Services[0].Pull = false },
		"panic policy":     func(c *clms.Config) { c.Keys.Panic = clms.PanicDegraded },
	}
	for name, change := range same {
		c := digestBase()
		change(&c)
		if got := clms.ConfigDigest(c); got != base {
			t.Errorf("%s changed the digest (%016x, was %016x): it is the node's own", name, got, base)
		}
	}
	seen := map[uint64]string{}
	for name, change := range differ {
		c := digestBase()
		change(&c)
		got := clms.ConfigDigest(c)
		if got == base {
			t.Errorf("%s did not change the digest", name)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("%s and %s give the same digest", name, other)
		}
		seen[got] = name
	}
}

// A node started with another lease than the cluster's is refused at its
// join with ErrConfigMismatch, never becomes a member anywhere, and the
// others form without it.
func TestJoinRefusedOnConfigMismatch(t *testing.T) {
	s := newSim(t, 4, 3, clms.LANFastTiming())
	odd := clms.LANFastTiming()
	odd.LeaseTimeout *= 2
	s.Node(4).Timing = &odd
	s.StartAll()
	s.RunUntil(10*time.Second, func() bool { return s.Node(4).JoinErr != nil && s.Up(1) && s.Up(2) && s.Up(3) })
	err := s.Node(4).JoinErr
	if !errors.Is(err, clms.ErrConfigMismatch) {
		t.Fatalf("node 4's join ended with %v, want ErrConfigMismatch", err)
	}
	if !strings.Contains(err.Error(), "same cluster.toml") || !strings.Contains(err.Error(), ", node 4 ") {
		t.Fatalf("error %q does not tell the operator what to do and whose file differs", err)
	}
	for _, n := range []clms.NodeNum{1, 2, 3} {
		if !s.Up(n) {
			t.Errorf("node %d not UP", n)
		}
		for _, r := range s.Node(n).Records {
			if r.Kind == clms.RecordTransition && r.Transition.Node == 4 {
				t.Errorf("node %d applied a transition of the refused node: %v", n, r.Transition)
			}
		}
	}
}

// A master-eligible node with another cluster.toml must not become master:
// a master refuses every join whose digest is not its own, so one odd voter
// elected first (node 1 wins the first election of this seed) would lock
// the whole cluster out, each legitimate node giving up with
// ErrConfigMismatch. The voters refuse it their vote instead; the majority
// that shares a configuration forms, and the odd node is the one refused.
func TestOddVoterNeverMaster(t *testing.T) {
	for odd := clms.NodeNum(1); odd <= 3; odd++ {
		s := newSim(t, 4, 3, clms.LANFastTiming())
		tm := clms.LANFastTiming()
		tm.CallbackTimeout *= 2
		s.Node(odd).Timing = &tm
		s.StartAll()
		s.RunUntil(10*time.Second, func() bool {
			return s.Node(odd).JoinErr != nil
		})
		if err := s.Node(odd).JoinErr; !errors.Is(err, clms.ErrConfigMismatch) {
			t.Errorf("odd voter %d: join ended with %v, want ErrConfigMismatch", odd, err)
		}
		s.RunUntil(10*time.Second, func() bool {
			for n := clms.NodeNum(1); n <= 4; n++ {
				if n != odd && !s.Up(n) {
					return false
				}
			}
			return true
		})
		for n := clms.NodeNum(1); n <= 4; n++ {
			if n == odd {
				continue
			}
			if err := s.Node(n).JoinErr; err != nil {
				t.Errorf("odd voter %d: node %d (the cluster's configuration) refused: %v", odd, n, err)
			} else if !s.Up(n) {
				t.Errorf("odd voter %d: node %d not UP", odd, n)
			}
		}
	}
}
