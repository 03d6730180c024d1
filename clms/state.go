package clms

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// RecordKind says what a Record changes. Stored and sent: only append.
type RecordKind uint8

const (
	recordInvalid RecordKind = iota
	// RecordTransition is one membership transition (Transition, and Info
	// when the node comes up).
	RecordTransition
	// RecordNodeInfo replaces a node's info (clusternode_setinfo) without
	// a transition: Transition.Node (and Time) and Info are set.
	RecordNodeInfo
	// RecordKeyService is a key service's new state (owner, epoch, phase):
	// Key is set, and Transition.Time (docs/CLMS.md, "Key services").
	RecordKeyService
	recordKindEnd
)

// Record is one committed change of the replicated state, numbered 1, 2, 3,
// ... (Seq) in the same order on every node. Voters produce records by
// applying the raft log; nodes without a log receive them from the master.
type Record struct {
	Seq        uint64
	Kind       RecordKind
	Transition Transition
	Info       NodeInfo  // the node's info, on transitions to COMINGUP
	Key        KeyRecord // RecordKeyService only
}

func (e *encoder) record(r *Record) {
	e.uvarint(r.Seq)
	e.uvarint(uint64(r.Kind))
	e.transition(&r.Transition)
	e.info(&r.Info)
	if r.Kind == RecordKeyService {
		e.keyRecord(&r.Key)
	}
}

func (d *decoder) record() Record {
	var r Record
	r.Seq = d.uvarint()
	r.Kind = RecordKind(d.small(uint64(recordKindEnd-1), "record kind"))
	if r.Kind == recordInvalid {
		d.fail("record kind")
	}
	r.Transition = d.transition()
	r.Info = d.info()
	if r.Kind == RecordKeyService {
		r.Key = d.keyRecord()
	}
	return r
}

// command is what the master proposes to the raft log: a compare-and-set on
// one node's state. It becomes a record only if, when applied, the node is
// still in From with the same incarnation (a join may bring a newer one), so
// duplicated or stale proposals (a retry, a deposed master's) apply as
// no-ops on every voter alike.
type command struct {
	Kind RecordKind
	T    Transition // ID is assigned when applied; Time set by the proposer
	Info NodeInfo
	// InfoBase (RecordNodeInfo) is the record the requester had applied when
	// it asked: the change applies only if the node's info was not set after
	// that, so a late copy of an older request cannot undo a newer one (the
	// requester retries with a newer base until its info is in).
	InfoBase uint64
	// RecordKeyService: the service's new state, and what its state must
	// be when the command is applied.
	Key     KeyRecord
	KeyFrom keyCAS
}

func (c *command) encode() []byte {
	e := encoder{}
	e.uvarint(uint64(c.Kind))
	e.transition(&c.T)
	e.info(&c.Info)
	if c.Kind == RecordNodeInfo {
		e.uvarint(c.InfoBase)
	}
	if c.Kind == RecordKeyService {
		e.keyRecord(&c.Key)
		e.uvarint(c.KeyFrom.Epoch)
		e.uvarint(uint64(c.KeyFrom.Owner))
		e.uvarint(uint64(c.KeyFrom.Phase))
	}
	return e.b
}

func decodeCommand(b []byte) (command, error) {
	d := decoder{b: b}
	var c command
	c.Kind = RecordKind(d.small(uint64(recordKindEnd-1), "command kind"))
	c.T = d.transition()
	c.Info = d.info()
	if c.Kind == RecordNodeInfo {
		c.InfoBase = d.uvarint()
	}
	if c.Kind == RecordKeyService {
		c.Key = d.keyRecord()
		c.KeyFrom.Epoch = d.uvarint()
		c.KeyFrom.Owner = NodeNum(d.small(1<<32-1, "node"))
		c.KeyFrom.Phase = KeyPhase(d.small(uint64(keyPhaseEnd-1), "key phase"))
	}
	if d.err == nil && c.Kind == recordInvalid {
		d.fail("command kind")
	}
	return c, d.end()
}

