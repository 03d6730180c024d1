package engine

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Wait-for-ready (issue 9 point 2). By default a call to a peer that
// cannot be reached fails at once with ErrNodeDown (and, while a failed
// dial backs off, without dialling). A call whose ctx says WaitForReady
// instead waits, within its ctx, for the peer to become reachable: it
// retries when the dial backoff allows, so however many callers wait, the
// peer is dialled at the backoff's pace. Only the way to the peer is
// waited for: a call that was sent and then lost its peer fails with
// ErrNodeDown as always, since it may have run.

type waitForReadyKey struct{}

// WaitForReady returns a context whose calls wait for their peer to be
// reachable (not down, not draining, its connection dialled) instead of
// failing fast with ErrNodeDown or ErrShuttingDown. The wait is bounded by
// ctx: at its end the call fails with ErrTimedOut (or ErrIntr), whose
// message names the last reason the peer was not ready.
func WaitForReady(ctx context.Context) context.Context {
	return context.WithValue(ctx, waitForReadyKey{}, true)
}

func waitsForReady(ctx context.Context) bool {
	v, _ := ctx.Value(waitForReadyKey{}).(bool)
	return v
}

// notReady reports whether err, from routing a call to a peer, says the
// peer is not ready yet: what WaitForReady waits out.
func notReady(err error) bool {
	return errors.Is(err, ErrNodeDown) || errors.Is(err, ErrShuttingDown)
}

// awaitReady waits before the next attempt to reach p after err: until
// its dial backoff runs out, or a DialBackoff step when no dial is what
// stands in the way (declared down, draining). It returns the error the
// call ends with if ctx ends first.
func (n *Node) awaitReady(ctx context.Context, p *peer, err error) error {
	p.mu.Lock()
	wait := time.Until(p.retryAt)
	p.mu.Unlock()
	if wait <= 0 {
		wait = n.cfg.DialBackoff
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w (waiting for node %d to be ready: %v)", ctxError(ctx), p.num, err)
	case <-n.done:
		return ErrClosed
	}
}
