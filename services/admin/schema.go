package admin

import (
	"fmt"
	"strconv"
	"time"

	"github.com/clusterinfra/ci/clms"
)

// SchemaVersion names the JSON schema of the /v1 endpoints; every object
// they return carries it in "schema". Adding a field keeps it; renaming,
// removing or changing the meaning of one bumps it (and the path, /v2).
// docs/ADMIN.md documents every field.
const SchemaVersion = "ci.admin/v1"

// Status is /v1/status: this node as it sees itself.
type Status struct {
	Schema         string    `json:"schema"`
	Node           uint32    `json:"node"`
	Cluster        string    `json:"cluster"`
	Incarnation    string    `json:"incarnation"` // 16 hex digits: a 64-bit number JSON cannot carry exactly
	State          string    `json:"state"`       // this node's committed state: NEVERUP ... DOWN
	Master         uint32    `json:"master"`      // the CLMS master as this node knows it; 0 for none
	IsMaster       bool      `json:"is_master"`
	Ready          bool      `json:"ready"`
	NotReady       string    `json:"not_ready,omitempty"` // why not, while not ready
	Fenced         bool      `json:"fenced"`
	LeaseValid     bool      `json:"lease_valid"` // may act as a member now
	RaftTerm       uint64    `json:"raft_term"`
	LastTransition uint64    `json:"last_transition"`
	MembersUp      int       `json:"members_up"`
	Nodes          int       `json:"nodes"` // in the node table
	Started        time.Time `json:"started"`
	Admin          string    `json:"admin"` // where this endpoint listens
	// PID is the process that runs the node, as its machine numbers it
	// (not this client's): 0 when the node does not say.
	PID int `json:"pid"`
	// Seq is this view's change sequence, for a long poll: GET
	// /v1/status?after=SEQ&wait=DUR answers once the view passed SEQ.
	// Absent from a node without one (an older build).
	Seq uint64 `json:"seq,omitempty"`
}

// Member is one row of /v1/members and /v1/node/N.
type Member struct {
	Schema         string   `json:"schema,omitempty"` // only on /v1/node/N
	Node           uint32   `json:"node"`
	State          string   `json:"state"`
	Incarnation    string   `json:"incarnation"` // 16 hex digits; "" before the node ever joined
	Address        string   `json:"address"`     // ICS host:port from the node table
	Admin          string   `json:"admin"`       // admin endpoint from the node table; "" for the default
	MasterEligible bool     `json:"master_eligible"`
	Master         bool     `json:"master"`
	KeyServices    []string `json:"key_services"` // owned now (always [] until key services exist)
	LastChange     uint64   `json:"last_change"`  // the transition that put it in state
	Info           NodeInfo `json:"info"`
}

// NodeInfo is clms.NodeInfo: what the node told the master when it joined.
type NodeInfo struct {
	CPUsTotal    uint32   `json:"cpus_total"`
	CPUsOnline   uint32   `json:"cpus_online"`
	MemoryBytes  uint64   `json:"memory_bytes"`
	KeyServices  []string `json:"key_services"` // it may serve
	Capabilities []string `json:"capabilities"`
}

// Members is /v1/members.
type Members struct {
	Schema         string   `json:"schema"`
	From           uint32   `json:"from"` // the node whose view this is
	Master         uint32   `json:"master"`
	LastTransition uint64   `json:"last_transition"`
	Members        []Member `json:"members"`
}

