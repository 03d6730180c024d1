package clms

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
)

// A state image is the State encoded whole: what a raft snapshot of the
// CLMS log carries (raftpb.Snapshot.Data), and what the master pushes to a
// node without a raft log whose next record it no longer keeps
// (MsgRecords with Data). It replaces every record up to its LastSeq.
//
// Layout (unsigned varints unless said):
//
//	version (1 byte, imageVersion)
//	lastSeq                      records applied
//	nodes: count, then per node in increasing order:
//	    num, state, incarnation, info, lastChange, infoSeq,
//	    hasLast (0/1) [, last transition: the one that set lastChange]
//	keys: count, then keyRecords in name order
//	history: histBase (id of the transition before the first), count,
//	    transitions with ids histBase+1, histBase+2, ...
const imageVersion = 1

// Bounds of decodeImage, checked before allocating: far above an honest
// image (the history window is at most maxHistoryKeep).
const (
	maxImageNodes = 1 << 16
	maxImageKeys  = 1 << 10
)

// encodeImage returns s's image.
func (s *State) encodeImage() []byte {
	e := encoder{b: []byte{imageVersion}}
	e.uvarint(s.LastSeq())
	e.uvarint(uint64(len(s.nodes)))
	for _, n := range s.nodes {
		m := s.members[n]
		e.uvarint(uint64(n))
		e.uvarint(uint64(m.State))
		e.uvarint(m.Incarnation)
		e.info(&m.Info)
		e.uvarint(uint64(m.LastChange))
		e.uvarint(m.InfoSeq)
		if t, ok := s.last[n]; ok {
			e.uvarint(1)
			e.transition(&t)
		} else {
			e.uvarint(0)
		}
	}
	e.uvarint(uint64(len(s.keys)))
	for _, name := range slices.Sorted(maps.Keys(s.keys)) {
		e.keyRecord(s.keys[name])
	}
	e.uvarint(uint64(s.histBase))
	e.uvarint(uint64(len(s.history)))
	for i := range s.history {
		e.transition(&s.history[i])
	}
	return e.b
}

