package clms

import (
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
)

// SendBeforeSave reports whether m may be sent before the HardState and
// Entries of the Ready that carries it are durable: every message but a
// raft MsgAppResp, MsgVoteResp or MsgPreVoteResp, which raft (raft.send)
// keeps for after the write, exactly as its AsyncStorageWrites mode does.
//
// Why the rest is safe (raft thesis 10.2.1, etcd's raft loop): those three
// are the only messages that promise something about this node's disk ("I
// hold entries up to i", "I voted for you"); a leader's MsgApp, a
// candidate's MsgVote, heartbeats and CLMS's own messages promise nothing
// about it. The leader counts its own entries toward a commit, and a
// candidate its own vote toward a win, only through a response raft
// addresses to itself and steps in Advance, after the write. So a leader
// that sends its append and dies before writing it has committed nothing
// with it: a commit still needs a majority of disks
// (TestLeaderCrashWhileSaving). CLMS's messages carry committed records,
// which a majority already holds, or in-memory state (leases, echoes) that
// a restart loses anyway.
func SendBeforeSave(m *Message) bool {
	if m.Type != MsgRaft || m.Raft == nil {
		return true
	}
	switch m.Raft.GetType() {
	case raftpb.MsgAppResp, raftpb.MsgVoteResp, raftpb.MsgPreVoteResp:
		return false
	}
	return true
}

// Ready is what the core asks of its runner after one or more inputs. The
// runner must, in this order:
//  1. send the Messages that SendBeforeSave allows (each to Message.To; a
//     failed send is just lost: the protocol retries),
//  2. write HardState, Entries and Snapshot durably (fsync when MustSync),
//  3. send the other Messages, in order,
//  4. hand Applied to its watchers (the cluster API) and carry out Actions
//     in order,
//  5. call Advance, and only then take the next Ready (whose messages may
//     depend on this one's write).
//
// Sending everything after the write (2, then 1 and 3 together) is also
// correct, only slower: the leader's append would reach its followers one
// fsync later (docs/CLMS.md, "The fsync of each raft round").
//
// The slices belong to the runner once returned.
type Ready struct {
	Messages []Message

	// Raft persistence of a master-eligible node (empty on the others).
	HardState *raftpb.HardState
	Entries   []*raftpb.Entry
	Snapshot  *raftpb.Snapshot
	MustSync  bool
	// Compact is a snapshot the core took of its applied State (a voter,
	// every Compaction.SnapshotEvery entries; nil otherwise). After
	// persisting HardState, Entries and Snapshot, store it and drop the
	// stored entries it covers (Store.Compact); until then the stored log
	// stays whole, which is safe, only longer.
	Compact *raftpb.Snapshot

	// Restored, when set, says the State was replaced by a state image
	// covering records 1..Restored.Seq (a restart from a compacted store, a
	// voter that fell behind the leader's compacted log, a node without a
	// log that fell behind the master's kept records): those records are
	// not in Applied. Rebuild what was built from Applied from it before
	// taking Applied, which continues at Restored.Seq+1.
	Restored *Restored

	// Applied are the records committed and applied since the last Ready,
	// in order: every node sees the same sequence.
	Applied []Record
	Actions []Action
}

// Restored is the replicated state a state image put in place of the
// records up to Seq: a copy, the runner's to keep.
type Restored struct {
	Seq            uint64
	Members        []Member
	LastTransition TransitionID
	// History is the kept transitions, oldest first, ending at
	// LastTransition (it may be empty).
	History []Transition
	Keys    []KeyRecord // by name
}

// ActionKind says what the runner must do.
type ActionKind uint8

const (
	// ActRunNodeUp: run the subsystems' NODEUP callbacks for Node (incarnation
	// Inc) and report with CallbacksDone(Transition, ...).
	ActRunNodeUp ActionKind = iota + 1
	// ActRunNodeDown: run the NODEDOWN callbacks for Node, in band order,
	// and report with CallbacksDone(Transition, ...).
	ActRunNodeDown
	// ActPeerDown: Node's incarnation Inc is no longer a member: fail its
	// calls at once (engine Node.NodeDown) and refuse that incarnation.
	ActPeerDown
	// ActFence: this node must stop acting as a member now (HALT: exit with
	// the fence code; DEBUG: stay up isolated). Reason says why. A fenced
	// core stays fenced; the node may come back only as a new incarnation.
	ActFence
	// ActJoined: this node's incarnation is a member (COMINGUP committed).
	ActJoined
	// ActJoinFailed: no join within JoinTimeout; Err says why. Fatal.
	ActJoinFailed
	// ActLeft: the planned shutdown is committed; the node may exit.
	ActLeft
	// ActMasterChanged: Node is the master now (0: none known), in Term.
	ActMasterChanged
	// ActLease: this node's membership lease became valid (Valid) or ran out.
	ActLease
	// ActLog: something an operator should see (join retries, callbacks
	// that did not report in time, rejected records). Reason says what.
	ActLog

	// Key services (docs/CLMS.md, "Key services"). KeyService and Epoch are
	// set on each. A routine's result is reported with the Core method
	// named; a routine cancelled by ActKeyOwner{Valid: false} is not
	// reported (the core starts it again when the node acts again).

	// ActKeyOwner: this node may act as owner of KeyService in Epoch (Valid),
	// or must stop now (lease lapsed, fenced, leaving, released, or another
	// epoch). Gate every operation of the service on it, stamp them with
	// Epoch, and cancel the routines below when it turns false. Valid again
	// after a HandOff (an aborted move) means serve again.
	ActKeyOwner
	// ActKeyFailover: run the service's Failover(ctx, Epoch) on this node,
	// its new owner; report with KeyFailoverDone.
	ActKeyFailover
	// ActKeyPullData: run PullData(ctx, Epoch) for Node, the owner (which
	// may be this node); report with KeyPullDone(KeyService, Epoch, Node, ...).
	ActKeyPullData
	// ActKeyFailoverData: run FailoverData(ctx, Epoch, Pulled), or, when
	// Handover is set, TakeOver(ctx, Epoch, Pulled[From]) with the previous
	// owner's hand-over data; report with KeyFailoverDataDone.
	ActKeyFailoverData
	// ActKeyHandOff: planned move to Node: stop serving, run HandOff(ctx,
	// Epoch) and report its state with KeyHandOffDone.
	ActKeyHandOff
	// ActFormed: every critical key service has a ready owner: this node is
	// ready (readyz), and on the master the cluster is formed. Once per
	// incarnation.
	ActFormed
)

