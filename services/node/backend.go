package node

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/clusterapi"
)

// Backend is what the node's cluster API serves: a clusterapi.MemBackend
// fed, in commit order, with the records the CLMS runner applies (each
// joining node's info with its COMINGUP, and clusternode_setinfo's
// records, and the key services' records), and SetNodeInfo committed through the CLMS master.
type Backend struct {
	*clusterapi.MemBackend
	runner *clms.Runner
	log    *slog.Logger
}

var _ clusterapi.Backend = (*Backend)(nil)

// newBackend keeps `retained` transitions (0: MemConfig's default).
func newBackend(nodes []clms.NodeNum, retained int, log *slog.Logger) (*Backend, error) {
	mb, err := clusterapi.NewMemBackend(nodes, clusterapi.MemConfig{MaxRetained: retained})
	if err != nil {
		return nil, err
	}
	return &Backend{MemBackend: mb, log: log}, nil
}

// apply is the runner's OnApplied: it runs on the runner's goroutine, in
// commit order. A transition the view refuses is a broken stream (a bug):
// it is logged and dropped, and every later one will be too, which the
// view's last transition id then shows.
func (b *Backend) apply(recs []clms.Record) {
	ctx := context.Background()
	for _, r := range recs {
		switch r.Kind {
		case clms.RecordKeyService:
			// Every committed owner, epoch and phase change, so that every
			// node's cluster API answers who owns a key service.
			b.SetKeyService(r.Key)
		case clms.RecordNodeInfo:
			_ = b.MemBackend.SetNodeInfo(ctx, r.Transition.Node, r.Info)
		case clms.RecordTransition:
			if r.Transition.To == clms.StateComingUp {
				// Info first, so that a reader who sees the COMINGUP sees its info.
				_ = b.MemBackend.SetNodeInfo(ctx, r.Transition.Node, r.Info)
			}
			if err := b.Append(r.Transition); err != nil {
				b.log.Error("node: the cluster API view refused a committed transition", "transition", r.Transition.String(), "err", err)
			}
		}
	}
}

// SetNodeInfo implements clusterapi.Backend: CI's clusternode_setinfo,
// committed through the CLMS master, returning once applied on this node
// (so this node's cluster API shows it). Only a member may ask
// (clms.ErrNotMember).
func (b *Backend) SetNodeInfo(ctx context.Context, n clms.NodeNum, info clms.NodeInfo) error {
	if _, ok := b.Member(n); !ok {
		return fmt.Errorf("%w: %d", clusterapi.ErrUnknownNode, n)
	}
	return b.runner.SetNodeInfo(ctx, n, info)
}
