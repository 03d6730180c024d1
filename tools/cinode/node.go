package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/keyseq"
	"github.com/clusterinfra/ci/services/node"
	"github.com/clusterinfra/ci/services/sigfwd"
)

// nodeMember is a services/node.Node as cinode drives it and as the admin
// endpoint sees it: the membership from the node's cluster API backend
// (the view every node serves), the rest from its status.
type nodeMember struct {
	*node.Node
	fatal chan error
	seq   *keyseq.Service // its admin routes: /v1/keyseq, /v1/keyseq/next
	echo  *benchEcho      // what /v1/ping calls
}

var (
	_ admin.Source     = (*nodeMember)(nil)
	_ admin.ViewWaiter = (*nodeMember)(nil)
)

// newMember builds the node runNode drives; a variable so that tests can
// drive runNode with a member of their own.
var newMember = newNodeMember

func newNodeMember(st *settings, log *slog.Logger, set *metrics.Set) (member, error) {
	// The key services this build runs: every node registers the same
	// ones; cluster.toml's [[key_services]] and the nodes' key_services
	// say which node may own them.
	reg := &clms.KeyServices{}
	seq, err := keyseq.Register(reg, keyseq.Config{})
	if err != nil {
		return nil, err
	}
	n, err := node.New(node.Config{Cluster: st.cfg, Node: st.num, DataDir: st.dataDir, Logger: log, Metrics: set, KeyServices: reg,
		SignalPolicy: sigfwd.Policy{AllowSelf: st.allowSelfKill}})
	if err != nil {
		return nil, err
	}
	if err := seq.Attach(n.Engine(), n.Runner()); err != nil {
		_ = n.Close()
		return nil, err
	}
	echo, err := registerBenchEcho(n.Engine())
	if err != nil {
		_ = n.Close()
		return nil, err
	}
	m := &nodeMember{Node: n, fatal: make(chan error, 1), seq: seq, echo: echo}
	go func() {
		<-n.Done()
		if err := n.Err(); err != nil {
			m.fatal <- err
		}
	}()
	return m, nil
}

// withAdmin gives the admin endpoint what the node offers beyond a Source.
func withAdmin(cfg *admin.Config, m member) {
	if nm, ok := m.(*nodeMember); ok {
		cfg.Signaller = nm.Signals()
		cfg.Pinger = nm.echo // /v1/ping: ICS round trips to another member's echo
		cfg.KeyServices = nm
		cfg.Extra = keyseqRoutes(nm.seq, cfg.CallTimeout)
	}
}

func isFenced(err error) bool { return errors.Is(err, clms.ErrFenced) }

func (m *nodeMember) Fatal() <-chan error { return m.fatal }

// Local implements admin.Source. Ready means: this incarnation joined, is
// UP in the committed membership, holds a valid lease, neither left nor
// fenced, and every critical key service has had a ready owner since it
// joined (node.Node.Ready, with the reason when not).
func (m *nodeMember) Local() admin.Local {
	s := m.Status()
	l := admin.Local{Node: s.Node, Cluster: s.Cluster, Incarnation: s.Incarnation, Master: s.Master, Fenced: s.Fenced,
		LeaseValid: s.LeaseValid, RaftTerm: s.RaftTerm, PID: os.Getpid()}
	state := clms.StateNeverUp.String()
	for _, ms := range s.Members {
		if ms.Node == s.Node {
			state = ms.State
		}
	}
	switch {
	case s.Fenced:
		l.NotReady = "fenced: " + s.FenceReason
	case s.Left:
		l.NotReady = "left the cluster (planned shutdown)"
	case !s.Joined:
		l.NotReady = "joining: this incarnation is not a member yet"
	case state != clms.StateUp.String():
		l.NotReady = fmt.Sprintf("node %d is %s, not UP", s.Node, state)
	case !s.LeaseValid:
		l.NotReady = "membership lease not valid: no word from the master"
	case !s.Formed:
		l.NotReady = "not formed: a critical key service has no ready owner yet"
	default:
		l.Ready = true
	}
	return l
}

// KeyServices implements admin.KeyServiceSource from the node's status.
func (m *nodeMember) KeyServices() []admin.KeyService {
	var out []admin.KeyService
	for _, k := range m.Status().KeyServices {
		out = append(out, admin.KeyService{Name: k.Name, Critical: k.Critical, Owner: uint32(k.Owner), Epoch: k.Epoch,
			Ready: k.Phase == clms.KeyReady.String(), Phase: k.Phase})
	}
	return out
}

// Move implements admin.KeyServiceSource: a planned move, returning once
// the new owner is ready here.
func (m *nodeMember) Move(ctx context.Context, name string, to clms.NodeNum) error {
	return m.MoveKeyService(ctx, name, to)
}

// Membership implements admin.Source from the cluster API's view.
func (m *nodeMember) Membership() ([]clms.Member, clms.TransitionID) { return m.Backend().Membership() }

// Transitions implements admin.Source.
func (m *nodeMember) Transitions(after clms.TransitionID, max int) []clms.Transition {
	return m.Backend().Transitions(after, max)
}

// WaitTransition implements admin.Source.
func (m *nodeMember) WaitTransition(ctx context.Context, after clms.TransitionID) error {
	return m.Backend().WaitTransition(ctx, after)
}

// ViewSeq implements admin.ViewWaiter: the runner's view sequence, which
// grows with every change of the master, readiness, the last applied
// transition and the key services (clms.RunnerStatus.View).
func (m *nodeMember) ViewSeq() uint64 { return m.Runner().ViewSeq() }

// WaitView implements admin.ViewWaiter.
func (m *nodeMember) WaitView(ctx context.Context, after uint64) error {
	return m.Runner().WaitView(ctx, after)
}
