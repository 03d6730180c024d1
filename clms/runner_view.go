package clms

import (
	"context"
	"slices"
)

// viewChanged says whether b differs from a in what an admin endpoint
// shows of the node: not the counters (Stats), which move on every tick,
// but the master, readiness, lease, fencing, the last applied transition
// and each key service's owner, epoch and phase.
func viewChanged(a, b *RunnerStatus) bool {
	if a.Master != b.Master || a.IsMaster != b.IsMaster || a.Joined != b.Joined || a.Left != b.Left ||
		a.LeaseValid != b.LeaseValid || a.Formed != b.Formed || a.Ready != b.Ready || a.Fenced != b.Fenced ||
		a.RaftTerm != b.RaftTerm || a.Last != b.Last || !slices.Equal(a.Stats.KeyDegraded, b.Stats.KeyDegraded) {
		return true
	}
	return !slices.EqualFunc(a.Stats.KeyServices, b.Stats.KeyServices, func(x, y KeyServiceStats) bool {
		return x.Name == y.Name && x.Owner == y.Owner && x.OwnerInc == y.OwnerInc && x.Epoch == y.Epoch &&
			x.Phase == y.Phase && x.Handover == y.Handover && x.Critical == y.Critical && x.Acting == y.Acting
	})
}

// viewChangedNow wakes every WaitView: called by publishStatus after it
// stored a snapshot with a new View, so that a woken waiter reads it.
func (r *Runner) viewChangedNow() {
	r.viewMu.Lock()
	close(r.viewCh)
	r.viewCh = make(chan struct{})
	r.viewMu.Unlock()
}

// WaitView returns nil as soon as Status().View is above after (at once if
// it is), or ctx's error when ctx ends first. Status read after it returns
// nil has a View above after.
func (r *Runner) WaitView(ctx context.Context, after uint64) error {
	for {
		// The channel first, then the check: a change published between
		// the two closes the channel this waits on.
		r.viewMu.Lock()
		ch := r.viewCh
		r.viewMu.Unlock()
		if r.status.Load().View > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.done:
			return ErrStopped
		}
	}
}

// ViewSeq is Status().View without copying the status.
func (r *Runner) ViewSeq() uint64 { return r.status.Load().View }
