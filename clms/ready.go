package clms

import (
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
)

// Ready is what the core asks of its runner after one or more inputs. The
// runner must, in this order:
//  1. write HardState, Entries and Snapshot durably (fsync when MustSync),
//  2. send Messages (each to Message.To; a failed send is just lost: the
//     protocol retries),
//  3. hand Applied to its watchers (the cluster API) and carry out Actions
//     in order,
//  4. call Advance.
//
// The slices belong to the runner once returned.
type Ready struct {
	Messages []Message

	// Raft persistence of a master-eligible node (empty on the others).
	HardState *raftpb.HardState
	Entries   []*raftpb.Entry
	Snapshot  *raftpb.Snapshot
	MustSync  bool

	// Applied are the records committed and applied since the last Ready,
	// in order: every node sees the same sequence.
	Applied []Record
	Actions []Action
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
)

var actionNames = [...]string{"", "run-nodeup", "run-nodedown", "peer-down", "fence", "joined", "join-failed", "left",
	"master-changed", "lease", "log"}

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
}

func (a Action) String() string {
	s := a.Kind.String()
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

// Stats are counters and gauges the runner exports as metrics.
type Stats struct {
	MembersByState   [StateDown + 1]int
	Transitions      uint64 // applied
	Suspicions       uint64 // members the master probed after silence or a lost connection
	HeartbeatsSent   uint64
	HeartbeatsMissed uint64 // imalives not answered before the next one was due
	RaftTerm         uint64
	LeaderChanges    uint64
	IsMaster         bool
	Fenced           bool
	LeaseValid       bool
}
