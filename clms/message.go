package clms

import (
	"fmt"
	"math"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// ProtocolVersion is the first byte of every encoded Message; bump it on any
// change a peer of the previous version would misread.
const ProtocolVersion = 1

// MsgType says what a Message is. The values travel on the wire: only append.
type MsgType uint8

const (
	msgInvalid MsgType = iota
	// MsgRaft carries one raft message between master-eligible nodes.
	MsgRaft // Raft
	// MsgWhoIsMaster is a coming-up node's probe of a master-eligible node.
	MsgWhoIsMaster // (header only)
	// MsgMasterIs answers a probe, or is the announcement of a new master
	// (Node = master or 0 when unknown, Term = its raft term).
	MsgMasterIs // Node, Term
	// MsgJoin asks the master to admit the sender's incarnation (FromInc).
	// Digest fingerprints the sender's boot configuration (ConfigDigest):
	// the master refuses a join whose digest is not its own.
	MsgJoin // Info, Digest
	// MsgJoinReply says the join was proposed (StatusOK), that the receiver
	// is not the master (Node = hint), that the sender must retry (Reason),
	// or that its incarnation was admitted and is down already (NotMember:
	// it fences).
	MsgJoinReply // Status, Node, Reason
	// MsgImAlive is a member's heartbeat to the master; Seq identifies it
	// for the lease, Applied is the last record the member applied, Status
	// is NoLease when the member holds no lease (OK when it holds one).
	MsgImAlive // Seq, Applied, Status
	// MsgImAliveAck answers a heartbeat: StatusOK grants the lease from the
	// heartbeat's send time, StatusNotMember tells a declared-down node.
	MsgImAliveAck // Seq, Status, Node, Inc (the heartbeat's sender)
	// MsgPing is the master's direct probe of a silent or suspect member:
	// "send me an imalive now". Anyone may ping anyone to test a connection.
	MsgPing // (header only)
	// MsgRecords pushes committed records to a node that has no raft log.
	MsgRecords // Records
	// MsgRecordsAck says which record the receiver applied last.
	MsgRecordsAck // Applied
	// MsgCallbacksDone reports that this node ran its subsystem callbacks
	// for a transition; Failed names the subsystems that failed or timed out.
	MsgCallbacksDone // Transition, Failed
	// MsgCrashProof forwards proof that incarnation Inc of Node is gone.
	MsgCrashProof // Node, Inc
	// MsgLeave asks the master for a planned shutdown of the sender.
	MsgLeave // (header only)
	// MsgSetInfo asks the master to replace Node's info
	// (clusternode_setinfo); Applied is the asker's last applied record, the
	// base below which a newer change makes this request stale.
	MsgSetInfo // Node, Info, Applied
	// MsgKeyPull asks a member for its PullData of KeyService in Epoch (the
	// sender is that epoch's owner); answered with MsgKeyData.
	MsgKeyPull // KeyService, Epoch
	// MsgKeyData answers a pull: Status OK with Data, or StatusRetry when
	// the member's PullData failed (Reason).
	MsgKeyData // KeyService, Epoch, Status, Data, Reason
	// MsgKeyReady tells the master the owner of KeyService in Epoch finished
	// its failover (or took over a hand-over): commit it ready.
	MsgKeyReady // KeyService, Epoch
	// MsgKeyMove asks the master to move KeyService to Node (0: any capable
	// node); Status StatusRetry marks the owner's own request before a
	// planned shutdown (the master assigns it nothing more).
	MsgKeyMove // KeyService, Node, Status
	// MsgKeyReleased: the owner ran HandOff for Epoch and stopped acting
	// (Status OK), or HandOff failed and it keeps serving (StatusRetry).
	MsgKeyReleased // KeyService, Epoch, Status, Reason
	msgTypeEnd
)

var msgNames = [...]string{"invalid", "raft", "whoismaster", "masteris", "join", "joinreply", "imalive", "imaliveack",
	"ping", "records", "recordsack", "callbacksdone", "crashproof", "leave", "setinfo", "keypull", "keydata", "keyready",
	"keymove", "keyreleased"}

func (t MsgType) String() string {
	if int(t) < len(msgNames) {
		return msgNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Status is the outcome carried by replies. Only append.
type Status uint8

const (
	StatusOK        Status = iota // done / granted
	StatusNotMaster               // the receiver is not the master; Node is a hint
	StatusRetry                   // try again later; Reason says why
	StatusNotMember               // the sender's incarnation is not (any longer) a member
	StatusNoLease                 // the master cannot grant leases now (no quorum contact)
	// StatusConfigMismatch refuses a join whose boot configuration (node
	// table, timing, key services) is not the master's; Reason says which
	// digest each side has. The joining node gives up (ErrConfigMismatch).
	StatusConfigMismatch
	statusEnd
)

// Message is what CLMS nodes send each other: a header that every message
// carries and the fields of its type (see MsgType). The header carries the
// sender's incarnation so that a message from a past run is dropped
// (STYLE 15), and the lease bookkeeping between the master and the voters
// (Stamp from the master, Echo back from a voter).
type Message struct {
	Type     MsgType
	From, To NodeNum
	FromInc  uint64 // sender's incarnation
	Term     uint64 // the master's raft term, on messages from or about a master
	Stamp    uint64 // sender's tick at send; a voter echoes the leader's
	Echo     uint64 // highest Stamp this voter accepted from its leader in EchoTerm
	EchoTerm uint64

	Raft       *raftpb.Message
	Seq        uint64
	Applied    uint64
	Node       NodeNum
	Inc        uint64
	Status     Status
	Reason     string
	Info       NodeInfo
	Records    []Record
	Transition TransitionID
	Failed     []string
	KeyService string
	Epoch      uint64
	Data       []byte
	Digest     uint64
}

func (m Message) String() string {
	return fmt.Sprintf("%s %d->%d inc=%d term=%d", m.Type, m.From, m.To, m.FromInc, m.Term)
}

// Field presence bits: the encoding writes a bitmap of the fields that are
// set, then those fields in this order. Only append.
const (
	fFrom = 1 << iota
	fTo
	fFromInc
	fTerm
	fStamp
	fEcho
	fEchoTerm
	fRaft
	fSeq
	fApplied
	fNode
	fInc
	fStatus
	fReason
	fInfo
	fRecords
	fTransition
	fFailed
	fKeyService
	fEpoch
	fData
	fDigest
	fEnd
)

func (i *NodeInfo) isZero() bool {
	return i.CPUsTotal == 0 && i.CPUsOnline == 0 && i.MemoryBytes == 0 && len(i.KeyServices) == 0 && len(i.Capabilities) == 0
}

// AppendEncode appends m's encoding to b. It fails only if the raft message
// cannot be marshalled.
func (m *Message) AppendEncode(b []byte) ([]byte, error) {
	var raw []byte
	if m.Raft != nil {
		var err error
		if raw, err = proto.Marshal(m.Raft); err != nil {
			return b, fmt.Errorf("clms: encode raft message: %w", err)
		}
	}
	var bits uint64
	set := func(ok bool, bit uint64) {
		if ok {
			bits |= bit
		}
	}
	set(m.From != 0, fFrom)
	set(m.To != 0, fTo)
	set(m.FromInc != 0, fFromInc)
	set(m.Term != 0, fTerm)
	set(m.Stamp != 0, fStamp)
	set(m.Echo != 0, fEcho)
	set(m.EchoTerm != 0, fEchoTerm)
	set(m.Raft != nil, fRaft)
	set(m.Seq != 0, fSeq)
	set(m.Applied != 0, fApplied)
	set(m.Node != 0, fNode)
	set(m.Inc != 0, fInc)
	set(m.Status != 0, fStatus)
	set(m.Reason != "", fReason)
	set(!m.Info.isZero(), fInfo)
	set(len(m.Records) != 0, fRecords)
	set(m.Transition != 0, fTransition)
	set(len(m.Failed) != 0, fFailed)
	set(m.KeyService != "", fKeyService)
	set(m.Epoch != 0, fEpoch)
	set(len(m.Data) != 0, fData)
	set(m.Digest != 0, fDigest)

	e := encoder{b: append(b, ProtocolVersion, byte(m.Type))}
	e.uvarint(bits)
	for _, f := range []struct {
		bit uint64
		v   uint64
	}{{fFrom, uint64(m.From)}, {fTo, uint64(m.To)}, {fFromInc, m.FromInc}, {fTerm, m.Term}, {fStamp, m.Stamp},
		{fEcho, m.Echo}, {fEchoTerm, m.EchoTerm}} {
		if bits&f.bit != 0 {
			e.uvarint(f.v)
		}
	}
	if bits&fRaft != 0 {
		e.bytes(raw)
	}
	for _, f := range []struct {
		bit uint64
		v   uint64
	}{{fSeq, m.Seq}, {fApplied, m.Applied}, {fNode, uint64(m.Node)}, {fInc, m.Inc}, {fStatus, uint64(m.Status)}} {
		if bits&f.bit != 0 {
			e.uvarint(f.v)
		}
	}
	if bits&fReason != 0 {
		e.str(m.Reason)
	}
	if bits&fInfo != 0 {
		e.info(&m.Info)
	}
	if bits&fRecords != 0 {
		e.uvarint(uint64(len(m.Records)))
		for i := range m.Records {
			e.record(&m.Records[i])
		}
	}
	if bits&fTransition != 0 {
		e.uvarint(uint64(m.Transition))
	}
	if bits&fFailed != 0 {
		e.strs(m.Failed)
	}
	if bits&fKeyService != 0 {
		e.str(m.KeyService)
	}
	if bits&fEpoch != 0 {
		e.uvarint(m.Epoch)
	}
	if bits&fData != 0 {
		e.bytes(m.Data)
	}
	if bits&fDigest != 0 {
		e.uvarint(m.Digest)
	}
	return e.b, nil
}

// DecodeMessage decodes one message. Every length is checked against the
// package's bounds before anything is allocated; the result does not retain b.
func DecodeMessage(b []byte) (Message, error) {
	var m Message
	if len(b) < 2 {
		return m, fmt.Errorf("%w: short message", ErrDecode)
	}
	if b[0] != ProtocolVersion {
		return m, fmt.Errorf("%w: protocol version %d, want %d", ErrDecode, b[0], ProtocolVersion)
	}
	m.Type = MsgType(b[1])
	if m.Type == msgInvalid || m.Type >= msgTypeEnd {
		return m, fmt.Errorf("%w: message type %d", ErrDecode, b[1])
	}
	d := decoder{b: b[2:]}
	bits := d.uvarint()
	if bits >= fEnd {
		return m, fmt.Errorf("%w: unknown fields %#x", ErrDecode, bits)
	}
	get := func(bit uint64) uint64 {
		if bits&bit == 0 {
			return 0
		}
		return d.uvarint()
	}
	getNode := func(bit uint64) NodeNum {
		if bits&bit == 0 {
			return 0
		}
		return NodeNum(d.small(math.MaxUint32, "node"))
	}
	m.From = getNode(fFrom)
	m.To = getNode(fTo)
	m.FromInc = get(fFromInc)
	m.Term = get(fTerm)
	m.Stamp = get(fStamp)
	m.Echo = get(fEcho)
	m.EchoTerm = get(fEchoTerm)
	if bits&fRaft != 0 {
		raw := d.bytes(maxRaftBytes)
		if d.err == nil {
			m.Raft = &raftpb.Message{}
			if err := proto.Unmarshal(raw, m.Raft); err != nil {
				return m, fmt.Errorf("%w: raft message: %v", ErrDecode, err)
			}
		}
	}
	m.Seq = get(fSeq)
	m.Applied = get(fApplied)
	m.Node = getNode(fNode)
	m.Inc = get(fInc)
	if bits&fStatus != 0 {
		m.Status = Status(d.small(uint64(statusEnd-1), "status"))
	}
	if bits&fReason != 0 {
		m.Reason = d.str()
	}
	if bits&fInfo != 0 {
		m.Info = d.info()
	}
	if bits&fRecords != 0 {
		n := d.uvarint()
		// A record takes at least 3 bytes; check against what is left before
		// allocating.
		if n > maxRecords || n > uint64(len(d.b)) {
			d.fail("too many records")
		} else {
			m.Records = make([]Record, 0, n)
			for i := uint64(0); i < n && d.err == nil; i++ {
				m.Records = append(m.Records, d.record())
			}
		}
	}
	if bits&fTransition != 0 {
		m.Transition = TransitionID(d.uvarint())
	}
	if bits&fFailed != 0 {
		m.Failed = d.strs()
	}
	if bits&fKeyService != 0 {
		m.KeyService = d.str()
	}
	m.Epoch = get(fEpoch)
	if bits&fData != 0 {
		if p := d.bytes(maxKeyData); d.err == nil {
			m.Data = append([]byte(nil), p...) // the result does not retain b
		}
	}
	m.Digest = get(fDigest)
	return m, d.end()
}
