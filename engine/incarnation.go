package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
)

// What CLMS needs of the transport beyond calls: to learn quickly that a
// peer's process is gone (ProbePeer), and to refuse one incarnation of a
// peer for good while letting its next one in (NodeDownIncarnation).

// ErrPeerRefused is wrapped by ProbePeer when the peer's address refused
// the connection: nothing listens there, so the process that did is gone.
var ErrPeerRefused = errors.New("ics: connection refused: nothing listens at the peer's address")

// errProbeAnswered closes an accepted probe connection once the handshake
// has told the dialler who we are; it is no failure and is not logged.
var errProbeAnswered = errors.New("ics: probe answered")

// maxRefused bounds the incarnations of one peer refused at once. An
// incarnation is refused while its process may still run (fenced in DEBUG
// mode, or cut off); a node whose eight previous runs all still run is not
// a case to design for, and the oldest is forgotten first.
const maxRefused = 8

// ProbePeer opens a fresh connection to num on ChanCLMSProbe, does the
// handshake (authenticated like any other) and closes it; it returns the
// incarnation of the process that answered. The connection never joins the
// link: calls are not affected, and the peer does not see a link loss.
//
// An error wrapping ErrPeerRefused means the address refused the
// connection: proof that no process of num runs there. Any other error
// (a timeout, a reset, a handshake refused) proves nothing. The probe is
// made even to a peer declared down, which is how its next incarnation is
// recognised.
func (n *Node) ProbePeer(ctx context.Context, num NodeNum) (uint64, error) {
	if n.closed.Load() {
		return 0, ErrClosed
	}
	p := n.peer(num)
	if p == nil {
		return 0, fmt.Errorf("%w: node %d is not a configured peer of node %d", ErrUnknownHost, num, n.cfg.Node)
	}
	dctx, cancel := context.WithTimeout(n.ctx, n.cfg.DialTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	nc, ack, _, err := n.dialHandshake(dctx, p, ChanCLMSProbe)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctxError(ctx)
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return 0, fmt.Errorf("%w: %w", ErrPeerRefused, err)
		}
		return 0, err
	}
	_ = nc.Close()
	return ack.Incarnation, nil
}

// answeredProbe ends an accepted probe connection after its handshake: it
// was only asked who we are.
func (n *Node) answeredProbe(c *conn) error {
	n.pendingMu.Lock()
	n.unpendLocked(c)
	n.pendingMu.Unlock()
	return errProbeAnswered
}

// NodeDownIncarnation declares incarnation inc of peer num down, as CLMS
// does on NODEDOWN: that incarnation is refused from now on, in hellos and
// in answers to our dials, whatever it does. If it is the incarnation we
// are linked with (or we know none), the peer is down as with NodeDown:
// its calls fail now and new ones fail fast, until a hello from another
// incarnation arrives or NodeUp. If a newer incarnation is already linked,
// its link is left alone.
func (n *Node) NodeDownIncarnation(num NodeNum, inc uint64, cause error) {
	p := n.peer(num)
	if p == nil || inc == 0 {
		return
	}
	p.mu.Lock()
	old := p.refused.Load()
	var next []uint64
	if old != nil {
		next = slices.Clone(*old)
	}
	if !slices.Contains(next, inc) {
		next = append(next, inc)
		if len(next) > maxRefused {
			next = next[len(next)-maxRefused:]
		}
	}
	p.refused.Store(&next)
	cur := p.incarnation.Load()
	p.mu.Unlock()
	if cur != 0 && cur != inc {
		return
	}
	p.downUntilNew.Store(true)
	p.down.Store(true)
	if cause == nil {
		cause = fmt.Errorf("incarnation %#x declared down", inc)
	}
	n.peerLost(p, p.linkGen.Load(), cause)
}

// isRefused reports whether incarnation inc of p was declared down.
func (p *peer) isRefused(inc uint64) bool {
	r := p.refused.Load()
	return r != nil && slices.Contains(*r, inc)
}

// liftDownFor lifts a NodeDownIncarnation when another incarnation (not
// refused: the caller checked) says hello. A plain NodeDown stays.
func (p *peer) liftDownFor(inc uint64) bool {
	if !p.downUntilNew.Load() || p.isRefused(inc) {
		return false
	}
	p.downUntilNew.Store(false)
	p.down.Store(false)
	return true
}