// legal lists the transitions CLMS makes. Anything else in a command is
// dropped when applied.
var legal = map[[2]NodeState]bool{
	{StateNeverUp, StateComingUp}:   true,
	{StateDown, StateComingUp}:      true,
	{StateComingUp, StateUp}:        true,
	{StateComingUp, StateGoingDown}: true,
	{StateComingUp, StateShutdown}:  true,
	{StateUp, StateShutdown}:        true,
	{StateUp, StateGoingDown}:       true,
	{StateShutdown, StateKCleanup}:  true,
	{StateGoingDown, StateKCleanup}: true,
	{StateKCleanup, StateUCleanup}:  true,
	{StateUCleanup, StateDown}:      true,
}

// errRecord reports a record that does not follow the state (a gap, a
// duplicate, an illegal transition): the stream is broken, never applied.
var errRecord = errors.New("clms: record does not follow the replicated state")

// State is the replicated state machine: every member's state, the key
// services, and a window of the latest records and transitions. Each node
// holds one; the same records in the same order give the same State
// everywhere (the windows may differ in length: each node keeps its own
// Compaction.HistoryKeep).
type State struct {
	nodes   []NodeNum // the node table, sorted
	members map[NodeNum]*Member
	last    map[NodeNum]Transition // each member's last transition (Member.LastChange)
	keys    map[string]*KeyRecord  // key services by name
	// keep bounds the windows: records holds the last records (seq
	// recBase+1 on), history the last transitions (id histBase+1 on).
	// Each is cut back to keep once it grows a quarter past it.
	keep     int
	records  []Record
	recBase  uint64
	history  []Transition
	histBase TransitionID
}

func newState(nodes []NodeNum, keep int) *State {
	s := &State{nodes: slices.Sorted(slices.Values(nodes)), members: make(map[NodeNum]*Member, len(nodes)),
		last: map[NodeNum]Transition{}, keys: map[string]*KeyRecord{}, keep: keep}
	for _, n := range s.nodes {
		s.members[n] = &Member{Node: n, State: StateNeverUp}
	}
	return s
}

// LastSeq is the number of records applied.
func (s *State) LastSeq() uint64 { return s.recBase + uint64(len(s.records)) }

// FirstSeq is the seq of the oldest record kept (LastSeq()+1 when none is).
func (s *State) FirstSeq() uint64 { return s.recBase + 1 }

// LastTransition is the id of the last transition applied (0 before any).
func (s *State) LastTransition() TransitionID { return s.histBase + TransitionID(len(s.history)) }

// FirstTransition is the id of the oldest transition kept
// (LastTransition()+1 when none is).
func (s *State) FirstTransition() TransitionID { return s.histBase + 1 }

// Member returns node n's committed state.
func (s *State) Member(n NodeNum) (Member, bool) {
	m, ok := s.members[n]
	if !ok {
		return Member{}, false
	}
	return *m, true
}

// Members returns every node of the table in node order.
func (s *State) Members() []Member {
	out := make([]Member, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, *s.members[n])
	}
	return out
}

// History returns the kept transitions from id `after`+1 on: from the
// oldest kept (FirstTransition) if `after`+1 is no longer kept. The slice
// is shared with the State until the next apply: do not modify it.
func (s *State) History(after TransitionID) []Transition {
	after = max(after, s.histBase)
	if after >= s.LastTransition() {
		return nil
	}
	i := int(after - s.histBase)
	return s.history[i:len(s.history):len(s.history)]
}

// Transition returns transition id if it is kept, or the last transition of
// the node it moved if that is the one (a member's LastChange is always
// found).
func (s *State) Transition(id TransitionID) (Transition, bool) {
	if id > s.histBase && id <= s.LastTransition() {
		return s.history[id-s.histBase-1], true
	}
	for _, t := range s.last {
		if t.ID == id && id != 0 {
			return t, true
		}
	}
	return Transition{}, false
}

// Records returns the kept records after seq, or nil if record seq+1 is no
// longer kept (seq < FirstSeq()-1) or none is after it; shared like History.
func (s *State) Records(after uint64) []Record {
	if after < s.recBase || after >= s.LastSeq() {
		return nil
	}
	i := int(after - s.recBase)
	return s.records[i:len(s.records):len(s.records)]
}

