package clms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// The runner's side of key services: the registry of the routines services
// register (CI's clms_register_key_service), and how the runner carries out
// the core's key-service actions with them:
//
//	data, err := reg.Run(ctx, a, timeout) // off the core's goroutine
//	core.KeyReport(a, data, err)          // back on it
//
// ActKeyOwner is synchronous (Run calls Serve and cancels the service's
// routines when it turns false); the others may take a while.

// Errors of the registry.
var (
	ErrKeyServiceExists = errors.New("clms: key service already registered")
	ErrKeyCancelled     = errors.New("clms: key-service routine cancelled: this node stopped acting as owner")
	ErrKeyTimeout       = errors.New("clms: key-service routine timed out")
	ErrKeyPanic         = errors.New("clms: key-service routine panicked")
)

// KeyService is what a key service implements. Every routine gets the
// epoch, the fencing token: stamp every operation with it and let the
// resources check it (EpochGuard, State.CheckEpoch).
type KeyService interface {
	// Failover runs on the new owner after the old one died.
	Failover(ctx context.Context, epoch uint64) error
	// PullData runs on every member (the new owner included) when a new
	// owner pulls; its result goes to FailoverData.
	PullData(ctx context.Context, epoch uint64) ([]byte, error)
	// FailoverData runs on the new owner with each member's PullData (a
	// member that failed, died or did not answer in time is missing).
	FailoverData(ctx context.Context, epoch uint64, pulled map[NodeNum][]byte) error
	// HandOff runs on the owner in a planned move: stop serving and return
	// the state for the next owner. An error aborts the move: keep serving.
	HandOff(ctx context.Context, epoch uint64) ([]byte, error)
	// TakeOver runs on the new owner of a planned move with HandOff's state.
	TakeOver(ctx context.Context, epoch uint64, state []byte) error
	// Serve says whether this node may act as owner, in epoch: start or
	// resume serving (acting), or stop at once (not acting).
	Serve(epoch uint64, acting bool)
}

// KeyServiceFuncs is a KeyService made of functions; a nil one does nothing
// (PullData and HandOff return no data), except TakeOver, which without its
// function runs FailoverData with the hand-over state as the only entry,
// under node 0.
type KeyServiceFuncs struct {
	FailoverFunc     func(ctx context.Context, epoch uint64) error
	PullDataFunc     func(ctx context.Context, epoch uint64) ([]byte, error)
	FailoverDataFunc func(ctx context.Context, epoch uint64, pulled map[NodeNum][]byte) error
	HandOffFunc      func(ctx context.Context, epoch uint64) ([]byte, error)
	TakeOverFunc     func(ctx context.Context, epoch uint64, state []byte) error
	ServeFunc        func(epoch uint64, acting bool)
}

// Failover implements KeyService.
func (f *KeyServiceFuncs) Failover(ctx context.Context, epoch uint64) error {
	if f.FailoverFunc == nil {
		return nil
	}
	return f.FailoverFunc(ctx, epoch)
}

// PullData implements KeyService.
func (f *KeyServiceFuncs) PullData(ctx context.Context, epoch uint64) ([]byte, error) {
	if f.PullDataFunc == nil {
		return nil, nil
	}
	return f.PullDataFunc(ctx, epoch)
}

// FailoverData implements KeyService.
func (f *KeyServiceFuncs) FailoverData(ctx context.Context, epoch uint64, pulled map[NodeNum][]byte) error {
	if f.FailoverDataFunc == nil {
		return nil
	}
	return f.FailoverDataFunc(ctx, epoch, pulled)
}

// HandOff implements KeyService.
func (f *KeyServiceFuncs) HandOff(ctx context.Context, epoch uint64) ([]byte, error) {
	if f.HandOffFunc == nil {
		return nil, nil
	}
	return f.HandOffFunc(ctx, epoch)
}

// TakeOver implements KeyService.
func (f *KeyServiceFuncs) TakeOver(ctx context.Context, epoch uint64, state []byte) error {
	if f.TakeOverFunc != nil {
		return f.TakeOverFunc(ctx, epoch, state)
	}
	return f.FailoverData(ctx, epoch, map[NodeNum][]byte{0: state})
}