var actionNames = [...]string{"", "run-nodeup", "run-nodedown", "peer-down", "fence", "joined", "join-failed", "left",
	"master-changed", "lease", "log", "key-owner", "key-failover", "key-pull-data", "key-failover-data", "key-handoff", "formed"}

func (k ActionKind) String() string {
	if int(k) < len(actionNames) {
		return actionNames[k]
	}
	return fmt.Sprintf("ActionKind(%d)", uint8(k))
}

// Action is one thing the runner must do; which fields are set depends on
// Kind.
type Action struct {
	Kind       ActionKind
	Node       NodeNum
	Inc        uint64
	Transition TransitionID
	Term       uint64
	Valid      bool
	Reason     string
	Err        error

	KeyService string
	Epoch      uint64
	Pulled     map[NodeNum][]byte // ActKeyFailoverData: each member's PullData
	Handover   bool               // ActKeyFailoverData: TakeOver, not FailoverData
	From       NodeNum            // ActKeyFailoverData with Handover: the previous owner
}

func (a Action) String() string {
	s := a.Kind.String()
	if a.KeyService != "" {
		s += fmt.Sprintf(" key=%s epoch=%d", a.KeyService, a.Epoch)
	}
	if a.Node != 0 {
		s += fmt.Sprintf(" node=%d inc=%d", a.Node, a.Inc)
	}
	if a.Transition != 0 {
		s += fmt.Sprintf(" t=%d", a.Transition)
	}
	if a.Reason != "" {
		s += " " + a.Reason
	}
	return s
}

// RTTBuckets is the size of Stats.HeartbeatRTT: 64 ticks covers the
// lease of both profiles (30 ticks lan-fast, 60 default).
const RTTBuckets = 64

// Stats are counters and gauges the runner exports as metrics.
type Stats struct {
	MembersByState   [StateDown + 1]int
	Transitions      uint64 // applied
	Suspicions       uint64 // members the master probed after silence or a lost connection
	HeartbeatsSent   uint64
	HeartbeatsMissed uint64 // imalives not answered before the next one was due
	RaftTerm         uint64
	LeaderChanges    uint64
	Snapshots        uint64 // raft snapshots this core took (Ready.Compact)
	// Proposals counts the commands this core proposed to raft, and
	// ProposalBatches the MsgProps that carried them (each appended as one
	// batch and sent in one MsgApp per follower).
	Proposals, ProposalBatches uint64
	// What compaction bounds (docs/CLMS.md, "Log compaction"): entries in
	// the in-memory raft log and the index of its snapshot (voters), and
	// the records and transitions the State keeps.
	RaftLogEntries, SnapshotIndex uint64
	RecordsKept, HistoryKept      uint64
	IsMaster                      bool
	Fenced                        bool
	LeaseValid                    bool

	// HeartbeatRTT counts answered imalives by round trip in whole ticks
	// (bucket i: i ticks; the last bucket: that many or more): how close a
	// loaded node comes to its lease (docs/CLMS.md, "Loaded nodes").
	HeartbeatRTT [RTTBuckets]uint64
	// LeaseLapses counts the times this member's lease ran out (suspended
	// until a master grants one again): a near miss of a NODEDOWN.
	LeaseLapses uint64
	// DownsDeferred counts silences the master did not declare when they
	// reached LeaseTimeout+LeaseMargin, because part of them was its own
	// stall (Core.Late): it declares them later, or hears the member.
	DownsDeferred uint64

	// Key services: each one's committed state as this node applied it,
	// and what this node measured as their owner.
	KeyServices []KeyServiceStats
	// KeyFailovers counts new owners after an owner died (applied records;
	// the same on every node); KeyHandovers planned moves.
	KeyFailovers, KeyHandovers uint64
	// KeyPullFailures counts members left out of a pull this node ran as
	// owner: PullData failed, the member died, or the pull timed out.
	KeyPullFailures uint64
	// KeyPullsPushed counts members' answers this node, as owner, took
	// from their unasked push (sent when they applied its record), so it
	// did not ask them; KeyPushedHeld is how many such answers wait now
	// for a pull not yet started (at most one per member and service).
	KeyPullsPushed uint64
	KeyPushedHeld  int
	// KeyDegraded names critical services without an owner under
	// PanicDegraded: the cluster runs without them.
	KeyDegraded []string
}

// KeyServiceStats is one key service in Stats.
type KeyServiceStats struct {
	KeyRecord
	Critical bool
	Acting   bool // this node acts as its owner now
	// Ticks each phase of the last failover this node ran as owner took:
	// the Failover routine, the pull, FailoverData (or TakeOver), and from
	// reporting ready to the ready record.
	FailoverTicks, PullTicks, DataTicks, ReadyTicks int64
}
