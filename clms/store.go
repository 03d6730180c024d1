package clms

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// ErrStore is wrapped by every error of the on-disk store.
var ErrStore = errors.New("clms: store")

// StoreFile is the store's file name in a node's data directory.
const StoreFile = "clms.db"

// Store keeps what a node must remember across restarts in one bbolt file:
// the raft log, HardState and snapshot of a master-eligible node, and the
// incarnation counter of every node. Not safe for concurrent use: the
// runner's goroutine is its only user after OpenStore.
//
// Layout: bucket "meta" holds "hardstate" and "snapshot" (raftpb, protobuf)
// and "incarnation" (8 bytes big-endian); bucket "entries" maps an entry's
// index (8 bytes big-endian, so keys sort by index) to the raftpb.Entry.
type Store struct {
	db  *bolt.DB
	inc uint64
}

var (
	bucketMeta    = []byte("meta")
	bucketEntries = []byte("entries")
	keyHardState  = []byte("hardstate")
	keySnapshot   = []byte("snapshot")
	keyInc        = []byte("incarnation")
)

// OpenStore opens (or creates) the store in dir, which is created with mode
// 0700 if missing, and starts a new incarnation: larger than every earlier
// run's (which it persists, fsynced, before returning) and than the wall
// clock in nanoseconds, so that it also grows across a lost data directory
// as long as the clock does not go back.
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
	s := &Store{db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketEntries); err != nil {
			return err
		}
		var last uint64
		if v := meta.Get(keyInc); len(v) == 8 {
			last = binary.BigEndian.Uint64(v)
		}
		s.inc = max(last+1, NewIncarnation())
		return meta.Put(keyInc, binary.BigEndian.AppendUint64(nil, s.inc))
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrStore, path, err)
	}
	return s, nil
}

// NewIncarnation is the incarnation of a node that keeps no store: the wall
// clock in nanoseconds, which grows from one run to the next unless the
// clock is set back.
func NewIncarnation() uint64 { return uint64(time.Now().UnixNano()) }

// Incarnation is this run's incarnation, chosen by OpenStore.
func (s *Store) Incarnation() uint64 { return s.inc }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Load returns the raft storage to start a master-eligible node from:
// BootstrapStorage(nodes) with the persisted snapshot, entries and
// HardState applied.
func (s *Store) Load(nodes []NodeConfig) (*raft.MemoryStorage, error) {
	ms := BootstrapStorage(nodes)
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keySnapshot); v != nil {
			var snap raftpb.Snapshot
			if err := proto.Unmarshal(v, &snap); err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			if err := ms.ApplySnapshot(&snap); err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
				return fmt.Errorf("snapshot: %w", err)
			}
		}
		var ents []*raftpb.Entry
		err := tx.Bucket(bucketEntries).ForEach(func(_, v []byte) error {
			e := &raftpb.Entry{}
			if err := proto.Unmarshal(v, e); err != nil {
				return fmt.Errorf("entry: %w", err)
			}
			ents = append(ents, e)
			return nil
		})
		if err != nil {
			return err
		}
		if len(ents) > 0 {
			if err := ms.Append(ents); err != nil {
				return fmt.Errorf("entries %d..%d: %w", ents[0].GetIndex(), ents[len(ents)-1].GetIndex(), err)
			}
		}
		if v := meta.Get(keyHardState); v != nil {
			var hs raftpb.HardState
			if err := proto.Unmarshal(v, &hs); err != nil {
				return fmt.Errorf("hardstate: %w", err)
			}
			if err := ms.SetHardState(&hs); err != nil {
				return fmt.Errorf("hardstate: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: load: %w", ErrStore, err)
	}
	return ms, nil
}

// Save writes one Ready's raft state in one transaction, fsynced when sync
// (raft's MustSync: a vote or an entry a peer may count on). Entries from
// index i on replace every stored entry at i and after: raft sends a
// conflicting suffix again rather than deleting it.
func (s *Store) Save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot, sync bool) error {
	if (hs == nil || raft.IsEmptyHardState(hs)) && len(ents) == 0 && (snap == nil || raft.IsEmptySnap(snap)) {
		return nil
	}
	// The runner's goroutine is the only writer, so flipping NoSync around
	// one transaction is safe.
	s.db.NoSync = !sync
	defer func() { s.db.NoSync = false }()
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, eb := tx.Bucket(bucketMeta), tx.Bucket(bucketEntries)
		if snap != nil && !raft.IsEmptySnap(snap) {
			b, err := proto.Marshal(snap)
			if err != nil {
				return err
			}
			if err := meta.Put(keySnapshot, b); err != nil {
				return err
			}
			// Entries the snapshot covers are no longer needed.
			if err := deleteFrom(eb, 0, snap.GetMetadata().GetIndex()+1); err != nil {
				return err
			}
		}
		if len(ents) > 0 {
			if err := deleteFrom(eb, ents[0].GetIndex(), 0); err != nil {
				return err
			}
			for _, e := range ents {
				b, err := proto.Marshal(e)
				if err != nil {
					return err
				}
				if err := eb.Put(indexKey(e.GetIndex()), b); err != nil {
					return err
				}
			}
		}
		if hs != nil && !raft.IsEmptyHardState(hs) {
			b, err := proto.Marshal(hs)
			if err != nil {
				return err
			}
			if err := meta.Put(keyHardState, b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: save: %w", ErrStore, err)
	}
	return nil
}

func indexKey(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

// deleteFrom deletes the entries with from <= index < to (to 0: no bound).
func deleteFrom(b *bolt.Bucket, from, to uint64) error {
	c := b.Cursor()
	for k, _ := c.Seek(indexKey(from)); k != nil; k, _ = c.Seek(indexKey(from)) {
		if to != 0 && binary.BigEndian.Uint64(k) >= to {
			return nil
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Compact stores snap, a snapshot the core took (Ready.Compact), and drops
// the entries it covers, in one fsynced transaction: a crash leaves either
// the old snapshot with every entry or the new one with the entries after
// it, and Load starts from either. A snapshot older than the stored one is
// ignored.
func (s *Store) Compact(snap *raftpb.Snapshot) error {
	if snap == nil || raft.IsEmptySnap(snap) {
		return nil
	}
	// Fsynced whatever the write path's sync strategy: the runner's
	// goroutine is the only writer.
	noSync := s.db.NoSync
	s.db.NoSync = false
	defer func() { s.db.NoSync = noSync }()
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, eb := tx.Bucket(bucketMeta), tx.Bucket(bucketEntries)
		if v := meta.Get(keySnapshot); v != nil {
			var cur raftpb.Snapshot
			if err := proto.Unmarshal(v, &cur); err == nil && cur.GetMetadata().GetIndex() >= snap.GetMetadata().GetIndex() {
				return nil
			}
		}
		b, err := proto.Marshal(snap)
		if err != nil {
			return err
		}
		if err := meta.Put(keySnapshot, b); err != nil {
			return err
		}
		return deleteFrom(eb, 0, snap.GetMetadata().GetIndex()+1)
	})
	if err != nil {
		return fmt.Errorf("%w: compact: %w", ErrStore, err)
	}
	return nil
}

// Size reports the stored snapshot's and entries' bytes and the number of
// entries: what compaction bounds.
func (s *Store) Size() (snapshot, entries, count int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		snapshot = len(tx.Bucket(bucketMeta).Get(keySnapshot))
		return tx.Bucket(bucketEntries).ForEach(func(k, v []byte) error {
			entries += len(k) + len(v)
			count++
			return nil
		})
	})
	return snapshot, entries, count, err
}