// Transition is one committed transition.
type Transition struct {
	ID          uint64    `json:"id"`
	Time        time.Time `json:"time"`
	Node        uint32    `json:"node"`
	Incarnation string    `json:"incarnation"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Cause       string    `json:"cause"`
}

// Transitions is /v1/transitions.
type Transitions struct {
	Schema string `json:"schema"`
	Since  uint64 `json:"since"`
	Last   uint64 `json:"last"` // the newest committed id
	// Compacted is true when transitions after since are no longer kept:
	// the list starts at the oldest kept one.
	Compacted   bool         `json:"compacted"`
	More        bool         `json:"more"` // the limit cut the list: ask again with since = the last id
	Transitions []Transition `json:"transitions"`
}

// WatchEvent is one line of /v1/watch. The first line is "hello"; then
// "transition" lines in id order, with "heartbeat" lines while nothing
// happens, so that a client can tell a quiet cluster from a hung node;
// "error" is the last line of a stream that ends on the server's side.
type WatchEvent struct {
	Schema     string      `json:"schema,omitempty"` // on hello
	Event      string      `json:"event"`            // hello, transition, heartbeat, error
	Node       uint32      `json:"node,omitempty"`   // hello: the serving node
	Last       uint64      `json:"last,omitempty"`   // hello, heartbeat: the newest committed id
	Transition *Transition `json:"transition,omitempty"`
	Error      string      `json:"error,omitempty"`
	Code       string      `json:"code,omitempty"`
}

// KeyServices is /v1/keysvc.
type KeyServices struct {
	Schema string `json:"schema"`
	// Available is false while this build has no key services (issue 12):
	// Services is empty then and Reason says why.
	Available bool         `json:"available"`
	Reason    string       `json:"reason,omitempty"`
	Services  []KeyService `json:"services"`
	// Seq is as Status.Seq: the same sequence, for
	// /v1/keysvc?after=SEQ&wait=DUR.
	Seq uint64 `json:"seq,omitempty"`
}

// KeyService is one key service's owner.
type KeyService struct {
	Name     string `json:"name"`
	Critical bool   `json:"critical"`
	Owner    uint32 `json:"owner"` // 0: no owner
	Epoch    uint64 `json:"epoch"` // the fencing token of the current ownership
	Ready    bool   `json:"ready"`
	Phase    string `json:"phase,omitempty"` // unowned, failover (the new owner pulls), ready, handover
}

// Error is the body of every /v1 error reply.
type Error struct {
	Schema string `json:"schema"`
	Error  string `json:"error"`
	Code   string `json:"code"` // unauthorized, forbidden, bad_request, not_found, not_implemented, ...
}

// Accepted is the body of a mutating call's success.
type Accepted struct {
	Schema string `json:"schema"`
	Node   uint32 `json:"node"`
	Action string `json:"action"`
	Detail string `json:"detail,omitempty"`
}

// ShutdownRequest is the optional body of POST /v1/shutdown.
type ShutdownRequest struct {
	// Node, if set, must be this node's number: a guard against a request
	// sent to the wrong endpoint.
	Node   uint32 `json:"node,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// MoveRequest is the body of POST /v1/move.
type MoveRequest struct {
	KeyService string `json:"key_service"`
	Node       uint32 `json:"node"`
}

// SignalRequest is the body of POST /v1/signal: a named signal to a
// handler on node (Handler set), or an OS signal to a process there (PID
// set), as that node's signal forwarding policy allows.
type SignalRequest struct {
	Node    uint32 `json:"node"`
	Handler string `json:"handler,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Signal  string `json:"signal"`        // SIGHUP, HUP or a number for a process; free text for a handler
	Arg     []byte `json:"arg,omitempty"` // base64 in JSON; handler signals only
}

// FormatIncarnation writes an incarnation as the JSON does: 16 hex digits,
// "" for 0 (never joined).
func FormatIncarnation(inc uint64) string {
	if inc == 0 {
		return ""
	}
	return fmt.Sprintf("%016x", inc)
}

// ParseIncarnation reads FormatIncarnation's output.
func ParseIncarnation(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	return strconv.ParseUint(s, 16, 64)
}

func transitionJSON(t clms.Transition) Transition {
	return Transition{
		ID: uint64(t.ID), Time: t.Time.UTC(), Node: uint32(t.Node), Incarnation: FormatIncarnation(t.Incarnation),
		From: t.From.String(), To: t.To.String(), Cause: t.Cause.String(),
	}
}

func nodeInfoJSON(i clms.NodeInfo) NodeInfo {
	return NodeInfo{
		CPUsTotal: i.CPUsTotal, CPUsOnline: i.CPUsOnline, MemoryBytes: i.MemoryBytes,
		KeyServices: nonNil(i.KeyServices), Capabilities: nonNil(i.Capabilities),
	}
}

// nonNil makes an absent list [] in JSON rather than null, so that a
// script can iterate without a check.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
