package clms

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// ErrStore is wrapped by every error of the on-disk store.
var ErrStore = errors.New("clms: store")

// StoreFile is the store's bbolt file name in a node's data directory.
const StoreFile = "clms.db"

// Store keeps what a node must remember across restarts: the raft log,
// HardState and snapshot of a master-eligible node, and the incarnation
// counter of every node. Save, Compact, Load and Close are for one
// goroutine (the runner's after OpenStore); Size may be called beside it.
//
// Layout, in the node's data directory:
//   - WALFile (clms.wal): the entries and HardStates, appended by Save with
//     one write and one fdatasync per Ready (see wal.go for its records);
//     Compact rewrites it with the entries after its snapshot.
//   - StoreFile (clms.db, bbolt): bucket "meta" holds "snapshot" (raftpb,
//     protobuf) and "incarnation" (8 bytes big-endian): rare writes, where
//     bbolt's two fdatasyncs per transaction do not matter.
//
// A store written before the WAL kept the entries (bucket "entries") and
// the HardState (meta "hardstate") in bbolt too: OpenStore moves them to a
// new WAL.
type Store struct {
	db  *bolt.DB
	dir string
	inc uint64

	wal      *os.File // WALFile, written at walEnd
	walEnd   int64    // offset after the last record
	walAlloc int64    // the file's size, preallocated beyond walEnd
	buf      []byte   // Save's records, reused
	torn     int64    // bytes of a torn last record cut off at open
	broken   error    // a Compact that renamed the WAL but could not reopen or fsync it

	mu sync.Mutex // guards the fields below: Size reads them beside the runner
	// hs is the last HardState saved; nil if none.
	hs *raftpb.HardState
	// ents are the entries after the snapshot, consecutive, as Load gives
	// them to raft and Compact rewrites them; they are what Save got,
	// which no one changes.
	ents []*raftpb.Entry
	// snapIndex, snapTerm and snapBytes describe the snapshot in bbolt.
	snapIndex, snapTerm uint64
	snapBytes           int
}

var (
	bucketMeta    = []byte("meta")
	bucketEntries = []byte("entries")   // the layout before the WAL
	keyHardState  = []byte("hardstate") // the layout before the WAL
	keySnapshot   = []byte("snapshot")
	keyInc        = []byte("incarnation")
)

// OpenStore opens (or creates) the store in dir, which is created with mode
// 0700 if missing, and starts a new incarnation: larger than every earlier
// run's (which it persists, fsynced, before returning) and than the wall
// clock in nanoseconds, so that it also grows across a lost data directory
// as long as the clock does not go back.
//
// It replays the WAL: a torn last record (a crash in the middle of a
// write, which nobody was told had succeeded) is cut off (Torn says how
// many bytes); a bad record followed by a valid one is corruption, an
// ErrStore error naming the file and the offset, since dropping what
// follows could drop committed entries: an operator must look.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStore, err)
	}
	path := filepath.Join(dir, StoreFile)
	// A second process on the same directory would interleave two raft
	// logs: the file lock makes it fail instead of waiting for ever.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrStore, path, err)
	}
	s := &Store{db: db, dir: dir}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		var last uint64
		if v := meta.Get(keyInc); len(v) == 8 {
			last = binary.BigEndian.Uint64(v)
		}
		s.inc = max(last+1, NewIncarnation())
		if v := meta.Get(keySnapshot); v != nil {
			var snap raftpb.Snapshot
			if err := proto.Unmarshal(v, &snap); err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			s.snapIndex, s.snapTerm, s.snapBytes = snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm(), len(v)
		}
		return meta.Put(keyInc, binary.BigEndian.AppendUint64(nil, s.inc))
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrStore, path, err)
	}
	if err := s.openWAL(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("%w: %w", ErrStore, err)
	}
	return s, nil
}

