package engine

import (
	"errors"
	"net"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// acceptLoop accepts TCP connections and hands each to an event loop or a
// netpoller reader (enrollAccepted).
//
// It is the node's own, not gnet's, because running out of descriptors must
// not kill the node: gnet's acceptor ends the whole engine (every member's
// link with it) on the first failed accept. Here, EMFILE or ENFILE sheds
// the connection at the head of the queue — the spare descriptor kept for
// the purpose is freed, the connection accepted and reset, the spare taken
// back — and the loop backs off while the shortage lasts; established
// connections are untouched and accepting resumes on its own once
// descriptors free. MaxConnections sheds earlier still, before the process
// is out of descriptors, so that dials and the rest of the process keep
// some.
func (n *Node) acceptLoop() {
	defer close(n.acceptDone)
	var backoff time.Duration
	for {
		nc, err := n.ln.AcceptTCP()
		if err == nil {
			if n.accepted.Load() >= int64(n.cfg.MaxConnections) {
				n.m.limitConnections.Inc()
				shed(nc)
				continue
			}
			// A netpoller reader needs a second descriptor (its write
			// dup): when accept took the last one, the dup is what runs
			// out, and the shortage is the same as accept's own EMFILE,
			// except that the newcomer has already been shed.
			if err = n.enrollAccepted(nc); err == nil {
				backoff = 0
				continue
			}
		}
		if n.closed.Load() || errors.Is(err, net.ErrClosed) {
			return
		}
		if outOfDescriptors(err) {
			n.m.limitDescriptors.Inc()
			if backoff == 0 {
				n.log.Warn("out of file descriptors: shedding new connections", "err", err)
			}
			if nc == nil { // accept's own failure: the newcomer is still queued
				n.shedWithSpare()
			}
		} else {
			n.log.Warn("accept failed", "err", err)
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), 500*time.Millisecond)
		select {
		case <-time.After(backoff):
		case <-n.ctx.Done():
			return
		}
	}
}

// shed resets a connection the node will not serve: the peer sees the
// refusal at once, and no descriptor lingers in TIME_WAIT.
func shed(nc *net.TCPConn) {
	_ = nc.SetLinger(0)
	_ = nc.Close()
}

// shedWithSpare frees the reserved descriptor to accept and reset the
// connection that found the process out of descriptors, so that it does
// not wait in the queue (and the peer learns at once), then takes the
// spare back; if another thread got there first, the loop runs without a
// spare until it can.
func (n *Node) shedWithSpare() {
	if n.spareFD < 0 {
		n.spareFD, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return
	}
	_ = unix.Close(n.spareFD)
	n.spareFD = -1
	// The connection that failed is still queued, so this does not wait
	// (and Close ends it in any case).
	if nc, err := n.ln.AcceptTCP(); err == nil {
		n.m.limitConnections.Inc()
		shed(nc)
	}
	n.spareFD, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// enrollAccepted starts serving an accepted connection. With event loops
// it hands it to one (OnOpen starts its handshake) and waits until the
// loop has it, so that the queue of connections being handed over never
// grows; with netpoller readers it starts its reader. The connection is
// the node's either way: on error it has been shed, and the error says
// whether the process is out of descriptors.
func (n *Node) enrollAccepted(nc *net.TCPConn) error {
	n.enrollMu.RLock()
	defer n.enrollMu.RUnlock()
	if n.closed.Load() {
		shed(nc)
		return nil
	}
	if n.cfg.ReadMode == ReadNetpoller {
		return n.readAccepted(nc)
	}
	res, err := n.eng.Register(gnet.NewNetConnContext(n.ctx, nc))
	if err != nil {
		shed(nc)
		return nil
	}
	// gnet duplicates the socket and closes nc itself, also on failure.
	// Either duplicate (gnet's, or OnOpen's for the write side) can be the
	// one that finds the process out of descriptors, depending on how many
	// are left; both are the same shortage as accept's own EMFILE and go
	// back to acceptLoop, which counts it once and backs off. (Left in
	// OnOpen, a shortage of exactly two descriptors went uncounted, with
	// a warning per connection and no backoff, for as long as it lasted.)
	r := <-res
	if r.Err == nil {
		if p := n.attachFailed.Swap(nil); p != nil {
			r.Err = *p
		}
	}
	if r.Err == nil {
		return nil
	}
	if outOfDescriptors(r.Err) {
		return r.Err
	}
	n.log.Warn("cannot hand an accepted connection to an event loop", "err", r.Err)
	return nil
}

// outOfDescriptors reports whether err is the process or the system
// running out of file descriptors.
func outOfDescriptors(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)
}

// admitPending records an accepted connection as in its handshake. Two
// bounds apply: per source address (one address opening hundreds of
// connections is an attack or a bug, not a peer) and node-wide (a flood
// from many addresses). At either, the oldest connection still in its
// handshake is shed rather than the newcomer: a member's handshake takes
// milliseconds, so only an idle stranger stays long enough to be oldest,
// and refusing newcomers instead would let strangers keep members out
// until their handshake timeout.
func (n *Node) admitPending(c *conn) {
	var shed []*conn
	n.pendingMu.Lock()
	if n.pendingBySource[c.source] >= n.cfg.MaxUnauthPerSource {
		if v := n.oldestPendingLocked(func(v *conn) bool { return v.bySource && v.source == c.source }); v != nil {
			n.m.limitUnauthPerSource.Inc()
			n.unpendLocked(v)
			shed = append(shed, v)
		}
	}
	if n.pending.Len() >= n.cfg.MaxPendingHandshakes {
		v := n.oldestPendingLocked(func(v *conn) bool { return v.bySource })
		if v == nil {
			v = n.pending.Front().Value.(*conn)
		}
		n.m.limitPending.Inc()
		n.unpendLocked(v)
		shed = append(shed, v)
	}
	c.pendingSince = time.Now()
	c.pendingElem = n.pending.PushBack(c)
	c.bySource = true
	n.pendingBySource[c.source]++
	n.pendingMu.Unlock()
	for _, v := range shed {
		n.log.Debug("shedding a connection still in its handshake to make room", "remote", v.remote, "for", c.remote)
		v.close()
	}
}

// oldestPendingLocked is the oldest connection in its handshake that
// matches, or nil.
func (n *Node) oldestPendingLocked(match func(*conn) bool) *conn {
	for e := n.pending.Front(); e != nil; e = e.Next() {
		if v := e.Value.(*conn); match(v) {
			return v
		}
	}
	return nil
}

// namedMember moves a connection whose hello named a configured member
// (and, with Security, proved it holds that member's key) out of its
// source address's count: the members' own room, which strangers from the
// same address cannot fill.
func (n *Node) namedMember(c *conn) {
	n.pendingMu.Lock()
	if c.pendingElem != nil && c.bySource {
		c.bySource = false
		n.dropSourceLocked(c.source)
	}
	n.pendingMu.Unlock()
}

// unpendLocked forgets a connection that finished (or failed) its handshake.
func (n *Node) unpendLocked(c *conn) {
	if c.pendingElem == nil {
		return
	}
	n.pending.Remove(c.pendingElem)
	c.pendingElem = nil
	if c.bySource {
		c.bySource = false
		n.dropSourceLocked(c.source)
	}
}

func (n *Node) dropSourceLocked(src string) {
	if k := n.pendingBySource[src] - 1; k > 0 {
		n.pendingBySource[src] = k
	} else {
		delete(n.pendingBySource, src)
	}
}

// remoteIP is the address an accepted connection comes from, without its
// port: what MaxUnauthPerSource counts.
func remoteIP(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return a.String()
}
