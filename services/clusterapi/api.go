package clusterapi

import (
	"context"
	"errors"
	"fmt"

	"github.com/clusterinfra/ci/engine"
)

// The outcomes a caller tells apart with errors.Is. They cross the wire as
// themselves (//icsgen:errors below), each also matching engine.ErrFailed.
var (
	// ErrUnknownNode: the node number is not in the cluster's node table.
	ErrUnknownNode = errors.New("clusterapi: no such node in the node table")
	// ErrNoTransition: the transition asked for does not exist (yet): the
	// next after the last, the previous of the first, an id never used.
	ErrNoTransition = errors.New("clusterapi: no such transition")
	// ErrCompacted: the transitions asked for are older than the oldest
	// the serving node still keeps. A watcher that gets it has missed
	// transitions and must start again from Membership.
	ErrCompacted = errors.New("clusterapi: transition no longer kept")
	// ErrInvalid: an argument that is never valid (an unknown Which, a
	// batch of 0, node info over the limits).
	ErrInvalid = errors.New("clusterapi: invalid argument")
	// ErrBusy: the serving node has as many long polls waiting as it
	// allows; try again later (Watch backs off and does).
	ErrBusy = errors.New("clusterapi: too many waiting watchers")
)

// Which selects a transition for DetailedTransition, after CI's
// cluster_detailedtransition. The values cross the wire: only append.
type Which uint8

const (
	WhichThis     Which = 0 // the transition with the given id
	WhichNext     Which = 1 // the first after the given id
	WhichPrevious Which = 2 // the last before the given id
	WhichFirst    Which = 3 // the oldest kept; the id is ignored
	WhichLast     Which = 4 // the newest; the id is ignored
)

var whichNames = [...]string{"this", "next", "previous", "first", "last"}

func (w Which) String() string {
	if int(w) < len(whichNames) {
		return whichNames[w]
	}
	return fmt.Sprintf("Which(%d)", uint8(w))
}

// WireTransition is clms.Transition as it crosses the wire: the time in
// nanoseconds since the Unix epoch (0 for none), states and cause as their
// numbers. Client converts; callers see clms.Transition.
type WireTransition struct {
	ID          uint64
	UnixNano    int64
	Node        uint32
	Incarnation uint64
	From        uint8
	To          uint8
	Cause       uint8
}

// WireNodeInfo is clms.NodeInfo on the wire.
type WireNodeInfo struct {
	CPUsTotal    uint32
	CPUsOnline   uint32
	MemoryBytes  uint64
	KeyServices  []string
	Capabilities []string
}

// WireMember is clms.Member on the wire.
type WireMember struct {
	Node        uint32
	State       uint8
	Incarnation uint64
	Info        WireNodeInfo
	LastChange  uint64
}

// WireKeyService is one key service's committed state on the wire
// (clms.KeyRecord's public part): the phase as its number (clms.KeyPhase),
// Ready set when that phase is clms.KeyReady. Client converts to KeyService.
type WireKeyService struct {
	Name     string
	Owner    uint32
	OwnerInc uint64
	Epoch    uint64
	Phase    uint8
	Ready    bool
}

//go:generate go run ../../tools/icsgen -i api.go -t API -o api_ics.go --check-decoders

// API is the wire protocol of the cluster API service, CI's cluster_* and
// clusternode_* calls, served on every node on the CLMS channel as its
// subservice 1 (CLMS itself is 0, signal forwarding 2). Server serves it
// from a Backend; Client calls it with clms types; api_ics.go is generated
// from it.
//
// max=64 handles: WaitTransitions holds one while it waits, and
// Config.MaxWaiters (48) keeps 16 for every other call.
//
//icsgen:service name=clusterapi channel=6 subservice=1 version=1 min=2 max=64
//icsgen:errors ErrUnknownNode ErrNoTransition ErrCompacted ErrInvalid ErrBusy
type API interface {
	// ClusterName is CI's cluster_name.
	//
	//icsgen:proc 1
	ClusterName(ctx context.Context) (string, error)

	// NodeNum is the serving node's number: CI's clusternode_num.
	//
	//icsgen:proc 2
	NodeNum(ctx context.Context) (uint32, error)

	// MaxNodes is the highest node number the cluster may have: CI's
	// cluster_maxnodes.
	//
	//icsgen:proc 3
	MaxNodes(ctx context.Context) (uint32, error)

	// Membership returns every node of the node table with its state, and
	// the id of the last transition that view includes: CI's
	// cluster_membership(transid, ...).
	//
	//icsgen:proc 4
	Membership(ctx context.Context) ([]WireMember, uint64, error)

	// NextTransition returns the first transition after id after in which a
	// node became UP or stopped being UP, and whether there is one yet:
	// CI's cluster_transition (simple transitions to or from UP).
	//
	//icsgen:proc 5
	NextTransition(ctx context.Context, after uint64) (WireTransition, bool, error)

	// DetailedTransition returns the transition which selects relative to
	// id: CI's cluster_detailedtransition.
	//
	//icsgen:proc 6
	DetailedTransition(ctx context.Context, which Which, id uint64) (WireTransition, error)

	// NodeInfo returns node's row of the membership: CI's clusternode_info.
	//
	//icsgen:proc 7
	NodeInfo(ctx context.Context, node uint32) (WireMember, error)

	// SetNodeInfo replaces node's info: CI's clusternode_setinfo.
	//
	//icsgen:proc 8
	SetNodeInfo(ctx context.Context, from engine.NodeNum, node uint32, info WireNodeInfo) error

	// NodeAvail reports whether node is UP: CI's clusternode_avail (1 up,
	// 0 not).
	//
	//icsgen:proc 9
	NodeAvail(ctx context.Context, node uint32) (bool, error)

	// WaitTransitions returns the transitions after id after, oldest first,
	// at most max of them; when there are none yet it waits for one up to
	// waitMillis (capped by the server's Config.MaxWait), then returns
	// what there is, possibly nothing. Only at priority 0: a request at
	// priority that would wait is ErrInvalid. A watch is a loop of these
	// (CI's SIGCLUSTER), see Client.Watch.
	//
	//icsgen:proc 10
	WaitTransitions(ctx context.Context, after uint64, max uint32, waitMillis uint32) ([]WireTransition, error)

	// KeyServices returns every key service that has a committed record,
	// by name, with owner, epoch (the fencing token) and phase, and the
	// sequence number of the last key-service change this node applied.
	//
	//icsgen:proc 11
	KeyServices(ctx context.Context) ([]WireKeyService, uint64, error)

	// WaitKeyServices is KeyServices once the sequence passes afterSeq:
	// at once if it has, else after waiting up to waitMillis (capped by
	// Config.MaxWait) for a change; out of time it answers with what there
	// is (the same sequence). The limits of WaitTransitions apply: only at
	// priority 0, ErrBusy past Config.MaxWaiters (shared with it).
	//
	//icsgen:proc 12
	WaitKeyServices(ctx context.Context, afterSeq uint64, waitMillis uint32) ([]WireKeyService, uint64, error)
}