// Serve implements KeyService.
func (f *KeyServiceFuncs) Serve(epoch uint64, acting bool) {
	if f.ServeFunc != nil {
		f.ServeFunc(epoch, acting)
	}
}

type keyEntry struct {
	name     string
	critical bool
	pull     bool
	ks       KeyService
	ctx      context.Context // cancelled when this node stops acting as owner
	cancel   context.CancelFunc
}

// KeyServices is the registry of this node's key services. Safe for
// concurrent use; the zero value is ready.
type KeyServices struct {
	mu   sync.Mutex
	list []*keyEntry
	// built: a runner took its key-service list from here (NewRunner);
	// later registrations would not be in it, so they are refused.
	built bool
}

// Register adds key service name; pull says it has a PullData routine (a
// new owner then pulls from every member before FailoverData).
func (r *KeyServices) Register(name string, critical, pull bool, ks KeyService) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if name == "" || len(name) > maxString {
		return fmt.Errorf("%w: name %q is empty or longer than %d bytes", ErrConfig, name, maxString)
	}
	if slices.ContainsFunc(r.list, func(e *keyEntry) bool { return e.name == name }) {
		return fmt.Errorf("%w: %q", ErrKeyServiceExists, name)
	}
	if r.built {
		return fmt.Errorf("%w: key service %q registered after the node's CLMS runner was built, which took the list it agrees on with the other nodes: register before clms.NewRunner (node.New)", ErrConfig, name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // not acting until ActKeyOwner says so
	r.list = append(r.list, &keyEntry{name: name, critical: critical, pull: pull, ks: ks, ctx: ctx, cancel: cancel})
	return nil
}

// RegisterKeyService is CI's clms_register_key_service: failover runs on
// the new owner; pullData (nil: no pull) on every member; failoverData on
// the new owner with what was pulled.
func (r *KeyServices) RegisterKeyService(name string, critical bool,
	failover func(ctx context.Context, epoch uint64) error,
	pullData func(ctx context.Context, epoch uint64) ([]byte, error),
	failoverData func(ctx context.Context, epoch uint64, pulled map[NodeNum][]byte) error) error {
	return r.Register(name, critical, pullData != nil,
		&KeyServiceFuncs{FailoverFunc: failover, PullDataFunc: pullData, FailoverDataFunc: failoverData})
}

// Specs returns the key services for Config.Keys.Services: those of the
// cluster configuration (the same on every node) in its order, critical if
// the file or the registration says so, then those registered here only.
func (r *KeyServices) Specs(cluster []KeyServiceEntry) []KeyServiceSpec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.specs(cluster)
}

// build is Specs for NewRunner: the list is final, and Register refuses
// from now on.
func (r *KeyServices) build(cluster []KeyServiceEntry) []KeyServiceSpec {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.built = true
	return r.specs(cluster)
}

func (r *KeyServices) specs(cluster []KeyServiceEntry) []KeyServiceSpec {
	var out []KeyServiceSpec
	for _, e := range cluster {
		sp := KeyServiceSpec{Name: e.Name, Critical: e.Critical}
		if i := slices.IndexFunc(r.list, func(k *keyEntry) bool { return k.name == e.Name }); i >= 0 {
			sp.Critical = sp.Critical || r.list[i].critical
			sp.Pull = r.list[i].pull
		}
		out = append(out, sp)
	}
	for _, k := range r.list {
		if !slices.ContainsFunc(out, func(sp KeyServiceSpec) bool { return sp.Name == k.name }) {
			out = append(out, KeyServiceSpec{Name: k.name, Critical: k.critical, Pull: k.pull})
		}
	}
	return out
}

func (r *KeyServices) entry(name string) *keyEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i := slices.IndexFunc(r.list, func(k *keyEntry) bool { return k.name == name }); i >= 0 {
		return r.list[i]
	}
	return nil
}

