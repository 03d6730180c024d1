// Package admintest is an admin.Source over clusterapi.MemBackend: a real
// committed membership and transition log, fed by the test, for testing the
// admin endpoint and the cluster command without starting a cluster.
package admintest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/clusterapi"
)

// Source is node self's view: the membership a MemBackend holds, and a
// master the test sets. It is ready exactly when self is UP in that
// membership, as a node is once it has joined.
type Source struct {
	*clusterapi.MemBackend
	self    clms.NodeNum
	cluster string

	mu     sync.Mutex
	master clms.NodeNum // guarded by mu
	incs   map[clms.NodeNum]uint64
	seq    uint64        // the view sequence; guarded by mu
	seqCh  chan struct{} // closed and replaced when seq grows; guarded by mu
	wait   int           // WaitView calls waiting now; guarded by mu
}

var (
	_ admin.Source     = (*Source)(nil)
	_ admin.ViewWaiter = (*Source)(nil)
)

// New returns node self's source for a cluster whose table is nodes, all
// NEVERUP.
func New(cluster string, self clms.NodeNum, nodes []clms.NodeNum) (*Source, error) {
	b, err := clusterapi.NewMemBackend(nodes, clusterapi.MemConfig{})
	if err != nil {
		return nil, err
	}
	return NewWith(cluster, self, b), nil
}

// NewWith is New over a backend the caller made (a small MaxRetained).
func NewWith(cluster string, self clms.NodeNum, b *clusterapi.MemBackend) *Source {
	return &Source{MemBackend: b, self: self, cluster: cluster, incs: map[clms.NodeNum]uint64{}, seq: 1, seqCh: make(chan struct{})}
}

// Touch says the view changed (SetMaster and Move do): the view sequence
// grows and the long polls waiting on it return. A test calls it after
// changing what its Config.KeyServices returns, or after appending to the
// backend directly.
func (s *Source) Touch() {
	s.mu.Lock()
	s.seq++
	close(s.seqCh)
	s.seqCh = make(chan struct{})
	s.mu.Unlock()
}

// ViewSeq implements admin.ViewWaiter.
func (s *Source) ViewSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// Waiting is how many WaitView calls wait now: a test's proof that a long
// poll is held on the server.
func (s *Source) Waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wait
}

// WaitView implements admin.ViewWaiter.
func (s *Source) WaitView(ctx context.Context, after uint64) error {
	s.mu.Lock()
	seq, ch := s.seq, s.seqCh
	if seq <= after {
		s.wait++
	}
	s.mu.Unlock()
	if seq > after {
		return nil
	}
	defer func() {
		s.mu.Lock()
		s.wait--
		s.mu.Unlock()
	}()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetMaster says which node is the CLMS master (0: none).
func (s *Source) SetMaster(n clms.NodeNum) {
	s.mu.Lock()
	s.master = n
	s.mu.Unlock()
	s.Touch()
}

// Local implements admin.Source.
func (s *Source) Local() admin.Local {
	s.mu.Lock()
	master := s.master
	s.mu.Unlock()
	m, _ := s.Member(s.self)
	l := admin.Local{Node: s.self, Cluster: s.cluster, Incarnation: m.Incarnation, Master: master, Ready: m.State == clms.StateUp,
		LeaseValid: m.State.IsMember()}
	if !l.Ready {
		l.NotReady = fmt.Sprintf("node %d is %s, not UP", s.self, m.State)
	}
	return l
}

// Move commits the transitions that take node n from its state to each of
// to in turn, with cause, as CLMS would commit them; a move from NEVERUP or
// DOWN to COMINGUP starts a new incarnation.
func (s *Source) Move(n clms.NodeNum, cause clms.Cause, to ...clms.NodeState) error {
	for _, st := range to {
		m, ok := s.Member(n)
		if !ok {
			return fmt.Errorf("admintest: node %d not in the table", n)
		}
		_, last := s.Membership()
		inc := m.Incarnation
		if st == clms.StateComingUp {
			s.mu.Lock()
			s.incs[n]++
			inc = uint64(n)<<32 | s.incs[n]
			s.mu.Unlock()
		}
		t := clms.Transition{ID: last + 1, Time: time.Now(), Node: n, Incarnation: inc, From: m.State, To: st, Cause: cause}
		if err := s.Append(t); err != nil {
			return err
		}
		s.Touch()
	}
	return nil
}

// Join takes each node through COMINGUP to UP.
func (s *Source) Join(nodes ...clms.NodeNum) error {
	for _, n := range nodes {
		if err := s.Move(n, clms.CauseJoin, clms.StateComingUp); err != nil {
			return err
		}
		if err := s.Move(n, clms.CauseNodeUpDone, clms.StateUp); err != nil {
			return err
		}
	}
	return nil
}

// Fail takes node n down as CLMS does after a crash: GOINGDOWN, KCLEANUP,
// UCLEANUP, DOWN.
func (s *Source) Fail(n clms.NodeNum) error {
	if err := s.Move(n, clms.CauseCrash, clms.StateGoingDown); err != nil {
		return err
	}
	return s.Move(n, clms.CauseCleanupDone, clms.StateKCleanup, clms.StateUCleanup, clms.StateDown)
}

// Shutdown takes node n down as a planned shutdown does: SHUTDOWN, then the
// cleanup phases to DOWN.
func (s *Source) Shutdown(n clms.NodeNum) error {
	if err := s.Move(n, clms.CauseShutdown, clms.StateShutdown); err != nil {
		return err
	}
	return s.Move(n, clms.CauseCleanupDone, clms.StateKCleanup, clms.StateUCleanup, clms.StateDown)
}

// Keys is an admin.KeyServiceSource whose key services the test sets
// (Set; then Source.Touch, for the long polls); Move is not implemented.
type Keys struct {
	mu  sync.Mutex
	svc []admin.KeyService // guarded by mu
}

var _ admin.KeyServiceSource = (*Keys)(nil)

// KeyServices implements admin.KeyServiceSource.
func (k *Keys) KeyServices() []admin.KeyService {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]admin.KeyService(nil), k.svc...)
}

// Move implements admin.KeyServiceSource: admin.ErrNotImplemented.
func (k *Keys) Move(context.Context, string, clms.NodeNum) error { return admin.ErrNotImplemented }

// Set replaces the key services.
func (k *Keys) Set(ks ...admin.KeyService) {
	k.mu.Lock()
	k.svc = ks
	k.mu.Unlock()
}
