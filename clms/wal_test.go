package clms

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

var walNodes = []NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2, MasterEligible: true}, {Num: 3, MasterEligible: true}}

func walEntry(term, index uint64, data string) *raftpb.Entry {
	return &raftpb.Entry{Term: new(term), Index: new(index), Type: raftpb.EntryNormal.Enum(), Data: []byte(data)}
}

func walSnap(index, term uint64, data string) *raftpb.Snapshot {
	return &raftpb.Snapshot{Data: []byte(data), Metadata: &raftpb.SnapshotMetadata{
		Index: new(index), Term: new(term), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}
}

// dumpStorage is what a raft node starts from, as text to compare: the
// snapshot, every entry after it and the HardState.
func dumpStorage(t *testing.T, ms *raft.MemoryStorage) string {
	t.Helper()
	var b strings.Builder
	snap, err := ms.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "snapshot %d/%d %q\n", snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm(), snap.GetData())
	fi, _ := ms.FirstIndex()
	li, _ := ms.LastIndex()
	ents, err := ms.Entries(fi, li+1, 1<<40)
	if err != nil && fi <= li {
		t.Fatal(err)
	}
	for _, e := range ents {
		fmt.Fprintf(&b, "entry %d/%d %q\n", e.GetIndex(), e.GetTerm(), e.GetData())
	}
	hs, _, err := ms.InitialState()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "hardstate term %d vote %d commit %d\n", hs.GetTerm(), hs.GetVote(), hs.GetCommit())
	return b.String()
}

func loadDump(t *testing.T, dir string) string {
	t.Helper()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ms, err := s.Load(walNodes)
	if err != nil {
		t.Fatal(err)
	}
	return dumpStorage(t, ms)
}

// walTwin is a store and a raft.MemoryStorage fed the same Saves and
// Compacts, which Load must reproduce.
type walTwin struct {
	t      *testing.T
	dir    string
	s      *Store
	ref    *raft.MemoryStorage
	rng    *rand.Rand
	term   uint64
	commit uint64
	seq    int
}

func newWALTwin(t *testing.T, seed uint64) *walTwin {
	w := &walTwin{t: t, dir: t.TempDir(), ref: BootstrapStorage(walNodes), rng: rand.New(rand.NewPCG(seed, 1)), term: 2, commit: 1}
	w.reopen()
	t.Cleanup(func() { _ = w.s.Close() })
	return w
}

func (w *walTwin) reopen() {
	w.t.Helper()
	if w.s != nil {
		if err := w.s.Close(); err != nil {
			w.t.Fatal(err)
		}
	}
	s, err := OpenStore(w.dir)
	if err != nil {
		w.t.Fatal(err)
	}
	w.s = s
}

func (w *walTwin) last() uint64 { li, _ := w.ref.LastIndex(); return li }

func (w *walTwin) hs() *raftpb.HardState {
	return &raftpb.HardState{Term: new(w.term), Vote: new(uint64(1 + w.seq%3)), Commit: new(w.commit)}
}

// step does one random Save or Compact on both.
func (w *walTwin) step() {
	w.t.Helper()
	w.seq++
	sync := w.rng.IntN(2) == 0
	switch r := w.rng.IntN(10); {
	case r < 6: // append, maybe replacing an uncommitted suffix
		from := w.last() + 1
		if r == 0 && from > w.commit+1 {
			from = w.commit + 1 + w.rng.Uint64N(from-w.commit-1)
			w.term++
		}
		var ents []*raftpb.Entry
		for i := range 1 + w.rng.IntN(5) {
			ents = append(ents, walEntry(w.term, from+uint64(i), fmt.Sprintf("e%d.%d", w.seq, i)))
		}
		if err := w.ref.Append(ents); err != nil {
			w.t.Fatal(err)
		}
		w.commit += w.rng.Uint64N(w.last() - w.commit + 1)
		if err := w.s.Save(w.hs(), ents, nil, sync); err != nil {
			w.t.Fatal(err)
		}
		if err := w.ref.SetHardState(w.hs()); err != nil {
			w.t.Fatal(err)
		}
	case r < 7: // a HardState alone (a vote)
		w.term++
		if err := w.s.Save(w.hs(), nil, nil, sync); err != nil {
			w.t.Fatal(err)
		}
		_ = w.ref.SetHardState(w.hs())
	case r < 8: // a leader's snapshot, past everything we have
		idx := w.last() + 1 + w.rng.Uint64N(5)
		w.term++
		snap := walSnap(idx, w.term, fmt.Sprintf("leader%d", w.seq))
		w.commit = idx
		if err := w.s.Save(w.hs(), nil, snap, sync); err != nil {
			w.t.Fatal(err)
		}
		if err := w.ref.ApplySnapshot(snap); err != nil {
			w.t.Fatal(err)
		}
		_ = w.ref.SetHardState(w.hs())
	case r < 9: // compaction at a committed index
		fi, _ := w.ref.FirstIndex()
		if w.commit < fi {
			return
		}
		idx := fi + w.rng.Uint64N(w.commit-fi+1)
		data := fmt.Sprintf("own%d", w.seq)
		snap, err := w.ref.CreateSnapshot(idx, &raftpb.ConfState{Voters: []uint64{1, 2, 3}}, []byte(data))
		if err != nil {
			w.t.Fatal(err)
		}
		if err := w.ref.Compact(idx); err != nil {
			w.t.Fatal(err)
		}
		if err := w.s.Compact(snap); err != nil {
			w.t.Fatal(err)
		}
	default:
		w.reopen()
	}
}

