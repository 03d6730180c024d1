package clusterapi

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
)

// Config configures a Server. Start from DefaultConfig.
type Config struct {
	// MaxNodes is what MaxNodes answers (CI's cluster_maxnodes): the
	// highest node number of the table, clms.ClusterConfig.MaxNodes.
	// Required.
	MaxNodes clms.NodeNum
	// MaxWait bounds how long one WaitTransitions or WaitKeyServices holds
	// a server handle.
	MaxWait time.Duration
	// MaxBatch bounds the transitions in one WaitTransitions reply.
	MaxBatch int
	// MaxWaiters bounds the long polls (WaitTransitions and WaitKeyServices
	// together) waiting at once; more get
	// ErrBusy. Below the service's 64 handles, so that waiting watchers
	// never keep the other calls from a handle.
	MaxWaiters int
	// MaxInfoStrings and MaxInfoString bound what SetNodeInfo accepts:
	// the strings in each list of a NodeInfo, and the bytes of each.
	MaxInfoStrings int
	MaxInfoString  int
}

// DefaultConfig returns the defaults, each with its reason.
func DefaultConfig() Config {
	return Config{
		MaxWait:        30 * time.Second, // an idle watcher costs two RPCs a minute; a handle is never held longer
		MaxBatch:       1024,             // ~50 KiB a reply: far under MaxPayload, and a lagging watcher still catches up fast
		MaxWaiters:     48,               // leaves 16 of the 64 handles to the other calls
		MaxInfoStrings: 64,               // key services and capabilities are a handful each
		MaxInfoString:  256,              // a name or label, not a document
	}
}

func (c *Config) validate() error {
	d := DefaultConfig()
	fill := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	if c.MaxWait == 0 {
		c.MaxWait = d.MaxWait
	}
	fill(&c.MaxBatch, d.MaxBatch)
	fill(&c.MaxWaiters, d.MaxWaiters)
	fill(&c.MaxInfoStrings, d.MaxInfoStrings)
	fill(&c.MaxInfoString, d.MaxInfoString)
	switch {
	case c.MaxNodes == 0:
		return fmt.Errorf("%w: Config.MaxNodes must be set", ErrInvalid)
	case c.MaxWait < 0 || c.MaxBatch < 1 || c.MaxWaiters < 1 || c.MaxInfoStrings < 0 || c.MaxInfoString < 0:
		return fmt.Errorf("%w: negative or zero limit in %+v", ErrInvalid, *c)
	case c.MaxWaiters >= APIService(nil).MaxHandles:
		return fmt.Errorf("%w: MaxWaiters %d must leave some of the %d handles to the other calls", ErrInvalid, c.MaxWaiters, APIService(nil).MaxHandles)
	}
	return nil
}

// Server serves the cluster API of one node from a Backend.
type Server struct {
	node    *engine.Node
	backend Backend
	cfg     Config
	waiters atomic.Int32 // long polls waiting now
}

var _ API = (*Server)(nil)

// Register serves the cluster API on node, from backend.
func Register(node *engine.Node, backend Backend, cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{node: node, backend: backend, cfg: cfg}
	if err := RegisterAPI(node, s); err != nil {
		return nil, err
	}
	return s, nil
}

// ClusterName implements API.
func (s *Server) ClusterName(context.Context) (string, error) { return s.node.Cluster(), nil }

// NodeNum implements API.
func (s *Server) NodeNum(context.Context) (uint32, error) { return uint32(s.node.Num()), nil }

// MaxNodes implements API.
func (s *Server) MaxNodes(context.Context) (uint32, error) { return uint32(s.cfg.MaxNodes), nil }

// Membership implements API.
func (s *Server) Membership(context.Context) ([]WireMember, uint64, error) {
	members, last := s.backend.Membership()
	out := make([]WireMember, len(members))
	for i, m := range members {
		out[i] = WireMemberOf(m)
	}
	return out, uint64(last), nil
}

