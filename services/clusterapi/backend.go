package clusterapi

import (
	"context"

	"github.com/clusterinfra/ci/clms"
)

// Backend is what the cluster API serves: one node's view of the committed
// membership. The CLMS runner implements it (it needs to import nothing
// from this package: every type is clms's); MemBackend is a complete one
// that keeps the transition log in memory, for tests and for a runner to
// delegate to.
//
// Every method may be called from many goroutines at once.
type Backend interface {
	// Membership returns every node of the node table, in node-number
	// order, with its committed state, and the id of the last transition
	// applied to that view: a consistent snapshot (CI's cluster_membership).
	Membership() ([]clms.Member, clms.TransitionID)

	// Transitions returns up to max committed transitions with ids above
	// after, oldest first, with consecutive ids. If the log no longer
	// holds after+1 it starts at the oldest it holds (the server reports
	// ErrCompacted); past the newest it returns nothing.
	Transitions(after clms.TransitionID, max int) []clms.Transition

	// WaitTransition returns nil as soon as a transition with an id above
	// after is committed (at once if one is), or ctx.Err() when ctx ends
	// first.
	WaitTransition(ctx context.Context, after clms.TransitionID) error

	// Member returns node n's row, or false if n is not in the node table.
	Member(n clms.NodeNum) (clms.Member, bool)

	// SetNodeInfo replaces the info of node n, which is in the node table
	// (CI's clusternode_setinfo). A runner commits it through the master
	// and returns once it is applied here, or ctx's error.
	SetNodeInfo(ctx context.Context, n clms.NodeNum, info clms.NodeInfo) error

	// KeyServices returns every key service with a committed record, by
	// name, and the sequence number of the last key-service change applied
	// to that view (0 for none): a consistent snapshot. The sequence is
	// this node's own count, growing with every change it applies; it is
	// not comparable between nodes.
	KeyServices() ([]clms.KeyRecord, uint64)

	// WaitKeyServices returns nil as soon as the key-service sequence is
	// above after (at once if it is), or ctx.Err() when ctx ends first.
	WaitKeyServices(ctx context.Context, after uint64) error
}