func (w *walTwin) check() {
	w.t.Helper()
	ms, err := w.s.Load(walNodes)
	if err != nil {
		w.t.Fatal(err)
	}
	if got, want := dumpStorage(w.t, ms), dumpStorage(w.t, w.ref); got != want {
		w.t.Fatalf("after step %d, Load gives\n%s\nwant\n%s", w.seq, got, want)
	}
}

// Saves of entries (conflicting suffixes too), HardStates and snapshots,
// synced or not, compactions and reopens: Load gives what a
// raft.MemoryStorage fed the same gives, after every step.
func TestWALRoundTrip(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			w := newWALTwin(t, seed)
			for range 150 {
				w.step()
				w.check()
			}
			w.reopen()
			w.check()
		})
	}
}

// writeStoreCopy makes a data directory with dir's bbolt file and wal as
// its WAL.
func writeStoreCopy(t *testing.T, dir string, wal []byte) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	to := t.TempDir()
	if err := os.WriteFile(filepath.Join(to, StoreFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(to, WALFile), wal, 0o600); err != nil {
		t.Fatal(err)
	}
	return to
}

func readWAL(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, WALFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A crash in the middle of the last write leaves any prefix of it, or
// zeros where it went (preallocated space not yet written): for every
// such cut, the store opens with the state before that write, reports
// the torn bytes, and goes on from the last whole record.
func TestWALTornTail(t *testing.T) {
	w := newWALTwin(t, 42)
	for range 40 {
		w.step()
	}
	w.reopen()
	before := w.s.walEnd
	wantBefore := dumpStorage(t, w.ref)
	w.term++
	torn := walEntry(w.term, w.last()+1, "torn")
	if err := w.s.Save(w.hs(), []*raftpb.Entry{torn}, nil, true); err != nil {
		t.Fatal(err)
	}
	// The Save wrote an entries record, then a HardState record: a cut in
	// the second leaves the first.
	_, payload, ok := walRecordAt(readWAL(t, w.dir), int(before))
	if !ok {
		t.Fatalf("no valid record at offset %d", before)
	}
	mid := before + int64(walHeaderSize+len(payload))
	if err := w.ref.Append([]*raftpb.Entry{torn}); err != nil {
		t.Fatal(err)
	}
	wantMid := dumpStorage(t, w.ref)
	after := w.s.walEnd
	full := readWAL(t, w.dir)[:after]
	for cut := before; cut < after; cut++ {
		want := wantBefore
		if cut >= mid {
			want = wantMid
		}
		for _, zeroed := range []bool{false, true} {
			wal := bytes.Clone(full[:cut])
			if zeroed {
				wal = append(wal, make([]byte, after-cut+4096)...)
			}
			d := writeStoreCopy(t, w.dir, wal)
			s, err := OpenStore(d)
			if err != nil {
				t.Fatalf("cut at %d (zeroed %v): %v", cut, zeroed, err)
			}
			if got := dumpStorage(t, mustLoad(t, s)); got != want {
				t.Fatalf("cut at %d (zeroed %v): Load gives\n%s\nwant\n%s", cut, zeroed, got, want)
			}
			kept := before
			if cut >= mid {
				kept = mid
			}
			if nonzero := len(trimZeros(full[kept:cut])) > 0; (s.Torn() > 0) != nonzero {
				t.Fatalf("cut at %d (zeroed %v): Torn() = %d", cut, zeroed, s.Torn())
			}
			// The next write goes where the torn one was.
			if err := s.Save(nil, []*raftpb.Entry{walEntry(w.term, torn.GetIndex(), "again")}, nil, true); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			wantAgain := strings.Replace(wantMid, `"torn"`, `"again"`, 1)
			if cut >= mid {
				wantAgain = strings.Replace(want, `"torn"`, `"again"`, 1)
			}
			if got := loadDump(t, d); got != wantAgain {
				t.Fatalf("cut at %d (zeroed %v): after a Save, Load gives\n%s\nwant\n%s", cut, zeroed, got, wantAgain)
			}
		}
	}
}

func mustLoad(t *testing.T, s *Store) *raft.MemoryStorage {
	t.Helper()
	ms, err := s.Load(walNodes)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// A bad byte anywhere in a record that a valid one follows is corruption:
// OpenStore fails with ErrStore naming the WAL and the offset, and drops
// nothing.
func TestWALCorruptMiddle(t *testing.T) {
	w := newWALTwin(t, 7)
	if err := w.s.Save(w.hs(), []*raftpb.Entry{walEntry(2, 2, "first")}, nil, true); err != nil {
		t.Fatal(err)
	}
	first := w.s.walEnd
	if err := w.s.Save(w.hs(), []*raftpb.Entry{walEntry(2, 3, "second")}, nil, true); err != nil {
		t.Fatal(err)
	}
	full := readWAL(t, w.dir)[:w.s.walEnd]
	// The first Save wrote an entries record and then a HardState record.
	_, payload, ok := walRecordAt(full, 0)
	if !ok {
		t.Fatal("no valid record at offset 0")
	}
	second := int64(walHeaderSize + len(payload))
	for i := range first {
		wal := bytes.Clone(full)
		wal[i] ^= 0x40
		d := writeStoreCopy(t, w.dir, wal)
		_, err := OpenStore(d)
		at := int64(0)
		if i >= second {
			at = second
		}
		if !errors.Is(err, ErrStore) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d,", at)) || !strings.Contains(err.Error(), filepath.Join(d, WALFile)) {
			t.Fatalf("byte %d flipped: %v, want ErrStore naming %s and offset %d", i, err, WALFile, at)
		}
		if b := readWAL(t, d); !bytes.Equal(b, wal) {
			t.Fatalf("byte %d flipped: the WAL was changed", i)
		}
	}
}

// A crash in the middle of Compact: the snapshot stored and the WAL not
// rewritten, or rewritten into clms.wal.tmp but not renamed. Each loads
// as the store after Compact, and goes on.
func TestWALCompactCrash(t *testing.T) {
	for _, step := range []string{"snapshot stored", "tmp written", "done"} {
		t.Run(step, func(t *testing.T) {
			w := newWALTwin(t, 3)
			for w.commit < 20 {
				w.step()
			}
			w.reopen()
			idx := w.commit - 2
			fi, _ := w.ref.FirstIndex()
			if idx < fi {
				t.Skipf("seed compacted past %d", idx)
			}
			snap, err := w.ref.CreateSnapshot(idx, &raftpb.ConfState{Voters: []uint64{1, 2, 3}}, []byte("compacted"))
			if err != nil {
				t.Fatal(err)
			}
			_ = w.ref.Compact(idx)
			switch step {
			case "snapshot stored":
				err = w.s.putSnapshot(snap)
			case "tmp written":
				if err = w.s.putSnapshot(snap); err == nil {
					var b []byte
					b, err = encodeWAL(w.s.hs, w.s.ents)
					if err == nil {
						err = os.WriteFile(filepath.Join(w.dir, WALFile+".tmp"), b, 0o600)
					}
				}
			case "done":
				err = w.s.Compact(snap)
			}
			if err != nil {
				t.Fatal(err)
			}
			w.reopen()
			if _, err := os.Stat(filepath.Join(w.dir, WALFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s.tmp after open: %v", WALFile, err)
			}
			w.check()
			if _, _, count, _ := w.s.Size(); uint64(count) != w.last()-idx {
				t.Fatalf("Size counts %d entries, want %d after the snapshot at %d", count, w.last()-idx, idx)
			}
			for range 30 {
				w.step()
			}
			w.reopen()
			w.check()
		})
	}
}

// A leader's snapshot stored in bbolt, and a crash before its marker
// reached the WAL: the log on disk is the one from before, which does not
// continue the snapshot, and goes as raft's restore would drop it. Its
// HardState's commit is the snapshot's.
func TestWALSnapshotWithoutMarker(t *testing.T) {
	w := newWALTwin(t, 5)
	if err := w.s.Save(w.hs(), []*raftpb.Entry{walEntry(2, 2, "a"), walEntry(2, 3, "b"), walEntry(2, 4, "c")}, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := w.s.putSnapshot(walSnap(3, 3, "leader")); err != nil { // the entry at 3 has term 2
		t.Fatal(err)
	}
	w.reopen()
	got := dumpStorage(t, mustLoad(t, w.s))
	want := "snapshot 3/3 \"leader\"\nhardstate term 2 vote 1 commit 3\n"
	if got != want {
		t.Fatalf("Load gives\n%s\nwant\n%s", got, want)
	}
}

// writeOldStore writes a store in the layout before the WAL (bbolt only),
// as that code did.
func writeOldStore(t *testing.T, dir string, hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, StoreFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		eb, err := tx.CreateBucketIfNotExists(bucketEntries)
		if err != nil {
			return err
		}
		for _, e := range ents {
			b, _ := proto.Marshal(e)
			if err := eb.Put(binary.BigEndian.AppendUint64(nil, e.GetIndex()), b); err != nil {
				return err
			}
		}
		if snap != nil {
			b, _ := proto.Marshal(snap)
			if err := meta.Put(keySnapshot, b); err != nil {
				return err
			}
		}
		b, _ := proto.Marshal(hs)
		return meta.Put(keyHardState, b)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// oldLayoutLeft says whether bbolt still holds the old layout's entries or
// HardState.
func oldLayoutLeft(t *testing.T, s *Store) bool {
	t.Helper()
	var old bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		old = tx.Bucket(bucketEntries) != nil || tx.Bucket(bucketMeta).Get(keyHardState) != nil
		return nil
	})
	return old
}

// A store written before the WAL opens with its log moved into a new WAL
// and out of bbolt; a crash between the two steps (both hold a log) opens
// with the WAL's and the leftovers go.
func TestWALMigration(t *testing.T) {
	dir := t.TempDir()
	hs := &raftpb.HardState{Term: new(uint64(4)), Vote: new(uint64(2)), Commit: new(uint64(12))}
	var ents []*raftpb.Entry
	for i := uint64(11); i <= 14; i++ {
		ents = append(ents, walEntry(4, i, fmt.Sprint("old", i)))
	}
	writeOldStore(t, dir, hs, ents, walSnap(10, 3, "image"))
	want := "snapshot 10/3 \"image\"\nentry 11/4 \"old11\"\nentry 12/4 \"old12\"\nentry 13/4 \"old13\"\nentry 14/4 \"old14\"\nhardstate term 4 vote 2 commit 12\n"
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := dumpStorage(t, mustLoad(t, s)); got != want {
		t.Fatalf("migrated store loads\n%s\nwant\n%s", got, want)
	}
	if oldLayoutLeft(t, s) {
		t.Fatal("bbolt still holds the old layout's log after the migration")
	}
	if _, n, count, _ := s.Size(); count != 4 || n == 0 {
		t.Fatalf("Size: %d entries, %d bytes; want the 4 migrated", count, n)
	}
	if err := s.Save(&raftpb.HardState{Term: new(uint64(5)), Vote: new(uint64(1)), Commit: new(uint64(13))}, []*raftpb.Entry{walEntry(5, 14, "new14")}, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	want = strings.Replace(want, "entry 14/4 \"old14\"\nhardstate term 4 vote 2 commit 12", "entry 14/5 \"new14\"\nhardstate term 5 vote 1 commit 13", 1)

	// The crash between the migration's two steps, with leftovers that
	// differ from the WAL: the WAL wins.
	writeOldStore(t, dir, &raftpb.HardState{Term: new(uint64(4)), Vote: new(uint64(2)), Commit: new(uint64(11))}, ents[:2], nil)
	s, err = OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := dumpStorage(t, mustLoad(t, s)); got != want {
		t.Fatalf("store with a WAL and old leftovers loads\n%s\nwant\n%s", got, want)
	}
	if oldLayoutLeft(t, s) {
		t.Fatal("bbolt still holds the old layout's leftovers")
	}
}

// Save refuses entries that would leave a gap, which replay would refuse.
func TestWALSaveRefusesGap(t *testing.T) {
	w := newWALTwin(t, 9)
	if err := w.s.Save(nil, []*raftpb.Entry{walEntry(2, 2, "a")}, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := w.s.Save(nil, []*raftpb.Entry{walEntry(2, 4, "c")}, nil, true); !errors.Is(err, ErrStore) || !strings.Contains(err.Error(), "gap") {
		t.Fatalf("Save of entry 4 after 2: %v, want ErrStore naming the gap", err)
	}
	if err := w.s.Save(nil, []*raftpb.Entry{walEntry(2, 3, "b"), walEntry(2, 5, "d")}, nil, true); !errors.Is(err, ErrStore) {
		t.Fatalf("Save of entries 3, 5: %v, want ErrStore", err)
	}
}

// FuzzWALReplay feeds arbitrary bytes as a WAL file: replay never panics
// nor allocates more than the input's size allows (every length is
// checked against walMaxRecord and the bytes left), and what it accepts
// is a log that, written again, replays to itself; the prefix it keeps
// replays whole.
func FuzzWALReplay(f *testing.F) {
	hs := &raftpb.HardState{Term: new(uint64(3)), Vote: new(uint64(1)), Commit: new(uint64(4))}
	ents := []*raftpb.Entry{walEntry(3, 2, "a"), walEntry(3, 3, "bb"), walEntry(3, 4, "ccc")}
	valid, err := encodeWAL(hs, ents)
	if err != nil {
		f.Fatal(err)
	}
	marker, _ := appendWALMessage(nil, walSnapshot, &raftpb.SnapshotMetadata{Index: new(uint64(9)), Term: new(uint64(3))})
	conflict, _ := appendWALEntries(bytes.Clone(valid), []*raftpb.Entry{walEntry(4, 3, "B")})
	f.Add([]byte{})                                                        // an empty WAL: a new store
	f.Add(valid)                                                           // entries and a HardState
	f.Add(append(bytes.Clone(valid), make([]byte, 100)...))                // preallocated zeros after it
	f.Add(valid[:len(valid)-3])                                            // a torn last record
	f.Add(append(bytes.Clone(marker), valid...))                           // a snapshot marker, then a log
	f.Add(conflict)                                                        // a conflicting suffix
	f.Add(append([]byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 1}, valid...)) // a huge length
	f.Fuzz(func(t *testing.T, b []byte) {
		log, end, err := replayWAL(b)
		if err != nil {
			if !errors.Is(err, errWALCorrupt) {
				t.Fatalf("error %v is not errWALCorrupt", err)
			}
			return
		}
		if end > len(b) {
			t.Fatalf("end %d past the %d bytes", end, len(b))
		}
		again, end2, err := replayWAL(b[:end])
		if err != nil || end2 != end || !sameWALLog(log, again) {
			t.Fatalf("the kept prefix %d replays to end %d, %v", end, end2, err)
		}
		w, err := encodeWAL(log.hs, log.ents)
		if err != nil {
			t.Fatal(err)
		}
		again, _, err = replayWAL(w)
		if err != nil || !sameWALLog(log, again) {
			t.Fatalf("the replayed log written again replays to something else: %v", err)
		}
	})
}

func sameWALLog(a, b walLog) bool {
	if !proto.Equal(a.hs, b.hs) || len(a.ents) != len(b.ents) {
		return false
	}
	for i := range a.ents {
		if !proto.Equal(a.ents[i], b.ents[i]) {
			return false
		}
	}
	return true
}

// A bad record followed by a region full of record-like headers whose
// lengths fit (here 2 MiB of them, each claiming 1 MiB) would cost the
// search for a valid record hundreds of GiB of CRCs: the search gives up
// within its budget, and the replay calls it corruption rather than
// dropping the region as a torn tail.
func TestWALReplayBoundedSearch(t *testing.T) {
	b := []byte{1, 0, 0, 0, 0, 0, 0, 0, walEntries, 0} // a bad CRC
	for len(b) < 2<<20 {
		b = binary.LittleEndian.AppendUint32(b, 1<<20)
		b = append(b, 0, 0, 0, 0, walEntries)
	}
	_, end, err := replayWAL(b)
	if !errors.Is(err, errWALCorrupt) || end != 0 || !strings.Contains(err.Error(), "too costly") {
		t.Fatalf("replay: end %d, %v; want errWALCorrupt at 0 giving up the search", end, err)
	}
}
