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
	for n.inflight() > 0 {
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

// admitServing reports false if the node is draining and a request must
// be refused. The request is already counted in its peer's inflight (by
// conn.admit) when this checks, and Shutdown sets draining before it
// reads those counts, so one of the two always sees the other. No counter
// of its own: the common path pays one load of a flag nobody writes.
func (n *Node) admitServing() bool {
	return !n.draining.Load()
}

// doneServing is called by conn.finished for every request that had been
// admitted: while draining, it wakes Shutdown to look at the counts again.
func (n *Node) doneServing() {
	if n.draining.Load() {
		select {
		case n.drainIdle <- struct{}{}:
		default:
		}
	}
}

// inflight is the number of requests admitted from all peers and not yet
// finished (their replies handed to the connection).
func (n *Node) inflight() int64 {
	var sum int64
	for _, p := range *n.peers.Load() {
		sum += p.inflight.Load()
	}
	return sum
}

// repliesPending reports whether any reply is still queued for writing:
// replies travel on the connections peers dialled to this node.
func (n *Node) repliesPending() bool {
	for _, p := range *n.peers.Load() {
		p.mu.Lock()
		conns := make([]*conn, 0, len(p.inbound))
		for c := range p.inbound {
			conns = append(conns, c)
		}
		p.mu.Unlock()
		for _, c := range conns { // not under p.mu: wmu is never taken inside it
			if c.writing() {
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
