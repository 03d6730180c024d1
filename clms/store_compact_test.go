package clms

import (
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// copyStore copies the store's files of dir into a new directory, as a
// crash right now would leave them (every committed bbolt transaction and
// every WAL write is in the files).
func copyStore(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	for _, name := range []string{StoreFile, WALFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// TestStoreCompactCrash: a crash after any step of saving entries and
// compacting them into a snapshot leaves a store that loads, whose log
// continues its snapshot without a gap, and from which a core restores
// the State of the snapshot.
func TestStoreCompactCrash(t *testing.T) {
	table := []NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2, MasterEligible: true}, {Num: 3, MasterEligible: true}}
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st := sampleState(t, 0)
	st.nodes = []NodeNum{1, 2, 3}
	st.members = map[NodeNum]*Member{1: st.members[1], 2: st.members[2], 3: {Node: 3}}
	image := st.encodeImage()
	voters := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	var crashes []string
	var last, snapAt uint64
	for round := range 4 {
		var ents []*raftpb.Entry
		for range 40 {
			last++
			ents = append(ents, &raftpb.Entry{Term: new(uint64(2)), Index: new(last), Type: raftpb.EntryNormal.Enum(), Data: []byte("cmd")})
		}
		if err := s.Save(&raftpb.HardState{Term: new(uint64(2)), Vote: new(uint64(1)), Commit: new(last)}, ents, nil, round%2 == 0); err != nil {
			t.Fatal(err)
		}
		crashes = append(crashes, copyStore(t, dir))
		snapAt = last - 10
		snap := &raftpb.Snapshot{Data: image, Metadata: &raftpb.SnapshotMetadata{Index: new(snapAt), Term: new(uint64(2)), ConfState: voters}}
		if err := s.Compact(snap); err != nil {
			t.Fatal(err)
		}
		crashes = append(crashes, copyStore(t, dir))
	}
	if _, entries, count, err := s.Size(); err != nil || count != 10 || entries == 0 {
		t.Fatalf("after compaction at %d of %d: %d entries (%d bytes), %v", snapAt, last, count, entries, err)
	}
	// An older snapshot does not replace a newer one.
	if err := s.Compact(&raftpb.Snapshot{Data: image, Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(5)), Term: new(uint64(2)), ConfState: voters}}); err != nil {
		t.Fatal(err)
	}
	crashes = append(crashes, copyStore(t, dir))
	for i, d := range crashes {
		cs, err := OpenStore(d)
		if err != nil {
			t.Fatalf("crash %d: %v", i, err)
		}
		ms, err := cs.Load(table)
		if err != nil {
			t.Fatalf("crash %d: %v", i, err)
		}
		snap, _ := ms.Snapshot()
		fi, _ := ms.FirstIndex()
		li, _ := ms.LastIndex()
		hs, _, _ := ms.InitialState()
		if fi != snap.GetMetadata().GetIndex()+1 || hs.GetCommit() < snap.GetMetadata().GetIndex() || hs.GetCommit() > li {
			t.Fatalf("crash %d: snapshot at %d, entries %d..%d, commit %d", i, snap.GetMetadata().GetIndex(), fi, li, hs.GetCommit())
		}
		if _, err := ms.Entries(fi, li+1, 1<<30); err != nil {
			t.Fatalf("crash %d: entries %d..%d: %v", i, fi, li, err)
		}
		c, err := NewCore(Config{Self: 1, Nodes: table, Timing: LANFastTiming(), Incarnation: cs.Incarnation(), Storage: ms})
		if err != nil {
			t.Fatalf("crash %d: %v", i, err)
		}
		if i%2 == 1 && (c.State().LastSeq() != st.LastSeq() || c.restored == nil) {
			t.Fatalf("crash %d: core restored %d records, want the snapshot's %d", i, c.State().LastSeq(), st.LastSeq())
		}
		if err := cs.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
