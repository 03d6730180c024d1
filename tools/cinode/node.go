package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/node"
)

// nodeMember is a services/node.Node as cinode drives it and as the admin
// endpoint sees it: the membership from the node's cluster API backend
// (the view every node serves), the rest from its status.
type nodeMember struct {
	*node.Node
	fatal chan error
}

var _ admin.Source = (*nodeMember)(nil)

func newMember(st *settings, log *slog.Logger, set *metrics.Set) (member, error) {
	n, err := node.New(node.Config{Cluster: st.cfg, Node: st.num, DataDir: st.dataDir, Logger: log, Metrics: set})
	if err != nil {
		return nil, err
	}
	m := &nodeMember{Node: n, fatal: make(chan error, 1)}
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
	}
}

func isFenced(err error) bool { return errors.Is(err, clms.ErrFenced) }

func (m *nodeMember) Fatal() <-chan error { return m.fatal }

// Local implements admin.Source. Ready means: this incarnation joined, is
// UP in the committed membership, holds a valid lease, and neither left
// nor fenced. (Critical key services join this once they exist.)
func (m *nodeMember) Local() admin.Local {
	s := m.Status()
	l := admin.Local{Node: s.Node, Cluster: s.Cluster, Incarnation: s.Incarnation, Master: s.Master, Fenced: s.Fenced,
		LeaseValid: s.LeaseValid, RaftTerm: s.RaftTerm}
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
	default:
		l.Ready = true
	}
	return l
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
