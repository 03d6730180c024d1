package clms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MaxSubsystems is CI's limit on registered subsystems.
const MaxSubsystems = 15

// Errors of the subsystem registry.
var (
	ErrTooManySubsystems = errors.New("clms: too many subsystems")
	ErrSubsystemExists   = errors.New("clms: subsystem already registered")
	ErrCallbackTimeout   = errors.New("clms: subsystem callback timed out")
	ErrCallbackPanic     = errors.New("clms: subsystem callback panicked")
)

// Callback is a subsystem's NODEUP or NODEDOWN routine for node (incarnation
// inc). It should return when ctx is done; one that does not is abandoned
// and reported as timed out.
type Callback func(ctx context.Context, node NodeNum, inc uint64) error

type subsystem struct {
	name     string
	band     uint8
	order    int
	up, down Callback
}

// Subsystems is the registry the runner uses to carry out ActRunNodeUp and
// ActRunNodeDown: callbacks run one after another in band order, then
// registration order, each bounded by a timeout. Safe for concurrent use.
type Subsystems struct {
	mu   sync.Mutex
	list []subsystem // sorted by band, then order
}

// Register adds a subsystem. Either callback may be nil.
func (s *Subsystems) Register(name string, band uint8, nodeUp, nodeDown Callback) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) >= MaxSubsystems {
		return fmt.Errorf("%w: %q would be number %d of at most %d", ErrTooManySubsystems, name, len(s.list)+1, MaxSubsystems)
	}
	for _, x := range s.list {
		if x.name == name {
			return fmt.Errorf("%w: %q", ErrSubsystemExists, name)
		}
	}
	s.list = append(s.list, subsystem{name: name, band: band, order: len(s.list), up: nodeUp, down: nodeDown})
	slices.SortStableFunc(s.list, func(a, b subsystem) int { return int(a.band) - int(b.band) })
	return nil
}

// CallbackResult is one callback's outcome.
type CallbackResult struct {
	Name string
	Err  error // nil, the callback's error, ErrCallbackTimeout or ErrCallbackPanic
}

// Run runs every registered NODEUP (up) or NODEDOWN callback for node in
// order, each bounded by timeout, and returns one result per callback run.
// A callback that fails or hangs never stops the ones after it.
func (s *Subsystems) Run(ctx context.Context, up bool, node NodeNum, inc uint64, timeout time.Duration) []CallbackResult {
	s.mu.Lock()
	list := slices.Clone(s.list)
	s.mu.Unlock()
	var out []CallbackResult
	for _, x := range list {
		cb := x.down
		if up {
			cb = x.up
		}
		if cb == nil {
			continue
		}
		out = append(out, CallbackResult{Name: x.name, Err: runOne(ctx, cb, node, inc, timeout)})
	}
	return out
}

func runOne(ctx context.Context, cb Callback, node NodeNum, inc uint64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan error, 1) // buffered: an abandoned callback can still finish
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("%w: %v", ErrCallbackPanic, p)
			}
		}()
		done <- cb(ctx, node, inc)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w after %s", ErrCallbackTimeout, timeout)
	}
}

// Failed names the callbacks of results that did not succeed, for
// Core.CallbacksDone.
func Failed(results []CallbackResult) []string {
	var f []string
	for _, r := range results {
		if r.Err != nil {
			f = append(f, r.Name)
		}
	}
	return f
}