// appendRecord adds r (and its transition) to the windows, cutting them
// back to keep when they grew a quarter past it. The cut copies, so the
// dropped records' memory goes too, and slices handed out before stay valid.
func (s *State) appendRecord(r Record) {
	s.records = append(s.records, r)
	if r.Kind == RecordTransition {
		s.history = append(s.history, r.Transition)
		s.last[r.Transition.Node] = r.Transition
	}
	if s.keep <= 0 {
		return
	}
	if over := len(s.records) - s.keep; over > s.keep/4 {
		s.records = append([]Record(nil), s.records[over:]...)
		s.recBase += uint64(over)
	}
	if over := len(s.history) - s.keep; over > s.keep/4 {
		s.history = append([]Transition(nil), s.history[over:]...)
		s.histBase += TransitionID(over)
	}
}

// decide turns a command into the record it makes, or reports false if it
// does not apply to the current state.
func (s *State) decide(c command) (Record, bool) {
	if c.Kind == RecordKeyService {
		return s.decideKey(c)
	}
	m, ok := s.members[c.T.Node]
	if ok && c.Kind == RecordNodeInfo {
		if m.InfoSeq > c.InfoBase {
			return Record{}, false // set since the requester asked: a stale request
		}
		return Record{Seq: s.LastSeq() + 1, Kind: RecordNodeInfo, Transition: Transition{Node: c.T.Node, Time: c.T.Time}, Info: c.Info}, true
	}
	if !ok || c.Kind != RecordTransition || c.T.From != m.State || !legal[[2]NodeState{c.T.From, c.T.To}] {
		return Record{}, false
	}
	if c.T.To == StateComingUp {
		if c.T.Incarnation <= m.Incarnation {
			return Record{}, false // an incarnation may join once
		}
	} else if c.T.Incarnation != m.Incarnation {
		return Record{}, false
	}
	t := c.T
	t.ID = s.LastTransition() + 1
	r := Record{Seq: s.LastSeq() + 1, Kind: RecordTransition, Transition: t}
	if t.To == StateComingUp {
		r.Info = c.Info
	}
	return r, true
}

// apply adds the next record. It checks the record against the state, so a
// broken stream is refused rather than applied.
func (s *State) apply(r Record) error {
	if r.Seq != s.LastSeq()+1 {
		return fmt.Errorf("%w: record %d after %d", errRecord, r.Seq, s.LastSeq())
	}
	if r.Kind == RecordKeyService {
		return s.applyKey(r)
	}
	t := r.Transition
	if r.Kind == RecordNodeInfo {
		m, ok := s.members[t.Node]
		if !ok || t.ID != 0 {
			return fmt.Errorf("%w: info of node %d", errRecord, t.Node)
		}
		m.Info, m.InfoSeq = r.Info, r.Seq
		s.appendRecord(r)
		return nil
	}
	if t.ID != s.LastTransition()+1 {
		return fmt.Errorf("%w: transition %d after %d", errRecord, t.ID, s.LastTransition())
	}
	check, ok := s.decide(command{Kind: r.Kind, T: t, Info: r.Info})
	if !ok || check.Seq != r.Seq {
		return fmt.Errorf("%w: %v", errRecord, t)
	}
	m := s.members[t.Node]
	m.State, m.Incarnation, m.LastChange = t.To, t.Incarnation, t.ID
	if t.To == StateComingUp {
		m.Info, m.InfoSeq = r.Info, r.Seq
	}
	s.appendRecord(r)
	return nil
}

// countByState fills n with the number of nodes in each state.
func (s *State) countByState(n *[StateDown + 1]int) {
	*n = [StateDown + 1]int{}
	for _, m := range s.members {
		n[m.State]++
	}
}

// wallNanos is the proposer's wall clock for a transition's Time field,
// which is for people only; zero when the runner gave no clock.
func wallTime(now func() time.Time) time.Time {
	if now == nil {
		return time.Time{}
	}
	t := now()
	if t.UnixNano() <= 0 || t.UnixNano() == math.MaxInt64 {
		return time.Time{}
	}
	return t.UTC().Round(0)
}
