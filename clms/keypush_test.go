package clms_test

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

// Members push their pull data to a new owner unasked (docs/CLMS.md,
// "Failover", step 3). In these tests the new owner's Failover takes 30 ms
// of simulated time, so every push that is not lost reaches it before its
// pull starts, whatever the jitter: which members it asks is then
// deterministic.

const slowFailover = 30 * time.Millisecond

// pushSim is keySim with the service on the two nodes without raft, 4 and
// 5, formed: the owner crashes, the other one takes over. It returns the
// sim, the old record and the new owner.
func pushSim(t *testing.T) (*clmstest.Sim, clms.KeyRecord, clms.NodeNum) {
	t.Helper()
	s := keySim(t, t, clms.LANFastTiming(), clms.KeyServiceSpec{Name: ks, Pull: true}, "", 4, 5)
	old := formKeys(t, s)
	x := 9 - old.Owner
	s.Node(x).FailoverTime = slowFailover
	return s, old, x
}

// pullsSent is how many keypulls node from sent to each node.
func pullsSent(s *clmstest.Sim, from clms.NodeNum) map[clms.NodeNum]int {
	out := map[clms.NodeNum]int{}
	for _, n := range s.Nodes() {
		out[n.Num] = s.SentOn[clmstest.Link{From: from, To: n.Num, Type: clms.MsgKeyPull}]
	}
	return out
}

// pullRuns counts node n's PullData runs for epoch.
func pullRuns(n *clmstest.Node, epoch uint64) int {
	k := 0
	for _, a := range n.Actions {
		if a.Inc == n.Inc && a.Kind == clms.ActKeyPullData && a.Epoch == epoch {
			k++
		}
	}
	return k
}

func readyAfter(t *testing.T, s *clmstest.Sim, epoch uint64) clms.KeyRecord {
	t.Helper()
	s.RunUntil(2*time.Second, func() bool { _, ok := keyReadyEverywhere(s, ks, epoch); return ok })
	r, _ := keyReadyEverywhere(s, ks, epoch)
	return r
}

// Every member pushes its data when it applies the new owner's record; the
// owner uses it and asks nobody (it pulls only from itself), and each
// member ran PullData once.
func TestKeyPushEarlyDataUsed(t *testing.T) {
	s, old, x := pushSim(t)
	before := pullsSent(s, x)
	s.Crash(old.Owner)
	r := readyAfter(t, s, old.Epoch)
	if r.Owner != x {
		t.Fatalf("new owner %d, want %d", r.Owner, x)
	}
	members := without(five, old.Owner)
	wantPulled(t, s, r, members...)
	if after := pullsSent(s, x); !maps.Equal(after, before) {
		t.Fatalf("owner %d sent keypulls %v (before the failover %v): every member had pushed", x, after, before)
	}
	for _, n := range members {
		if k := pullRuns(s.Node(n), r.Epoch); k != 1 {
			t.Errorf("node %d ran PullData %d times in epoch %d", n, k, r.Epoch)
		}
	}
	st := s.Node(x).Core.Stats()
	if st.KeyPullsPushed != uint64(len(members)-1) || st.KeyPullFailures != 0 || st.KeyPushedHeld != 0 {
		t.Fatalf("owner stats: pushed %d (want %d), failures %d, held %d", st.KeyPullsPushed, len(members)-1, st.KeyPullFailures, st.KeyPushedHeld)
	}
}

// A member's push is lost: the owner asks it with a keypull as before and
// gets the same answer (PullData still ran once). An answer of an older
// epoch that reaches the owner meanwhile is not taken for it, nor is one of
// a far later epoch.
func TestKeyPushLost(t *testing.T) {
	for _, stale := range []bool{false, true} {
		name := "lost"
		if stale {
			name = "lost, stale answers injected"
		}
		t.Run(name, func(t *testing.T) {
			s, old, x := pushSim(t)
			m := other(t, s, 4, 5) // a voter, not the master: only the pull travels m -> x
			before := pullsSent(s, x)
			pushes := s.SentOn[clmstest.Link{From: m, To: x, Type: clms.MsgKeyData}]
			s.Drop(m, x, 1)
			s.Crash(old.Owner)
			s.RunUntil(time.Second, func() bool { return s.SentOn[clmstest.Link{From: m, To: x, Type: clms.MsgKeyData}] > pushes })
			if stale {
				s.Inject(clms.Message{Type: clms.MsgKeyData, From: m, To: x, KeyService: ks, Epoch: old.Epoch, Data: []byte("stale")})
				s.Inject(clms.Message{Type: clms.MsgKeyData, From: m, To: x, KeyService: ks, Epoch: old.Epoch + 7, Data: []byte("future")})
			}
			if run := s.Node(x).Core.Stats(); run.KeyPullsPushed != 0 {
				t.Fatalf("the pull started before the push was lost")
			}
			s.Drop(m, x, 0)
			r := readyAfter(t, s, old.Epoch)
			wantPulled(t, s, r, without(five, old.Owner)...)
			after := pullsSent(s, x)
			for _, n := range s.Nodes() {
				if asked := after[n.Num] - before[n.Num]; (asked > 0) != (n.Num == m) {
					t.Errorf("owner %d sent %d keypulls to node %d; only node %d's push was lost", x, asked, n.Num, m)
				}
			}
			if k := pullRuns(s.Node(m), r.Epoch); k != 1 {
				t.Errorf("node %d ran PullData %d times", m, k)
			}
			if st := s.Node(x).Core.Stats(); st.KeyPullsPushed != 2 || st.KeyPullFailures != 0 {
				t.Fatalf("owner took %d pushed answers (want 2), %d failures", st.KeyPullsPushed, st.KeyPullFailures)
			}
		})
	}
}