// openWAL replays the WAL (after migrating the bbolt-only layout into a
// new one if there is none) and opens it for Save.
func (s *Store) openWAL() error {
	path := filepath.Join(s.dir, WALFile)
	// A Compact's or a migration's file from a crash before its rename:
	// the WAL it was to replace is whole.
	if err := os.Remove(path + ".tmp"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := s.migrate(); err != nil {
			return fmt.Errorf("moving the log from %s to %s: %w", StoreFile, path, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	log, end, err := replayWAL(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// The WAL wins over a migration's leftovers (a crash before it deleted
	// them from bbolt).
	if err := s.dropOldLayout(); err != nil {
		return fmt.Errorf("%s: dropping the log moved to %s: %w", StoreFile, path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	size := int64(len(b))
	if data := int64(len(trimZeros(b))); data > int64(end) {
		// The torn record goes, and the space it held is zeros again, so
		// that what Save writes next ends where it should.
		s.torn = data - int64(end)
		err = f.Truncate(int64(end))
		if err == nil {
			size, err = preallocate(f, int64(end))
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			_ = f.Close()
			return fmt.Errorf("cutting the torn record at offset %d off %s: %w", end, path, err)
		}
	}
	s.wal, s.walEnd, s.walAlloc = f, int64(end), size
	s.hs, s.ents = log.hs, log.live(s.snapIndex, s.snapTerm)
	return nil
}

// migrate writes a new WAL holding the entries and HardState of the
// layout before the WAL (bbolt only); an empty one for a new store. The
// caller then deletes them from bbolt (dropOldLayout).
func (s *Store) migrate() error {
	var hs *raftpb.HardState
	var ents []*raftpb.Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyHardState); v != nil {
			hs = &raftpb.HardState{}
			if err := proto.Unmarshal(v, hs); err != nil {
				return fmt.Errorf("hardstate: %w", err)
			}
		}
		eb := tx.Bucket(bucketEntries)
		if eb == nil {
			return nil
		}
		return eb.ForEach(func(_, v []byte) error {
			e := &raftpb.Entry{}
			if err := proto.Unmarshal(v, e); err != nil {
				return fmt.Errorf("entry: %w", err)
			}
			ents = append(ents, e)
			return nil
		})
	})
	if err != nil {
		return err
	}
	b, err := encodeWAL(hs, ents)
	if err != nil {
		return err
	}
	if _, err := writeWALFile(s.dir, b); err != nil {
		return err
	}
	return syncDir(s.dir)
}

// dropOldLayout deletes the entries and HardState of the layout before the
// WAL from bbolt, in one transaction, if they are there.
func (s *Store) dropOldLayout() error {
	var old bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		old = tx.Bucket(bucketEntries) != nil || tx.Bucket(bucketMeta).Get(keyHardState) != nil
		return nil
	})
	if !old {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketEntries) != nil {
			if err := tx.DeleteBucket(bucketEntries); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Delete(keyHardState)
	})
}

// NewIncarnation is the incarnation of a node that keeps no store: the wall
// clock in nanoseconds, which grows from one run to the next unless the
// clock is set back.
func NewIncarnation() uint64 { return uint64(time.Now().UnixNano()) }

// Incarnation is this run's incarnation, chosen by OpenStore.
func (s *Store) Incarnation() uint64 { return s.inc }

// Torn is the number of bytes of a torn last WAL record that OpenStore cut
// off: a crash in the middle of a write (0 normally). Nothing it held had
// been reported saved.
func (s *Store) Torn() int64 { return s.torn }