// decodeImage decodes an image for a State that keeps keep records. It
// checks the image is consistent (nodes in order, the history's ids
// consecutive and ending at every member's last change), not that it
// follows from any log: the caller checks it is of its node table.
func decodeImage(b []byte, keep int) (*State, error) {
	if len(b) == 0 || b[0] != imageVersion {
		return nil, fmt.Errorf("%w: state image version", ErrDecode)
	}
	d := decoder{b: b[1:]}
	lastSeq := d.uvarint()
	n := d.uvarint()
	if d.err == nil && (n > maxImageNodes || n > uint64(len(d.b))) {
		d.fail("image node count")
	}
	nodes := make([]NodeNum, 0, min(n, maxImageNodes))
	members := map[NodeNum]*Member{}
	last := map[NodeNum]Transition{}
	for i := uint64(0); i < n && d.err == nil; i++ {
		m := &Member{Node: NodeNum(d.small(1<<32-1, "node"))}
		m.State = NodeState(d.small(uint64(StateDown), "state"))
		m.Incarnation = d.uvarint()
		m.Info = d.info()
		m.LastChange = TransitionID(d.uvarint())
		m.InfoSeq = d.uvarint()
		switch d.small(1, "image last flag") {
		case 1:
			t := d.transition()
			if t.ID != m.LastChange || t.Node != m.Node || t.To != m.State || t.Incarnation != m.Incarnation {
				d.fail("image member's last transition")
			}
			last[m.Node] = t
		case 0:
			if m.LastChange != 0 || m.State != StateNeverUp {
				d.fail("image member without its last transition")
			}
		}
		if m.Node == 0 || (len(nodes) > 0 && m.Node <= nodes[len(nodes)-1]) || m.InfoSeq > lastSeq {
			d.fail("image node order")
		}
		nodes = append(nodes, m.Node)
		members[m.Node] = m
	}
	nk := d.uvarint()
	if d.err == nil && (nk > maxImageKeys || nk > uint64(len(d.b))) {
		d.fail("image key count")
	}
	keys := map[string]*KeyRecord{}
	for i := uint64(0); i < nk && d.err == nil; i++ {
		k := d.keyRecord()
		if _, dup := keys[k.Name]; dup || k.Name == "" {
			d.fail("image key service name")
		}
		keys[k.Name] = &k
	}
	histBase := TransitionID(d.uvarint())
	nh := d.uvarint()
	// A transition is at least 7 bytes.
	if d.err == nil && (nh > maxHistoryKeep*2 || nh*7 > uint64(len(d.b))) {
		d.fail("image history length")
	}
	history := make([]Transition, 0, min(nh, maxHistoryKeep*2))
	for i := uint64(0); i < nh && d.err == nil; i++ {
		t := d.transition()
		if t.ID != histBase+TransitionID(i)+1 {
			d.fail("image history ids")
		}
		history = append(history, t)
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	lastT := histBase + TransitionID(len(history))
	if over := len(history) - keep; keep > 0 && over > 0 {
		history = slices.Clone(history[over:])
		histBase += TransitionID(over)
	}
	for _, t := range last {
		if t.ID > lastT || uint64(t.ID) > lastSeq {
			return nil, fmt.Errorf("%w: image member's last change %d after its last transition %d", ErrDecode, t.ID, lastT)
		}
	}
	s := &State{nodes: nodes, members: members, last: last, keys: keys, keep: keep,
		recBase: lastSeq, history: history, histBase: histBase}
	return s, nil
}

// Compaction bounds what a core keeps (docs/CLMS.md, "Log compaction").
// A zero field takes its default (DefaultCompaction).
type Compaction struct {
	// SnapshotEvery: a voter snapshots its State into its raft storage and
	// compacts the log every this many applied entries.
	SnapshotEvery uint64
	// LogMargin is how many entries before the snapshot the in-memory log
	// keeps, so a follower a little behind catches up from the log rather
	// than by a snapshot.
	LogMargin uint64
	// HistoryKeep is how many records and how many transitions the State
	// keeps (State.Records, State.History, snapshots). A node without a
	// raft log whose next record the master no longer keeps receives the
	// whole State instead.
	HistoryKeep int
}

// maxHistoryKeep bounds HistoryKeep: a state image of that many
// transitions (~30 bytes each) stays well under the 4 MiB a MsgRecords may
// carry.
const maxHistoryKeep = 1 << 15

// maxImageBytes bounds a state image of a cluster of n nodes with typical
// node info: 40 bytes a kept transition (its largest encoding) and 1 KiB a
// node (its row, last transition and info), plus 64 KiB of key services.
// The runner checks it against the engine's MaxPayload, which a raft
// snapshot or a pushed image must fit in.
func (c Compaction) maxImageBytes(n int) int { return c.HistoryKeep*40 + n*1024 + 64<<10 }

// DefaultCompaction returns the defaults, each with its reason.
func DefaultCompaction() Compaction {
	return Compaction{
		SnapshotEvery: 4096, // ~600 KB of raft log (~150 bytes an entry): a restart replays at most that
		LogMargin:     1024, // a follower that missed a few seconds of a crash loop catches up from the log
		HistoryKeep:   4096, // ~1 MB in every core; the cluster API keeps its own, longer history
	}
}

// Validate fills zero fields with their defaults and rejects nonsense.
func (c *Compaction) Validate() error {
	d := DefaultCompaction()
	c.SnapshotEvery = cmp.Or(c.SnapshotEvery, d.SnapshotEvery)
	c.LogMargin = cmp.Or(c.LogMargin, d.LogMargin)
	c.HistoryKeep = cmp.Or(c.HistoryKeep, d.HistoryKeep)
	switch {
	case c.SnapshotEvery < 8:
		return fmt.Errorf("snapshot_every (Compaction.SnapshotEvery) %d is below 8 entries: a snapshot every few entries only costs", c.SnapshotEvery)
	case c.LogMargin > 1<<20:
		return fmt.Errorf("log_margin (Compaction.LogMargin) %d is above %d entries", c.LogMargin, 1<<20)
	case c.HistoryKeep < 16 || c.HistoryKeep > maxHistoryKeep:
		return fmt.Errorf("history_keep (Compaction.HistoryKeep) %d is outside 16..%d records", c.HistoryKeep, maxHistoryKeep)
	}
	return nil
}

// sameNodes reports whether s and o have the same node table.
func (s *State) sameNodes(o *State) bool { return slices.Equal(s.nodes, o.nodes) }
