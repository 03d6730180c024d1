package clms

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// The runner's key-service duties (docs/CLMS.md, "What the runner does for
// key services"): ActKeyOwner synchronously on the runner's goroutine, the
// routines on goroutines of their own, bounded by a timeout, each result
// handed back to the core on the runner's goroutine; applied records feed
// the EpochGuard and the MoveKeyService calls waiting for their outcome.

// ErrKeyMoveAborted: the owner's HandOff failed, so the service stays
// where it was, in the same epoch.
var ErrKeyMoveAborted = errors.New("clms: key-service move aborted: the owner's hand-over failed; it serves on")

// keyResult is a key-service routine's result, for Core.KeyReport.
type keyResult struct {
	a    Action
	data []byte
	err  error
}

// keyWait is a MoveKeyService call waiting for the move's outcome.
type keyWait struct {
	name   string
	epoch  uint64 // the epoch the move started from
	handed bool   // the hand-over record was applied
	done   chan error
}

// actKey carries out one key-service action; on the runner's goroutine.
func (r *Runner) actKey(a Action) {
	reg := r.cfg.KeyServices
	if a.Kind == ActKeyOwner {
		if _, err := reg.Run(r.ctx, a, 0); err != nil {
			r.log.Error("clms: key service not registered on this node, yet it was assigned here", "service", a.KeyService, "err", err)
			return
		}
		if a.Valid {
			r.keyActing[a.KeyService] = a.Epoch
			r.log.Info("clms: acting as key-service owner", "service", a.KeyService, "epoch", a.Epoch)
		} else if _, was := r.keyActing[a.KeyService]; was {
			delete(r.keyActing, a.KeyService)
			r.log.Warn("clms: stopped acting as key-service owner", "service", a.KeyService, "epoch", a.Epoch)
		}
		return
	}
	r.log.Debug("clms: key-service routine", "action", a.String())
	// Every routine is a callback like the subsystems': CallbackTimeout
	// bounds it, as it bounds the core's wait for a pull (KeyConfig's
	// PullTimeout default), so a member's answer is never needed later.
	timeout := r.cfg.Timing.CallbackTimeout
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		start := time.Now()
		data, err := reg.Run(r.ctx, a, timeout)
		if r.met != nil {
			r.met.keyRoutine(a.Kind, time.Since(start), err)
		}
		if err != nil && !errors.Is(err, ErrKeyCancelled) {
			r.log.Warn("clms: key-service routine failed", "action", a.Kind, "service", a.KeyService, "epoch", a.Epoch, "err", err)
		}
		select {
		case r.keyDone <- keyResult{a: a, data: data, err: err}:
		case <-r.ctx.Done():
		}
	}()
}

// stopServing tells the services still serving here to stop: the runner
// is closing, so this node acts as owner of nothing any more. After the
// runner's goroutines ended.
func (r *Runner) stopServing() {
	for _, name := range slices.Sorted(maps.Keys(r.keyActing)) {
		_, _ = r.cfg.KeyServices.Run(context.Background(), Action{Kind: ActKeyOwner, KeyService: name, Epoch: r.keyActing[name]}, 0)
	}
	clear(r.keyActing)
}

// keyApplied ends the MoveKeyService calls whose outcome was applied.
func (r *Runner) keyApplied(recs []Record) {
	for _, rec := range recs {
		if rec.Kind != RecordKeyService {
			continue
		}
		k := rec.Key
		r.keyWaits = slices.DeleteFunc(r.keyWaits, func(w *keyWait) bool {
			if w.name != k.Name {
				return false
			}
			switch {
			case k.Epoch > w.epoch && k.Phase == KeyReady:
				w.done <- nil
			case k.Epoch > w.epoch && k.Phase == KeyUnowned:
				w.done <- fmt.Errorf("%w: %q has no owner (epoch %d)", ErrUnknownKeyService, k.Name, k.Epoch)
			case k.Epoch == w.epoch && k.Phase == KeyHandover:
				w.handed = true
				return false
			case k.Epoch == w.epoch && k.Phase == KeyReady && w.handed:
				w.done <- ErrKeyMoveAborted
			default:
				return false
			}
			return true
		})
	}
}

// MoveKeyService moves key service name to node to (0: any capable node)
// by a planned hand-over, for maintenance (`cluster move`), and returns
// once the new owner is ready here (nil), the move was aborted
// (ErrKeyMoveAborted), or ctx ended (the move may still happen). Any member
// may ask; a request the master never got is not repeated.
func (r *Runner) MoveKeyService(ctx context.Context, name string, to NodeNum) error {
	if !r.started.Load() {
		return ErrNotStarted
	}
	w := &keyWait{name: name, done: make(chan error, 1)}
	errc := make(chan error, 1)
	if err := r.do(ctx, func() {
		cur, _ := r.core.State().KeyService(name)
		w.epoch = cur.Epoch
		err := r.core.MoveKeyService(name, to)
		if err == nil {
			r.keyWaits = append(r.keyWaits, w)
		}
		errc <- err
	}); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	select {
	case err := <-w.done:
		return err
	case <-r.done:
		return ErrStopped
	case <-ctx.Done():
		_ = r.do(context.Background(), func() { // an error: stopped, nothing to drop
			r.keyWaits = slices.DeleteFunc(r.keyWaits, func(x *keyWait) bool { return x == w })
		})
		return ctx.Err()
	}
}

// KeyService returns key service name's committed record as this node
// applied it (from the latest status snapshot; safe from any goroutine).
func (r *Runner) KeyService(name string) (KeyServiceStats, bool) {
	for _, k := range r.status.Load().Stats.KeyServices {
		if k.Name == name {
			return k, true
		}
	}
	return KeyServiceStats{}, false
}

// KeyServices is the registry the runner runs key-service routines from.
func (r *Runner) KeyServices() *KeyServices { return r.cfg.KeyServices }

// EpochGuard is fed with every record this node applies, before the
// actions of the same Ready: a service checks the epochs its operations
// carry against it (EpochGuard.Check), so a former owner's late request is
// refused once this node applied the new owner's record or admitted one of
// its operations.
func (r *Runner) EpochGuard() *EpochGuard { return &r.guard }