// Close closes the files.
func (s *Store) Close() error {
	err := s.wal.Close()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// Load returns the raft storage to start a master-eligible node from:
// BootstrapStorage(nodes) with the persisted snapshot, entries and
// HardState applied.
func (s *Store) Load(nodes []NodeConfig) (*raft.MemoryStorage, error) {
	ms := BootstrapStorage(nodes)
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySnapshot); v != nil {
			var snap raftpb.Snapshot
			if err := proto.Unmarshal(v, &snap); err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			if err := ms.ApplySnapshot(&snap); err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
				return fmt.Errorf("snapshot: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: load %s: %w", ErrStore, filepath.Join(s.dir, StoreFile), err)
	}
	s.mu.Lock()
	hs, ents, snapIndex := s.hs, s.ents, s.snapIndex
	s.mu.Unlock()
	wal := filepath.Join(s.dir, WALFile)
	last, _ := ms.LastIndex()
	if len(ents) > 0 {
		if first := ents[0].GetIndex(); first > last+1 {
			return nil, fmt.Errorf("%w: load %s: entries from %d, the snapshot ends at %d: a gap", ErrStore, wal, first, last)
		}
		if err := ms.Append(ents); err != nil {
			return nil, fmt.Errorf("%w: load %s: entries %d..%d: %w", ErrStore, wal, ents[0].GetIndex(), ents[len(ents)-1].GetIndex(), err)
		}
		last = ents[len(ents)-1].GetIndex()
	}
	if hs != nil {
		hs = proto.CloneOf(hs)
		// A snapshot holds committed state only; a crash between a Save's
		// storing of the leader's snapshot and its WAL write leaves the
		// HardState from before it.
		if hs.GetCommit() < snapIndex {
			hs.Commit = new(snapIndex)
		}
		if hs.GetCommit() > last {
			return nil, fmt.Errorf("%w: load %s: commit %d beyond the last entry %d", ErrStore, wal, hs.GetCommit(), last)
		}
		if err := ms.SetHardState(hs); err != nil {
			return nil, fmt.Errorf("%w: load %s: hardstate: %w", ErrStore, wal, err)
		}
	}
	return ms, nil
}

// Save writes one Ready's raft state: a snapshot to bbolt, fsynced, and
// then the entries and HardState to the WAL with one write, fdatasynced
// when sync (raft's MustSync: a vote or an entry a peer may count on).
// Entries from index i on replace every stored entry at i and after: raft
// sends a conflicting suffix again rather than deleting it.
func (s *Store) Save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot, sync bool) error {
	hasHS, hasSnap := hs != nil && !raft.IsEmptyHardState(hs), snap != nil && !raft.IsEmptySnap(snap)
	if !hasHS && len(ents) == 0 && !hasSnap {
		return nil
	}
	if err := s.save(hs, hasHS, ents, snap, hasSnap, sync); err != nil {
		return fmt.Errorf("%w: save: %w", ErrStore, err)
	}
	return nil
}

func (s *Store) save(hs *raftpb.HardState, hasHS bool, ents []*raftpb.Entry, snap *raftpb.Snapshot, hasSnap, sync bool) error {
	if s.broken != nil {
		return s.broken
	}
	b := s.buf[:0]
	var err error
	if hasSnap {
		if err := s.putSnapshot(snap); err != nil {
			return err
		}
		md := snap.GetMetadata()
		s.mu.Lock()
		s.ents = nil // as raft's restore drops its log
		s.mu.Unlock()
		if b, err = appendWALMessage(b, walSnapshot, &raftpb.SnapshotMetadata{Index: new(md.GetIndex()), Term: new(md.GetTerm())}); err != nil {
			return err
		}
		// The marker must not be lost while the snapshot is stored: a
		// restart would take the log from before the snapshot for its
		// continuation.
		sync = true
	}
	if len(ents) > 0 {
		if err := s.checkFollows(ents); err != nil {
			return err
		}
		if b, err = appendWALEntries(b, ents); err != nil {
			return err
		}
	}
	if hasHS {
		if b, err = appendWALMessage(b, walHardState, hs); err != nil {
			return err
		}
	}
	if cap(b) <= 1<<20 { // one large Ready does not pin its buffer for ever
		s.buf = b
	}
	if err := s.appendWAL(b, sync); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if hasHS {
		s.hs = proto.CloneOf(hs)
	}
	s.appendEntriesLocked(ents)
	return nil
}

