package clms

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// WALFile is the write-ahead log's file name in a node's data directory,
// beside StoreFile: the raft entries and HardStates, one append and one
// fdatasync per Ready (bbolt's transaction costs two fdatasyncs).
const WALFile = "clms.wal"

// The WAL is a sequence of records, each
//
//	length  uint32 little-endian  the payload's length
//	crc     uint32 little-endian  CRC-32C (Castagnoli) of type and payload
//	type    byte                  walEntries, walHardState or walSnapshot
//	payload length bytes          protobuf
//
// followed by zeros (the preallocated space): a record whose type is 0,
// which no record has, ends the log, as does the end of the file. Types
// are only appended.
const (
	walHeaderSize = 9

	// walEntries: entries of consecutive indexes, as a protobuf message
	// whose field 1 repeats raftpb.Entry. The first entry's index i
	// replaces every entry at i and after: raft resends a conflicting
	// suffix rather than deleting it.
	walEntries byte = 1
	// walHardState: a raftpb.HardState; the last one wins.
	walHardState byte = 2
	// walSnapshot: a raftpb.SnapshotMetadata with Index and Term of a
	// snapshot a Save stored in bbolt before writing this marker; every
	// entry before it is dropped, as raft's own restore drops its log.
	walSnapshot byte = 3

	// walMaxRecord bounds a record's payload: a length above it is
	// corruption, never an allocation. Save splits its entries into records
	// below it, and refuses an entry of its own larger than that (raft's
	// MaxSizePerMsg keeps entries far smaller).
	walMaxRecord = 64 << 20

	// walPrealloc is the step in which the WAL's file is extended
	// (fallocate) before records are written into it, so that a record's
	// fdatasync need not also write the file's new size: measured here, an
	// append of 260 bytes and its fdatasync took 100-145 µs p50 into
	// preallocated space and 155-210 µs at the end of the file. Smaller
	// than etcd's 64 MiB segments because the store reads the whole file
	// when it opens, and compaction rewrites the WAL every SnapshotEvery
	// entries, so it rarely outgrows one step.
	walPrealloc = 4 << 20

	// walScanBudget bounds the bytes whose CRC a search for a valid record
	// after a bad one computes (CRC-32C runs at several GB/s: a fraction of
	// a second), so that a large corrupt region cannot make an open take
	// hours.
	walScanBudget = 1 << 30
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// appendWALRecord appends a record of type typ whose payload is what
// payload appends to its argument.
func appendWALRecord(b []byte, typ byte, payload func([]byte) ([]byte, error)) ([]byte, error) {
	start := len(b)
	b = append(b, make([]byte, walHeaderSize)...)
	b, err := payload(b)
	if err != nil {
		return b[:start], err
	}
	n := len(b) - start - walHeaderSize
	if n > walMaxRecord {
		return b[:start], fmt.Errorf("a WAL record of %d bytes is over the %d-byte limit", n, walMaxRecord)
	}
	h := b[start : start+walHeaderSize]
	h[8] = typ
	binary.LittleEndian.PutUint32(h[0:4], uint32(n))
	binary.LittleEndian.PutUint32(h[4:8], crc32.Update(crc32.Update(0, crc32c, h[8:9]), crc32c, b[start+walHeaderSize:]))
	return b, nil
}

// appendWALMessage appends a record holding one protobuf message.
func appendWALMessage(b []byte, typ byte, m proto.Message) ([]byte, error) {
	return appendWALRecord(b, typ, func(b []byte) ([]byte, error) {
		return proto.MarshalOptions{}.MarshalAppend(b, m)
	})
}

// appendWALEntries appends ents (consecutive indexes) as as few entries
// records as walMaxRecord allows.
func appendWALEntries(b []byte, ents []*raftpb.Entry) ([]byte, error) {
	for len(ents) > 0 {
		n, size := 0, 0
		for n < len(ents) {
			es := proto.Size(ents[n])
			size += protowire.SizeTag(1) + protowire.SizeBytes(es)
			if n > 0 && size > walMaxRecord {
				break
			}
			n++
		}
		var err error
		b, err = appendWALRecord(b, walEntries, func(b []byte) ([]byte, error) {
			for _, e := range ents[:n] {
				b = protowire.AppendTag(b, 1, protowire.BytesType)
				b = protowire.AppendVarint(b, uint64(proto.Size(e)))
				var err error
				if b, err = (proto.MarshalOptions{}).MarshalAppend(b, e); err != nil {
					return b, err
				}
			}
			return b, nil
		})
		if err != nil {
			return b, fmt.Errorf("entries %d..: %w", ents[0].GetIndex(), err)
		}
		ents = ents[n:]
	}
	return b, nil
}

// walLog is what a WAL's records replay to, before the snapshot in bbolt
// is taken into account (live does that).
type walLog struct {
	hs   *raftpb.HardState // the last one; nil if none
	ents []*raftpb.Entry   // consecutive indexes
}

// errWALCorrupt is a record that is bad although a valid one follows it, or
// one that decodes to nonsense although its CRC is right: not a crash in
// the middle of a write, which only tears the last record.
var errWALCorrupt = errors.New("corrupt")

// replayWAL replays the records of a WAL file's contents b. It returns
// the log and end, the offset after the last valid record: less than
// len(b) when the last record is torn (cut short, a bad CRC or zeroed: a
// crash in the middle of a write) or at the preallocated zeros. The
// returned entries alias nothing in b. An error (errWALCorrupt, with the
// offset) is a bad record followed by a valid one, a record whose CRC is
// right and whose contents are not (a payload that does not decode, a gap
// between entries), or anything else that no crash can explain.
func replayWAL(b []byte) (log walLog, end int, err error) {
	off := 0
	for off < len(b) {
		typ, payload, ok := walRecordAt(b, off)
		if !ok {
			if allZero(b[off:]) { // the preallocated space, or a write never begun
				return log, off, nil
			}
			next, exhausted := nextWALRecord(b, off+1)
			switch {
			case next >= 0:
				return walLog{}, off, fmt.Errorf("%w: bad record at offset %d, followed by a valid one at offset %d", errWALCorrupt, off, next)
			case exhausted:
				return walLog{}, off, fmt.Errorf("%w: bad record at offset %d, followed by %d bytes too costly to search for valid records", errWALCorrupt, off, len(b)-off)
			}
			return log, off, nil
		}
		if err := log.apply(typ, payload); err != nil {
			return walLog{}, off, fmt.Errorf("%w: record at offset %d: %w", errWALCorrupt, off, err)
		}
		off += walHeaderSize + len(payload)
	}
	return log, off, nil
}

// apply replays one record whose CRC is right.
func (l *walLog) apply(typ byte, payload []byte) error {
	switch typ {
	case walEntries:
		var ents []*raftpb.Entry
		for p := payload; len(p) > 0; {
			num, wt, n := protowire.ConsumeTag(p)
			if n < 0 || num != 1 || wt != protowire.BytesType {
				return errors.New("entries: not a repeated field 1 of entries")
			}
			p = p[n:]
			v, n := protowire.ConsumeBytes(p)
			if n < 0 {
				return errors.New("entries: entry cut short")
			}
			p = p[n:]
			e := &raftpb.Entry{}
			if err := proto.Unmarshal(v, e); err != nil {
				return fmt.Errorf("entries: %w", err)
			}
			if len(ents) > 0 && e.GetIndex() != ents[len(ents)-1].GetIndex()+1 {
				return fmt.Errorf("entries: index %d after %d", e.GetIndex(), ents[len(ents)-1].GetIndex())
			}
			ents = append(ents, e)
		}
		if len(ents) == 0 {
			return errors.New("entries: none")
		}
		return l.append(ents)
	case walHardState:
		hs := &raftpb.HardState{}
		if err := proto.Unmarshal(payload, hs); err != nil {
			return fmt.Errorf("hardstate: %w", err)
		}
		l.hs = hs
	case walSnapshot:
		md := &raftpb.SnapshotMetadata{}
		if err := proto.Unmarshal(payload, md); err != nil {
			return fmt.Errorf("snapshot marker: %w", err)
		}
		l.ents = nil
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return nil
}

// append adds consecutive entries: the first one's index i replaces every
// entry at i and after. A gap after the last entry is an error.
func (l *walLog) append(ents []*raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	if len(l.ents) > 0 {
		first, have, last := ents[0].GetIndex(), l.ents[0].GetIndex(), l.ents[len(l.ents)-1].GetIndex()
		switch {
		case first > last+1:
			return fmt.Errorf("entries from %d after %d: a gap", first, last)
		case first > have:
			l.ents = l.ents[:first-have]
		default:
			l.ents = l.ents[:0]
		}
	}
	l.ents = append(l.ents, ents...)
	return nil
}

// live is the log's entries after a snapshot (index, term) stored in bbolt
// (0, 0: none). Entries at or below the snapshot are dropped; those after
// it are kept if they continue it: the log holds the snapshot's entry
// with the snapshot's term, or starts after it (the WAL was rewritten
// from it, or a marker for it was replayed). Otherwise the snapshot came
// from the leader and the crash was between its storing and the marker's,
// and the log is a stale one that raft's restore would drop too.
func (l *walLog) live(index, term uint64) []*raftpb.Entry {
	if len(l.ents) == 0 {
		return nil
	}
	first, last := l.ents[0].GetIndex(), l.ents[len(l.ents)-1].GetIndex()
	switch {
	case last <= index:
		return nil
	case first > index:
		return l.ents
	case l.ents[index-first].GetTerm() != term:
		return nil
	}
	return l.ents[index-first+1:]
}

// walRecordAt decodes the record at off, ok if its header, length and CRC
// are right. The payload aliases b.
func walRecordAt(b []byte, off int) (typ byte, payload []byte, ok bool) {
	if len(b)-off < walHeaderSize {
		return 0, nil, false
	}
	h := b[off : off+walHeaderSize]
	n := int(binary.LittleEndian.Uint32(h[0:4]))
	typ = h[8]
	if typ == 0 || n > walMaxRecord || n > len(b)-off-walHeaderSize {
		return 0, nil, false
	}
	payload = b[off+walHeaderSize : off+walHeaderSize+n]
	if crc32.Update(crc32.Update(0, crc32c, h[8:9]), crc32c, payload) != binary.LittleEndian.Uint32(h[4:8]) {
		return 0, nil, false
	}
	return typ, payload, true
}

// nextWALRecord is the offset of the first valid record at or after from,
// or -1: whether a bad record is the torn last one or corruption. Only
// offsets whose type byte is a record type are tried, found with
// bytes.IndexByte, so that a long run of zeros is skipped quickly. The
// CRCs it computes are bounded (walScanBudget): exhausted says it gave up,
// which the caller takes for corruption (a torn write leaves one record's
// worth after the last good one, not more than that budget).
func nextWALRecord(b []byte, from int) (next int, exhausted bool) {
	var at [walSnapshot + 1]int // per type, the next offset with that type byte; -1: none
	for t := walEntries; t <= walSnapshot; t++ {
		at[t] = -2
	}
	budget := walScanBudget
	for p := from; p+walHeaderSize <= len(b); {
		cand := -1
		for t := walEntries; t <= walSnapshot; t++ {
			if at[t] == -2 || at[t] >= 0 && at[t] < p {
				at[t] = -1
				if i := bytes.IndexByte(b[p+8:], t); i >= 0 {
					at[t] = p + i
				}
			}
			if at[t] >= 0 && (cand < 0 || at[t] < cand) {
				cand = at[t]
			}
		}
		if cand < 0 || cand+walHeaderSize > len(b) {
			return -1, false
		}
		if n := int(binary.LittleEndian.Uint32(b[cand:])); n <= walMaxRecord && n <= len(b)-cand-walHeaderSize {
			if budget -= n; budget < 0 {
				return -1, true
			}
		}
		if _, _, ok := walRecordAt(b, cand); ok {
			return cand, false
		}
		p = cand + 1
	}
	return -1, false
}

// allZero says whether b holds zeros only, comparing 4 KiB at a time so
// that a store's open does not walk its preallocated space byte by byte.
func allZero(b []byte) bool {
	return len(trimZeros(b)) == 0
}

// trimZeros cuts the trailing zeros off b.
func trimZeros(b []byte) []byte {
	var zero [4096]byte
	for len(b) >= len(zero) && bytes.Equal(b[len(b)-len(zero):], zero[:]) {
		b = b[:len(b)-len(zero)]
	}
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// encodeWAL is a whole WAL holding log: what Compact and the migration
// from the bbolt-only layout write.
func encodeWAL(hs *raftpb.HardState, ents []*raftpb.Entry) ([]byte, error) {
	b, err := appendWALEntries(nil, ents)
	if err != nil {
		return nil, err
	}
	if hs != nil {
		return appendWALMessage(b, walHardState, hs)
	}
	return b, nil
}

// writeWALFile replaces dir's WAL with one holding b, so that a crash
// leaves the old file or the new one whole: b goes to a temporary file,
// preallocated and fdatasynced, which is renamed over the WAL. It returns
// the new file's size. The caller fsyncs the directory (syncDir) once it
// writes to the new file, so that the rename survives a crash too.
func writeWALFile(dir string, b []byte) (int64, error) {
	path, tmp := filepath.Join(dir, WALFile), filepath.Join(dir, WALFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	var size int64
	_, err = f.Write(b)
	if err == nil {
		size, err = preallocate(f, int64(len(b)))
	}
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("write %s: %w", path, err)
	}
	return size, nil
}

// preallocate extends f to the next walPrealloc step above used bytes,
// and returns that size.
func preallocate(f *os.File, used int64) (int64, error) {
	size := (used/walPrealloc + 1) * walPrealloc
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		// A file system without fallocate: the WAL works without the
		// preallocation, its fdatasyncs just write the size too.
		if errors.Is(err, unix.EOPNOTSUPP) {
			return size, nil
		}
		return 0, fmt.Errorf("fallocate %s: %w", f.Name(), err)
	}
	return size, nil
}

// syncDir fsyncs a directory, so that a file created or renamed in it
// survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
