package clusterapi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/clusterinfra/ci/clms"
)

// Errors of MemBackend.Append: a transition that does not continue the
// history as committed. Each is a bug in whoever feeds the backend, and
// the backend is left unchanged.
var (
	ErrOutOfOrder   = errors.New("clusterapi: transition id does not follow the last one")
	ErrStateChanged = errors.New("clusterapi: transition's from-state is not the node's state")
)

// MemConfig configures a MemBackend.
type MemConfig struct {
	// MaxRetained is how many transitions the log keeps; older ones are
	// dropped and asking for them is ErrCompacted. A transition is about
	// 60 bytes: the default keeps years of a busy cluster's history in a
	// few MiB.
	MaxRetained int
}

// DefaultMemConfig returns the defaults, each with its reason.
func DefaultMemConfig() MemConfig {
	return MemConfig{MaxRetained: 65536} // ~4 MiB; a node event makes 3..5 transitions
}

// MemBackend is a Backend that keeps the membership and the transition log
// in memory: the node table's rows, a bounded log of committed
// transitions, and the waiters of WaitTransition. Feed it with Append, in
// commit order.
type MemBackend struct {
	cfg MemConfig

	mu      sync.Mutex
	members []clms.Member             // by node number; guarded by mu
	index   map[clms.NodeNum]int      // node -> position in members
	log     []clms.Transition         // retained transitions, consecutive ids, ending at last
	last    clms.TransitionID         // id of the last transition applied; 0 for none
	keys    map[string]clms.KeyRecord // key services by name; guarded by mu
	keySeq  uint64                    // bumped by every SetKeyService; 0 for none
	changed chan struct{}             // closed and replaced by every Append and SetKeyService: wakes the waiters
}

var _ Backend = (*MemBackend)(nil)

// NewMemBackend returns a backend for the node table nodes, every node
// NEVERUP, with an empty log. A zero cfg field takes its default.
func NewMemBackend(nodes []clms.NodeNum, cfg MemConfig) (*MemBackend, error) {
	if cfg.MaxRetained == 0 {
		cfg.MaxRetained = DefaultMemConfig().MaxRetained
	}
	if cfg.MaxRetained < 1 {
		return nil, fmt.Errorf("%w: MaxRetained %d", ErrInvalid, cfg.MaxRetained)
	}
	b := &MemBackend{cfg: cfg, index: map[clms.NodeNum]int{}, keys: map[string]clms.KeyRecord{}, changed: make(chan struct{})}
	sorted := slices.Clone(nodes)
	slices.Sort(sorted)
	for _, n := range sorted {
		if n == 0 {
			return nil, fmt.Errorf("%w: node 0 in the node table", ErrInvalid)
		}
		if _, dup := b.index[n]; dup {
			return nil, fmt.Errorf("%w: node %d twice in the node table", ErrInvalid, n)
		}
		b.index[n] = len(b.members)
		b.members = append(b.members, clms.Member{Node: n, State: clms.StateNeverUp})
	}
	return b, nil
}

// Append applies committed transitions in order: each must have the id
// after the last and start from its node's current state. On the first
// that does not, Append stops and returns why; the ones before it are
// applied.
func (b *MemBackend) Append(ts ...clms.Transition) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var err error
	applied := 0
	for _, t := range ts {
		if err = b.applyLocked(t); err != nil {
			break
		}
		applied++
	}
	if applied > 0 {
		if over := len(b.log) - b.cfg.MaxRetained; over > 0 {
			// Copy rather than reslice, so that the dropped transitions'
			// memory goes too.
			b.log = append([]clms.Transition(nil), b.log[over:]...)
		}
		b.wakeLocked()
	}
	return err
}

// Restore replaces the view with a CLMS state image (clms.Restored: the
// runner's OnRestored, when its core took a snapshot instead of records):
// every member's row, the key services, and the log, continued with the
// image's history when that reaches back to the last transition applied
// here, else replaced by it (asking for what falls in between is then
// ErrCompacted). The waiters wake; Append continues after
// r.LastTransition.
func (b *MemBackend) Restore(r *clms.Restored) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range r.Members {
		if i, ok := b.index[m.Node]; ok {
			b.members[i] = m
		}
	}
	switch h := r.History; {
	case r.LastTransition <= b.last:
		// Nothing newer: keep the log we have.
	case len(h) > 0 && h[0].ID <= b.last+1:
		b.log = append(b.log, h[b.last+1-h[0].ID:]...)
	default:
		b.log = slices.Clone(h)
	}
	if over := len(b.log) - b.cfg.MaxRetained; over > 0 {
		b.log = append([]clms.Transition(nil), b.log[over:]...)
	}
	b.last = max(b.last, r.LastTransition)
	b.keys = map[string]clms.KeyRecord{}
	for _, k := range r.Keys {
		b.keys[k.Name] = k
	}
	b.keySeq++
	b.wakeLocked()
}