// checkFollows refuses entries that are not consecutive or leave a gap
// after the stored ones: replay would refuse the WAL they went to.
func (s *Store) checkFollows(ents []*raftpb.Entry) error {
	for i := 1; i < len(ents); i++ {
		if ents[i].GetIndex() != ents[i-1].GetIndex()+1 {
			return fmt.Errorf("entry %d after %d: not consecutive", ents[i].GetIndex(), ents[i-1].GetIndex())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.ents); n > 0 {
		if last := s.ents[n-1].GetIndex(); ents[0].GetIndex() > last+1 {
			return fmt.Errorf("entries from %d after %d: a gap", ents[0].GetIndex(), last)
		}
	}
	return nil
}

// appendEntriesLocked is replay's entries record for the Store's memory,
// which holds only the entries after the snapshot. checkFollows has
// checked them.
func (s *Store) appendEntriesLocked(ents []*raftpb.Entry) {
	for len(ents) > 0 && ents[0].GetIndex() <= s.snapIndex {
		ents = ents[1:]
	}
	l := walLog{ents: s.ents}
	_ = l.append(ents)
	s.ents = l.ents
}

// appendWAL writes b at the WAL's end with one write, extending the
// preallocated space first if b does not fit, and fdatasyncs it if sync.
func (s *Store) appendWAL(b []byte, sync bool) error {
	if need := s.walEnd + int64(len(b)); need > s.walAlloc {
		size, err := preallocate(s.wal, need)
		if err != nil {
			return err
		}
		s.walAlloc = size
	}
	if _, err := s.wal.WriteAt(b, s.walEnd); err != nil {
		return fmt.Errorf("write %s: %w", s.wal.Name(), err)
	}
	if sync {
		if err := unix.Fdatasync(int(s.wal.Fd())); err != nil {
			return fmt.Errorf("fdatasync %s: %w", s.wal.Name(), err)
		}
	}
	s.walEnd += int64(len(b))
	return nil
}

// putSnapshot stores snap in bbolt, fsynced, and drops the entries it
// covers from memory.
func (s *Store) putSnapshot(snap *raftpb.Snapshot) error {
	b, err := proto.Marshal(snap)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySnapshot, b) })
	if err != nil {
		return fmt.Errorf("%s: %w", StoreFile, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	md := snap.GetMetadata()
	s.snapIndex, s.snapTerm, s.snapBytes = md.GetIndex(), md.GetTerm(), len(b)
	l := walLog{ents: s.ents}
	s.ents = slices.Clone(l.live(s.snapIndex, s.snapTerm)) // Clone: the covered entries' memory goes
	return nil
}

// Compact stores snap, a snapshot the core took (Ready.Compact), in bbolt
// (fsynced) and then rewrites the WAL with the HardState and the entries
// after it (writeWALFile). A crash leaves the old snapshot and the old
// WAL, the new snapshot and the old WAL (whose entries it covers are
// skipped), or the new snapshot and the new WAL, and Load starts from
// each. A snapshot older than the stored one is ignored.
func (s *Store) Compact(snap *raftpb.Snapshot) error {
	if snap == nil || raft.IsEmptySnap(snap) || snap.GetMetadata().GetIndex() <= s.snapIndex {
		return nil
	}
	if err := s.compact(snap); err != nil {
		return fmt.Errorf("%w: compact: %w", ErrStore, err)
	}
	return nil
}

func (s *Store) compact(snap *raftpb.Snapshot) error {
	if s.broken != nil {
		return s.broken
	}
	if err := s.putSnapshot(snap); err != nil {
		return err
	}
	s.mu.Lock()
	b, err := encodeWAL(s.hs, s.ents)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	size, err := writeWALFile(s.dir, b)
	if err != nil {
		return err // the old WAL stays, whole
	}
	// From here on Save must write to the new file, and the rename must
	// be durable before it does: else the store is broken for good.
	f, err := os.OpenFile(filepath.Join(s.dir, WALFile), os.O_RDWR, 0)
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		if f != nil {
			_ = f.Close()
		}
		s.broken = fmt.Errorf("the WAL was rewritten, and then: %w", err)
		return s.broken
	}
	_ = s.wal.Close()
	s.wal, s.walEnd, s.walAlloc = f, int64(len(b)), size
	return nil
}

// Size reports the stored snapshot's bytes and the bytes (as an index
// and a protobuf each, as the layout before the WAL counted them) and
// number of the entries after it: what compaction bounds.
func (s *Store) Size() (snapshot, entries, count int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.ents {
		entries += 8 + proto.Size(e)
	}
	return s.snapBytes, entries, len(s.ents), nil
}
