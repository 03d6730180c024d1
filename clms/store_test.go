package clms_test

import (
	"errors"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/clusterinfra/ci/clms"
)

func entry(term, index uint64, data string) *raftpb.Entry {
	return &raftpb.Entry{Term: new(term), Index: new(index), Type: raftpb.EntryNormal.Enum(), Data: []byte(data)}
}

// The store gives back what was saved: a conflicting suffix replaces the
// old one, the HardState is the last one, and every open is a new, larger
// incarnation.
func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	table := []clms.NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2, MasterEligible: true}, {Num: 3}}
	s, err := clms.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	inc1 := s.Incarnation()
	if _, err := clms.OpenStore(dir); !errors.Is(err, clms.ErrStore) {
		t.Fatalf("second open of a store in use: %v, want ErrStore (the file is locked)", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Save(&raftpb.HardState{Term: new(uint64(2)), Vote: new(uint64(1)), Commit: new(uint64(3))},
		[]*raftpb.Entry{entry(2, 2, "a"), entry(2, 3, "b"), entry(2, 4, "c")}, nil, true))
	// A new leader's entries conflict from index 4 on.
	must(s.Save(&raftpb.HardState{Term: new(uint64(3)), Vote: new(uint64(2)), Commit: new(uint64(4))},
		[]*raftpb.Entry{entry(3, 4, "C")}, nil, false))
	must(s.Close())

	s, err = clms.OpenStore(dir)
	must(err)
	defer s.Close()
	if s.Incarnation() <= inc1 {
		t.Fatalf("incarnation %d after %d: must grow", s.Incarnation(), inc1)
	}
	ms, err := s.Load(table)
	must(err)
	fi, _ := ms.FirstIndex()
	li, _ := ms.LastIndex()
	if fi != 2 || li != 4 {
		t.Fatalf("entries %d..%d, want 2..4", fi, li)
	}
	ents, err := ms.Entries(2, 5, 1<<20)
	must(err)
	var got string
	for _, e := range ents {
		got += string(e.GetData())
	}
	if got != "abC" || ents[2].GetTerm() != 3 {
		t.Fatalf("entries %q (last term %d), want \"abC\" with the conflicting suffix replaced", got, ents[2].GetTerm())
	}
	hs, _, err := ms.InitialState()
	must(err)
	if hs.GetTerm() != 3 || hs.GetVote() != 2 || hs.GetCommit() != 4 {
		t.Fatalf("hardstate %v, want term 3 vote 2 commit 4", hs)
	}
}