// A member whose PullData fails pushes the failure: the owner leaves it
// out as it would after a keypull (a pull failure, logged), without asking.
func TestKeyPushPullDataFails(t *testing.T) {
	s, old, x := pushSim(t)
	m := other(t, s, 4, 5)
	s.Node(m).FailPull = true
	before := pullsSent(s, x)
	s.Crash(old.Owner)
	r := readyAfter(t, s, old.Epoch)
	wantPulled(t, s, r, without(five, old.Owner, m)...)
	if !maps.Equal(pullsSent(s, x), before) {
		t.Fatalf("owner asked again: keypulls %v, before %v", pullsSent(s, x), before)
	}
	st := s.Node(x).Core.Stats()
	if st.KeyPullFailures != 1 || st.KeyPullsPushed != 3 {
		t.Fatalf("pull failures %d (want 1), pushed answers %d (want 3: two data, one failure)", st.KeyPullFailures, st.KeyPullsPushed)
	}
	if !slices.ContainsFunc(s.Node(x).Actions, func(a clmstest.TimedAction) bool {
		return a.Kind == clms.ActLog && a.Node == m && strings.Contains(a.Reason, "PullData failed: "+clmstest.ErrPull.Error())
	}) {
		t.Fatal("the owner did not log the member's PullData failure")
	}
}

// The new owner dies after the members pushed to it: the next owner (e+2)
// gets fresh pushes for its own epoch, and the data is of e+2.
func TestKeyPushNewOwnerDies(t *testing.T) {
	s := keySim(t, t, clms.LANFastTiming(), clms.KeyServiceSpec{Name: ks, Pull: true}, "", 3, 4, 5)
	old := formKeys(t, s)
	for _, n := range []clms.NodeNum{3, 4, 5} {
		s.Node(n).FailoverTime = slowFailover
	}
	s.Crash(old.Owner)
	second := masterKeyEpoch(s, old.Epoch+1)
	survivors := without(five, old.Owner, second.Owner)
	s.RunUntil(time.Second, func() bool {
		for _, n := range survivors {
			if pullRuns(s.Node(n), second.Epoch) == 0 {
				return false
			}
		}
		return true
	})
	s.Crash(second.Owner)
	third := masterKeyEpoch(s, old.Epoch+2).Owner
	before := pullsSent(s, third)
	r := readyAfter(t, s, second.Epoch)
	if r.Epoch != old.Epoch+2 || r.From != second.Owner {
		t.Fatalf("third record %v after %v", r, second)
	}
	wantPulled(t, s, r, survivors...)
	if !maps.Equal(pullsSent(s, third), before) {
		t.Fatalf("third owner %d asked: keypulls %v, before %v", third, pullsSent(s, third), before)
	}
}

// A peer sprays keydata for random epochs and services, as every member,
// at a node before, during and after its failover: what the node holds
// stays within one answer per member and service, nothing sprayed is taken
// for the pull, and the failover completes with the members' real data.
// (Not the epoch of the failover: a member's answer for it is taken on
// trust, pushed or asked for, as it always was.)
func TestKeyPushSprayBounded(t *testing.T) {
	s, old, x := pushSim(t)
	rng := rand.New(rand.NewPCG(7, 7))
	names := []string{ks, "other", ""}
	most := 0
	spray := func(k int) {
		for range k {
			from := clms.NodeNum(1 + rng.IntN(5))
			if from == x || s.Node(from).Dead {
				continue
			}
			ep := rng.Uint64N(old.Epoch + 4)
			if rng.IntN(4) == 0 {
				ep = rng.Uint64()
			}
			if ep == old.Epoch+1 {
				ep++
			}
			s.Inject(clms.Message{Type: clms.MsgKeyData, From: from, To: x, KeyService: names[rng.IntN(len(names))],
				Epoch: ep, Data: []byte("sprayed")})
			held := s.Node(x).Core.Stats().KeyPushedHeld
			if held > 4 {
				t.Fatalf("node %d holds %d pushed answers, more than one per member", x, held)
			}
			most = max(most, held)
		}
	}
	spray(500)
	s.Crash(old.Owner)
	for range 40 {
		spray(20)
		s.Step()
	}
	r := readyAfter(t, s, old.Epoch)
	spray(500)
	got := s.Node(r.Owner).KeyGot[ks]
	for n, d := range got {
		if string(d) != string(clmstest.PullData(n, s.Node(n).Inc, r.Epoch)) {
			t.Errorf("the owner took %q from node %d", d, n)
		}
	}
	s.Run(time.Second)
	if held := s.Node(x).Core.Stats().KeyPushedHeld; held > 4 || most == 0 {
		t.Fatalf("holds %d pushed answers at the end, at most %d: want some held, never more than 4", held, most)
	}
	t.Logf("at most %d sprayed answers held", most)
}