// Run carries out one key-service action (ActKeyOwner, ActKeyFailover,
// ActKeyPullData, ActKeyFailoverData, ActKeyHandOff) with the registered
// routine, bounded by timeout (ActKeyOwner is not: Serve must not block).
// The owner's routines are cancelled when ActKeyOwner turns false and then
// return ErrKeyCancelled, which KeyReport does not report. Hand the result
// to Core.KeyReport on the core's goroutine.
func (r *KeyServices) Run(ctx context.Context, a Action, timeout time.Duration) ([]byte, error) {
	e := r.entry(a.KeyService)
	if e == nil {
		return nil, fmt.Errorf("%w: %q is not registered on this node", ErrUnknownKeyService, a.KeyService)
	}
	if a.Kind == ActKeyOwner {
		r.mu.Lock()
		e.cancel()
		if a.Valid {
			e.ctx, e.cancel = context.WithCancel(context.Background())
		}
		r.mu.Unlock()
		e.ks.Serve(a.Epoch, a.Valid)
		return nil, nil
	}
	var fn func(context.Context) ([]byte, error)
	switch a.Kind {
	case ActKeyFailover:
		fn = func(ctx context.Context) ([]byte, error) { return nil, e.ks.Failover(ctx, a.Epoch) }
	case ActKeyPullData:
		// PullData serves another owner: not tied to this node's ownership.
		return bounded(ctx, nil, timeout, func(ctx context.Context) ([]byte, error) { return e.ks.PullData(ctx, a.Epoch) })
	case ActKeyFailoverData:
		if a.Handover {
			fn = func(ctx context.Context) ([]byte, error) { return nil, e.ks.TakeOver(ctx, a.Epoch, a.Pulled[a.From]) }
		} else {
			fn = func(ctx context.Context) ([]byte, error) { return nil, e.ks.FailoverData(ctx, a.Epoch, a.Pulled) }
		}
	case ActKeyHandOff:
		fn = func(ctx context.Context) ([]byte, error) { return e.ks.HandOff(ctx, a.Epoch) }
	default:
		return nil, fmt.Errorf("clms: %v is not a key-service action", a.Kind)
	}
	r.mu.Lock()
	owner := e.ctx
	r.mu.Unlock()
	return bounded(ctx, owner, timeout, fn)
}

// bounded runs fn under ctx and timeout, cancelled also when owner is done;
// a routine that does not return in time is abandoned.
func bounded(ctx, owner context.Context, timeout time.Duration, fn func(context.Context) ([]byte, error)) ([]byte, error) {
	if owner != nil && owner.Err() != nil {
		return nil, ErrKeyCancelled
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if owner != nil {
		stop := context.AfterFunc(owner, cancel)
		defer stop()
	}
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1) // buffered: an abandoned routine can still finish
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("%w: %v", ErrKeyPanic, p)}
			}
		}()
		d, err := fn(ctx)
		done <- result{d, err}
	}()
	select {
	case res := <-done:
		if owner != nil && owner.Err() != nil {
			return nil, ErrKeyCancelled
		}
		return res.data, res.err
	case <-ctx.Done():
		if owner != nil && owner.Err() != nil {
			return nil, ErrKeyCancelled
		}
		return nil, fmt.Errorf("%w after %s", ErrKeyTimeout, timeout)
	}
}

// KeyReport hands the result of KeyServices.Run for action a back to the
// core (KeyFailoverDone, KeyPullDone, KeyFailoverDataDone, KeyHandOffDone).
// A cancelled routine is not reported: the core starts it again when this
// node acts as owner again.
func (c *Core) KeyReport(a Action, data []byte, err error) {
	if errors.Is(err, ErrKeyCancelled) {
		return
	}
	switch a.Kind {
	case ActKeyFailover:
		c.KeyFailoverDone(a.KeyService, a.Epoch, err)
	case ActKeyPullData:
		c.KeyPullDone(a.KeyService, a.Epoch, a.Node, data, err)
	case ActKeyFailoverData:
		c.KeyFailoverDataDone(a.KeyService, a.Epoch, err)
	case ActKeyHandOff:
		c.KeyHandOffDone(a.KeyService, a.Epoch, data, err)
	}
}