// wakeLocked wakes every waiter (of transitions and of key services alike:
// each checks its own condition again).
func (b *MemBackend) wakeLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// SetKeyService applies a committed key-service record, in commit order:
// it replaces the service's state, bumps the sequence and wakes the
// waiters. Every record counts as a change, as committed.
func (b *MemBackend) SetKeyService(r clms.KeyRecord) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keys[r.Name] = r
	b.keySeq++
	b.wakeLocked()
}

// KeyServices implements Backend.
func (b *MemBackend) KeyServices() ([]clms.KeyRecord, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]clms.KeyRecord, 0, len(b.keys))
	for _, name := range slices.Sorted(maps.Keys(b.keys)) {
		out = append(out, b.keys[name])
	}
	return out, b.keySeq
}

// WaitKeyServices implements Backend.
func (b *MemBackend) WaitKeyServices(ctx context.Context, after uint64) error {
	return b.wait(ctx, func() bool { return b.keySeq > after })
}

// wait returns nil once done (called with mu held) is true, or ctx's error.
func (b *MemBackend) wait(ctx context.Context, done func() bool) error {
	for {
		b.mu.Lock()
		ok, changed := done(), b.changed
		b.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *MemBackend) applyLocked(t clms.Transition) error {
	if t.ID != b.last+1 {
		return fmt.Errorf("%w: got %d after %d", ErrOutOfOrder, t.ID, b.last)
	}
	i, ok := b.index[t.Node]
	if !ok {
		return fmt.Errorf("%w: transition %d is about node %d", ErrUnknownNode, t.ID, t.Node)
	}
	m := &b.members[i]
	if m.State != t.From {
		return fmt.Errorf("%w: transition %d moves node %d from %s, but it is %s", ErrStateChanged, t.ID, t.Node, t.From, m.State)
	}
	m.State, m.Incarnation, m.LastChange = t.To, t.Incarnation, t.ID
	b.log = append(b.log, t)
	b.last = t.ID
	return nil
}

// Membership implements Backend.
func (b *MemBackend) Membership() ([]clms.Member, clms.TransitionID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]clms.Member, len(b.members))
	for i, m := range b.members {
		out[i] = cloneMember(m)
	}
	return out, b.last
}

// Transitions implements Backend.
func (b *MemBackend) Transitions(after clms.TransitionID, max int) []clms.Transition {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.log) == 0 || after >= b.last || max <= 0 {
		return nil
	}
	first := b.log[0].ID
	start := 0
	if after >= first {
		start = int(after - first + 1)
	}
	end := min(len(b.log), start+max)
	return slices.Clone(b.log[start:end])
}

// WaitTransition implements Backend.
func (b *MemBackend) WaitTransition(ctx context.Context, after clms.TransitionID) error {
	return b.wait(ctx, func() bool { return b.last > after })
}

// Member implements Backend.
func (b *MemBackend) Member(n clms.NodeNum) (clms.Member, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, ok := b.index[n]
	if !ok {
		return clms.Member{}, false
	}
	return cloneMember(b.members[i]), true
}

// SetNodeInfo implements Backend: the info is stored at once.
func (b *MemBackend) SetNodeInfo(_ context.Context, n clms.NodeNum, info clms.NodeInfo) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, ok := b.index[n]
	if !ok {
		return fmt.Errorf("%w: node %d", ErrUnknownNode, n)
	}
	b.members[i].Info = cloneInfo(info)
	return nil
}

func cloneMember(m clms.Member) clms.Member {
	m.Info = cloneInfo(m.Info)
	return m
}

func cloneInfo(i clms.NodeInfo) clms.NodeInfo {
	i.KeyServices = slices.Clone(i.KeyServices)
	i.Capabilities = slices.Clone(i.Capabilities)
	return i
}