// NextTransition implements API. It scans the log a batch at a time; the
// log is bounded, so is the scan.
func (s *Server) NextTransition(_ context.Context, after uint64) (WireTransition, bool, error) {
	at := clms.TransitionID(after)
	for {
		ts, err := s.transitions(at, s.cfg.MaxBatch)
		if err != nil || len(ts) == 0 {
			return WireTransition{}, false, err
		}
		for _, t := range ts {
			if t.From == clms.StateUp || t.To == clms.StateUp {
				return WireTransitionOf(t), true, nil
			}
		}
		at = ts[len(ts)-1].ID
	}
}

// DetailedTransition implements API.
func (s *Server) DetailedTransition(_ context.Context, which Which, id uint64) (WireTransition, error) {
	var want clms.TransitionID // the id asked for; 0 for the oldest kept
	switch which {
	case WhichThis:
		want = clms.TransitionID(id)
	case WhichNext:
		want = clms.TransitionID(id) + 1
		if want == 0 {
			return WireTransition{}, fmt.Errorf("%w: none after %d", ErrNoTransition, id)
		}
	case WhichPrevious:
		if id <= 1 {
			return WireTransition{}, fmt.Errorf("%w: none before %d", ErrNoTransition, id)
		}
		want = clms.TransitionID(id) - 1
	case WhichFirst:
	case WhichLast:
		_, want = s.backend.Membership()
	default:
		return WireTransition{}, fmt.Errorf("%w: which %d: want 0 (this) .. 4 (last)", ErrInvalid, uint8(which))
	}
	if want == 0 {
		if which == WhichFirst || which == WhichLast {
			ts := s.backend.Transitions(0, 1)
			if len(ts) == 0 {
				return WireTransition{}, fmt.Errorf("%w: none yet", ErrNoTransition)
			}
			if which == WhichFirst {
				return WireTransitionOf(ts[0]), nil
			}
		}
		return WireTransition{}, fmt.Errorf("%w: transition ids start at 1", ErrNoTransition)
	}
	ts, err := s.transitions(want-1, 1)
	if err != nil {
		return WireTransition{}, err
	}
	if len(ts) == 0 {
		return WireTransition{}, fmt.Errorf("%w: %d is not committed yet", ErrNoTransition, want)
	}
	return WireTransitionOf(ts[0]), nil
}

// transitions is Backend.Transitions checked for what the caller was
// promised: the first is after+1, or the log has dropped it.
func (s *Server) transitions(after clms.TransitionID, max int) ([]clms.Transition, error) {
	ts := s.backend.Transitions(after, max)
	if len(ts) == 0 {
		return nil, nil
	}
	if ts[0].ID != after+1 {
		return nil, fmt.Errorf("%w: the oldest kept is %d, asked for those after %d", ErrCompacted, ts[0].ID, after)
	}
	for i := 1; i < len(ts); i++ {
		if ts[i].ID != ts[i-1].ID+1 {
			return nil, fmt.Errorf("clusterapi: backend returned transition %d after %d", ts[i].ID, ts[i-1].ID)
		}
	}
	return ts, nil
}

// NodeInfo implements API.
func (s *Server) NodeInfo(_ context.Context, node uint32) (WireMember, error) {
	m, ok := s.backend.Member(clms.NodeNum(node))
	if !ok {
		return WireMember{}, fmt.Errorf("%w: %d", ErrUnknownNode, node)
	}
	return WireMemberOf(m), nil
}

