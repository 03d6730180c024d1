package engine

import (
	"context"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// Graceful drain (issue 9 point 7).
//
// Shutdown marks the node draining, tells every peer with a TypeDraining
// frame on each connection the peer dialled to it, refuses requests that
// still arrive with StatusShuttingDown, waits for the handlers already
// admitted to return and their replies to be written, then closes. A peer
// that has the frame fails new calls to this node at once with
// ErrShuttingDown, until the link ends (this node closes, or restarts).

// Shutdown stops the node gracefully: no new requests are taken (peers
// learn it and fail new calls with ErrShuttingDown), running handlers
// finish and their replies go out, then the node closes as Close does. If
// ctx ends first, Shutdown closes at once and returns ctx's error. Close
// remains the immediate stop; calling it during Shutdown cuts it short.
func (n *Node) Shutdown(ctx context.Context) error {
	if n.closed.Load() {
		return n.Close()
	}
	n.draining.Store(true)
	n.announceDraining()
	for n.serving.Load() > 0 {
		select {
		case <-n.drainIdle:
		case <-ctx.Done():
			_ = n.Close()
			return ctx.Err()
		case <-n.done:
			return n.Close()
		}
	}
	// Every reply has been handed to its connection; wait for the writes.
	// Short, and only on the way out: polling is simpler than a signal
	// from every flusher.
	for n.repliesPending() {
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			_ = n.Close()
			return ctx.Err()
		}
	}
	return n.Close()
}

// announceDraining sends TypeDraining on every connection a peer dialled
// to this node, so that each peer stops calling. Best effort: a peer that
// misses it has its requests refused with StatusShuttingDown instead.
func (n *Node) announceDraining() {
	for _, p := range *n.peers.Load() {
		p.mu.Lock()
		conns := make([]*conn, 0, len(p.inbound))
		for c := range p.inbound {
			conns = append(conns, c)
		}
		p.mu.Unlock()
		for _, c := range conns {
			h := framing.Header{Type: framing.TypeDraining}
			_ = c.send(nil, &h, nil)
		}
	}
}

// peerDraining records a TypeDraining from c's peer: calls to it fail fast
// with ErrShuttingDown until this link ends.
func (n *Node) peerDraining(c *conn) {
	p := c.peer
	p.mu.Lock()
	if c.linkGen == p.linkGen.Load() {
		p.draining.Store(true)
	}
	p.mu.Unlock()
	n.log.Info("peer is shutting down", "peer", p.num)
}

// admitServing counts a request about to be served, or reports false if
// the node is draining and the request must be refused. The count is taken
// before the check and Shutdown sets draining before it reads the count,
// so one of the two always sees the other.
func (n *Node) admitServing() bool {
	n.serving.Add(1)
	if n.draining.Load() {
		n.doneServing()
		return false
	}
	return true
}

// doneServing ends what admitServing counted, once its reply is sent.
func (n *Node) doneServing() {
	if n.serving.Add(-1) == 0 && n.draining.Load() {
		select {
		case n.drainIdle <- struct{}{}:
		default:
		}
	}
}

// repliesPending reports whether any reply is still queued for writing.
func (n *Node) repliesPending() bool {
	for _, p := range *n.peers.Load() {
		for i := range p.replies {
			q := &p.replies[i]
			q.mu.Lock()
			busy := q.draining
			q.mu.Unlock()
			if busy {
				return true
			}
		}
		for _, ch := range [...]Channel{ChanReply, ChanReplyPrio} {
			if c := p.out[ch].Load(); c != nil && c.writing() {
				return true
			}
		}
	}
	return false
}

// writing reports whether frames are still queued on c or being written.
func (c *conn) writing() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return !c.wclosed && (c.flushing || c.batch.Len() > 0)
}
