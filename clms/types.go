package clms

import (
	"fmt"
	"time"

	"github.com/clusterinfra/ci/engine"
)

// NodeNum is a node's number in the cluster, the same number ICS uses.
type NodeNum = engine.NodeNum

// NodeState is where a node is in its life as a member, after OpenSSI's
// CLMS states. A node moves NEVERUP -> COMINGUP -> UP when it joins; a planned
// leave goes UP -> SHUTDOWN and a failure UP -> GOINGDOWN; both then go
// through KCLEANUP (the survivors' subsystem callbacks run) and UCLEANUP
// (their user-level notifications) to DOWN. A node that comes back after DOWN
// starts again at COMINGUP with a new incarnation.
type NodeState uint8

// The states, in CI's order. The values travel on the wire and are stored in
// the raft log: only append.
const (
	StateNeverUp   NodeState = iota // in the node table, never joined
	StateComingUp                   // joined; NODEUP callbacks running on the members
	StateUp                         // a member
	StateShutdown                   // leaving on purpose (planned shutdown)
	StateGoingDown                  // declared failed; no longer a member from here on
	StateKCleanup                   // survivors run their subsystems' NODEDOWN callbacks
	StateUCleanup                   // survivors' user-level cleanup and notifications
	StateDown                       // gone; may come back only as a new incarnation
)

var stateNames = [...]string{"NEVERUP", "COMINGUP", "UP", "SHUTDOWN", "GOINGDOWN", "KCLEANUP", "UCLEANUP", "DOWN"}

func (s NodeState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("NodeState(%d)", uint8(s))
}

// IsMember reports whether a node in state s is part of the cluster: it may
// serve, own key services and be called. Only UP (and COMINGUP, which is
// joining and already reachable) count; from SHUTDOWN or GOINGDOWN on a node
// is leaving and no one may act as if it were still there.
func (s NodeState) IsMember() bool { return s == StateUp || s == StateComingUp }

// Cause says why a transition happened.
type Cause uint8

// Causes of transitions. Stored in the raft log: only append.
const (
	CauseJoin        Cause = iota // the node asked to join (COMINGUP)
	CauseNodeUpDone               // every member ran its NODEUP callbacks (UP)
	CauseShutdown                 // the node (or an operator) asked to leave
	CauseCrash                    // proof the process is gone: connection refused, new incarnation
	CauseSilence                  // no imalive for longer than the lease (hang, partition)
	CauseRestart                  // the node joined again with a new incarnation
	CauseFenced                   // the node reported it fenced itself (its lease expired)
	CauseCleanupDone              // the survivors finished a cleanup phase
	CauseOperator                 // an operator declared the node down
)

var causeNames = [...]string{"join", "nodeup-done", "shutdown", "crash", "silence", "restart", "fenced", "cleanup-done", "operator"}

func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return fmt.Sprintf("Cause(%d)", uint8(c))
}

// TransitionID numbers transitions cluster-wide, from 1, with no gaps. Every
// node sees the same transition under the same id.
type TransitionID uint64

// Transition is one committed change of one node's state: CI's
// cluster_detailedtransition record.
type Transition struct {
	ID          TransitionID
	Time        time.Time // when the master committed it (wall clock, for people)
	Node        NodeNum
	Incarnation uint64 // the node's incarnation the transition is about
	From, To    NodeState
	Cause       Cause
}

func (t Transition) String() string {
	return fmt.Sprintf("#%d node %d (inc %d) %s -> %s (%s)", t.ID, t.Node, t.Incarnation, t.From, t.To, t.Cause)
}

// NodeInfo is what a joining node tells the master about itself, and what
// clusternode_info returns.
type NodeInfo struct {
	CPUsTotal   uint32
	CPUsOnline  uint32
	MemoryBytes uint64
	// KeyServices the node is able to serve (from its boot configuration).
	KeyServices []string
	// Capabilities are free-form labels (set by clusternode_setinfo too).
	Capabilities []string
}

// Member is one row of the membership: a node's current state as committed.
type Member struct {
	Node        NodeNum
	State       NodeState
	Incarnation uint64
	Info        NodeInfo
	LastChange  TransitionID // the transition that put it in State
	InfoSeq     uint64       // the record that last set Info (its COMINGUP or a setinfo)
}