// SetNodeInfo implements API.
func (s *Server) SetNodeInfo(ctx context.Context, from engine.NodeNum, node uint32, info WireNodeInfo) error {
	if _, ok := s.backend.Member(clms.NodeNum(node)); !ok {
		return fmt.Errorf("%w: %d", ErrUnknownNode, node)
	}
	for _, list := range [][]string{info.KeyServices, info.Capabilities} {
		if len(list) > s.cfg.MaxInfoStrings {
			return fmt.Errorf("%w: %d strings in a node info list, at most %d", ErrInvalid, len(list), s.cfg.MaxInfoStrings)
		}
		for _, str := range list {
			if len(str) > s.cfg.MaxInfoString {
				return fmt.Errorf("%w: a node info string of %d bytes, at most %d", ErrInvalid, len(str), s.cfg.MaxInfoString)
			}
		}
	}
	if err := s.backend.SetNodeInfo(ctx, clms.NodeNum(node), info.CLMS()); err != nil {
		return err
	}
	s.node.Logger().Info("cluster API: node info set", "node", node, "by", from)
	return nil
}

// NodeAvail implements API.
func (s *Server) NodeAvail(_ context.Context, node uint32) (bool, error) {
	m, ok := s.backend.Member(clms.NodeNum(node))
	if !ok {
		return false, fmt.Errorf("%w: %d", ErrUnknownNode, node)
	}
	return m.State == clms.StateUp, nil
}

// WaitTransitions implements API.
func (s *Server) WaitTransitions(ctx context.Context, after uint64, max uint32, waitMillis uint32) ([]WireTransition, error) {
	if max == 0 {
		return nil, fmt.Errorf("%w: a batch of 0 transitions", ErrInvalid)
	}
	n := s.cfg.MaxBatch
	if uint64(max) < uint64(n) {
		n = int(max)
	}
	ts, err := s.transitions(clms.TransitionID(after), n)
	if err != nil || len(ts) > 0 || waitMillis == 0 {
		return wireTransitions(ts), err
	}
	if err := s.longPoll(ctx, waitMillis, func(wctx context.Context) error {
		return s.backend.WaitTransition(wctx, clms.TransitionID(after))
	}); err != nil {
		return nil, err
	}
	// Woken, out of time, or the node is closing: answer with what there
	// is, so that the caller just polls again.
	ts, err = s.transitions(clms.TransitionID(after), n)
	return wireTransitions(ts), err
}

// longPoll runs wait, a backend's wait for a change, for up to waitMillis
// (capped by Config.MaxWait) under the limits every long poll shares: only
// at priority 0, at most Config.MaxWaiters at once (ErrBusy). It returns
// nil when woken, out of time or when the node closes (the caller answers
// with what there is, and its caller polls again), or the backend's
// failure.
func (s *Server) longPoll(ctx context.Context, waitMillis uint32, wait func(context.Context) error) error {
	if p := engine.PriorityFrom(ctx); p > 0 {
		// Requests at priority run on the node's shared priority handles,
		// which CLMS's own traffic needs: a long poll must not sit on one.
		return fmt.Errorf("%w: a wait at priority %d would hold a shared priority handle; wait at priority 0", ErrInvalid, p)
	}
	if s.waiters.Add(1) > int32(s.cfg.MaxWaiters) {
		s.waiters.Add(-1)
		return fmt.Errorf("%w: %d waiting", ErrBusy, s.cfg.MaxWaiters)
	}
	defer s.waiters.Add(-1)
	// The wait's timer must not hang off the handler's ctx: the engine
	// reuses that ctx for the handle's next request, and a timer context
	// derived from it reads it from the timer's goroutine when it fires,
	// which can be after this handler returned (a data race under -race).
	// Instead the node's closing reaches the wait through AfterFunc, whose
	// stop runs here.
	wctx, cancel := context.WithTimeout(context.Background(), min(time.Duration(waitMillis)*time.Millisecond, s.cfg.MaxWait))
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	if err := wait(wctx); err != nil && wctx.Err() == nil {
		return err // the backend failed
	}
	return nil
}

// KeyServices implements API.
func (s *Server) KeyServices(context.Context) ([]WireKeyService, uint64, error) {
	ks, seq := s.backend.KeyServices()
	return wireKeyServices(ks), seq, nil
}

// WaitKeyServices implements API.
func (s *Server) WaitKeyServices(ctx context.Context, afterSeq uint64, waitMillis uint32) ([]WireKeyService, uint64, error) {
	ks, seq := s.backend.KeyServices()
	if seq > afterSeq || waitMillis == 0 {
		return wireKeyServices(ks), seq, nil
	}
	if err := s.longPoll(ctx, waitMillis, func(wctx context.Context) error {
		return s.backend.WaitKeyServices(wctx, afterSeq)
	}); err != nil {
		return nil, 0, err
	}
	ks, seq = s.backend.KeyServices()
	return wireKeyServices(ks), seq, nil
}

func wireKeyServices(ks []clms.KeyRecord) []WireKeyService {
	if len(ks) == 0 {
		return nil
	}
	out := make([]WireKeyService, len(ks))
	for i, k := range ks {
		out[i] = WireKeyServiceOf(k)
	}
	return out
}

// WireKeyServiceOf converts a key service's committed record for the wire.
func WireKeyServiceOf(k clms.KeyRecord) WireKeyService {
	return WireKeyService{Name: k.Name, Owner: uint32(k.Owner), OwnerInc: k.OwnerInc, Epoch: k.Epoch,
		Phase: uint8(k.Phase), Ready: k.Phase == clms.KeyReady}
}

func wireTransitions(ts []clms.Transition) []WireTransition {
	if len(ts) == 0 {
		return nil
	}
	out := make([]WireTransition, len(ts))
	for i, t := range ts {
		out[i] = WireTransitionOf(t)
	}
	return out
}

// WireTransitionOf converts a transition for the wire.
func WireTransitionOf(t clms.Transition) WireTransition {
	w := WireTransition{ID: uint64(t.ID), Node: uint32(t.Node), Incarnation: t.Incarnation,
		From: uint8(t.From), To: uint8(t.To), Cause: uint8(t.Cause)}
	if !t.Time.IsZero() {
		w.UnixNano = t.Time.UnixNano()
	}
	return w
}

// CLMS converts a transition from the wire.
func (w WireTransition) CLMS() clms.Transition {
	t := clms.Transition{ID: clms.TransitionID(w.ID), Node: clms.NodeNum(w.Node), Incarnation: w.Incarnation,
		From: clms.NodeState(w.From), To: clms.NodeState(w.To), Cause: clms.Cause(w.Cause)}
	if w.UnixNano != 0 {
		t.Time = time.Unix(0, w.UnixNano)
	}
	return t
}

// WireMemberOf converts a membership row for the wire.
func WireMemberOf(m clms.Member) WireMember {
	return WireMember{Node: uint32(m.Node), State: uint8(m.State), Incarnation: m.Incarnation,
		Info: WireNodeInfoOf(m.Info), LastChange: uint64(m.LastChange)}
}

// CLMS converts a membership row from the wire.
func (w WireMember) CLMS() clms.Member {
	return clms.Member{Node: clms.NodeNum(w.Node), State: clms.NodeState(w.State), Incarnation: w.Incarnation,
		Info: w.Info.CLMS(), LastChange: clms.TransitionID(w.LastChange)}
}

// WireNodeInfoOf converts node info for the wire.
func WireNodeInfoOf(i clms.NodeInfo) WireNodeInfo {
	return WireNodeInfo{CPUsTotal: i.CPUsTotal, CPUsOnline: i.CPUsOnline, MemoryBytes: i.MemoryBytes,
		KeyServices: i.KeyServices, Capabilities: i.Capabilities}
}

// CLMS converts node info from the wire.
func (w WireNodeInfo) CLMS() clms.NodeInfo {
	return clms.NodeInfo{CPUsTotal: w.CPUsTotal, CPUsOnline: w.CPUsOnline, MemoryBytes: w.MemoryBytes,
		KeyServices: w.KeyServices, Capabilities: w.Capabilities}
}
