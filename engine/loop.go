package engine

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/clusterinfra/ci/framing"
)

// loopHandler is the node's gnet event handler. Its methods run on event
// loops and never block: frames are parsed in place, short handlers run
// inline, everything else is handed to server handles.
type loopHandler struct {
	gnet.BuiltinEventEngine
	n *Node
}

func (h *loopHandler) OnBoot(eng gnet.Engine) gnet.Action {
	h.n.boot(eng)
	return gnet.None
}

func (h *loopHandler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	n := h.n
	if c, ok := gc.Context().(*conn); ok {
		// One we dialled; the handshake is already done.
		if err := c.attach(gc); err != nil {
			n.log.Warn("cannot attach dialled connection", "peer", c.peer.num, "err", err)
			return nil, gnet.Close
		}
		return nil, gnet.None
	}
	if n.closed.Load() {
		return nil, gnet.Close
	}
	c := n.newConn(false, nil, 0)
	gc.SetContext(c)
	if err := c.attach(gc); err != nil {
		n.log.Warn("cannot attach accepted connection", "remote", gc.RemoteAddr(), "err", err)
		return nil, gnet.Close
	}
	// Count unauthenticated connections per source address: one address
	// opening hundreds of them is an attack or a bug, not a peer.
	c.source = remoteIP(gc)
	n.pendingMu.Lock()
	if n.pendingBySource[c.source] >= n.cfg.MaxUnauthPerSource {
		n.pendingMu.Unlock()
		n.m.limitUnauthPerSource.Inc()
		n.log.Warn("refusing connection: too many unauthenticated connections from one address",
			"remote", gc.RemoteAddr(), "limit", n.cfg.MaxUnauthPerSource)
		return nil, gnet.Close
	}
	n.pending[c] = time.Now()
	n.pendingBySource[c.source]++
	n.pendingMu.Unlock()
	return nil, gnet.None
}

// unpendLocked forgets a connection that finished (or failed) its handshake.
func (n *Node) unpendLocked(c *conn) {
	if _, ok := n.pending[c]; !ok {
		return
	}
	delete(n.pending, c)
	if k := n.pendingBySource[c.source] - 1; k > 0 {
		n.pendingBySource[c.source] = k
	} else {
		delete(n.pendingBySource, c.source)
	}
}

func remoteIP(gc gnet.Conn) string {
	if a, ok := gc.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return gc.RemoteAddr().String()
}

func (h *loopHandler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok || c.wclosedFast() {
		return gnet.Close // closed by the node (NodeDown, a loss): serve nothing more from it
	}
	// A large frame arrives over many reads; parse only once it is whole, so
	// gnet does not re-assemble a growing prefix on every read.
	if c.need > 0 && gc.InboundBuffered() < c.need {
		return gnet.None
	}
	if c.rx != nil {
		return h.n.trafficSealed(c, gc)
	}
	buf, _ := gc.Peek(-1)
	off, err := c.readFrames(buf)
	if err != nil {
		h.n.closeReason(c, gc, err)
		return gnet.Close
	}
	c.need = 0
	if c.rx != nil {
		// The handshake just switched this connection to encrypted records;
		// what follows the confirmation in this buffer is already sealed.
		if off > 0 {
			_, _ = gc.Discard(off)
		}
		return h.n.trafficSealed(c, gc)
	}
	if rest := buf[off:]; len(rest) >= framing.HeaderSize {
		c.need, _ = c.dec.Need(rest) // errors surface on the next full parse
	}
	if off > 0 {
		_, _ = gc.Discard(off) // careful: gnet's Discard(0) drops everything buffered
	}
	return gnet.None
}

// readFrames handles the whole frames at the start of buf and returns the
// bytes they took. It stops early when the connection switches to
// encrypted records.
func (c *conn) readFrames(buf []byte) (int, error) {
	off := 0
	for c.rx == nil {
		f, k, err := c.dec.Next(buf[off:])
		if err != nil {
			return off, err
		}
		if k == 0 {
			break
		}
		off += k
		if err := c.handleFrame(&f); err != nil {
			return off, err
		}
		if c.wclosedFast() {
			return off, errConnClosed
		}
	}
	return off, nil
}

// trafficSealed opens the encrypted records gnet has buffered into c.plain
// and handles the frames in it. Payloads alias c.plain, which is reused only
// once they have been handled or copied.
func (n *Node) trafficSealed(c *conn, gc gnet.Conn) gnet.Action {
	buf, _ := gc.Peek(-1)
	var used, need int
	var err error
	c.plain, used, need, err = openRecords(c.plain, c.rx, buf)
	if used > 0 {
		_, _ = gc.Discard(used)
	}
	if err != nil {
		n.m.authFailures.Inc()
		n.closeReason(c, gc, err)
		return gnet.Close
	}
	c.need = need
	off, err := c.readFramesPlain()
	if err != nil {
		n.closeReason(c, gc, err)
		return gnet.Close
	}
	// Keep the unparsed tail at the front of the buffer.
	c.plainOff += off
	if c.plainOff == len(c.plain) {
		c.plain, c.plainOff = c.plain[:0], 0
	} else if c.plainOff > len(c.plain)/2 {
		k := copy(c.plain, c.plain[c.plainOff:])
		c.plain, c.plainOff = c.plain[:k], 0
	}
	if cap(c.plain) > 4<<20 && len(c.plain) == 0 {
		c.plain = nil // one huge frame passed; do not pin its buffer
	}
	return gnet.None
}

func (c *conn) readFramesPlain() (int, error) {
	buf := c.plain[c.plainOff:]
	off := 0
	for {
		f, k, err := c.dec.Next(buf[off:])
		if err != nil {
			return off, err
		}
		if k == 0 {
			return off, nil
		}
		off += k
		if err := c.handleFrame(&f); err != nil {
			return off, err
		}
		if c.wclosedFast() {
			return off, errConnClosed
		}
	}
}

// closeReason logs why the loop closes a connection and counts it.
func (n *Node) closeReason(c *conn, gc gnet.Conn, err error) {
	switch {
	case errors.Is(err, framing.ErrFrameTooLarge):
		n.m.limitFrameSize.Inc()
		n.m.badFrames.Inc()
	case errors.Is(err, errConnClosed), errors.Is(err, ErrHandshake), errors.Is(err, ErrAuth):
	default:
		n.m.badFrames.Inc()
	}
	n.log.Warn("closing connection", "remote", gc.RemoteAddr(), "peer", c.peerNum(), "err", err)
}

func (h *loopHandler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	n := h.n
	c.markClosed()
	if !c.outbound {
		n.pendingMu.Lock()
		n.unpendLocked(c)
		n.pendingMu.Unlock()
	}
	p := c.peer
	if p == nil || !c.ready {
		return gnet.None
	}
	if c.outbound {
		if !p.out[c.channel].CompareAndSwap(c, nil) {
			// Never published (a dial that gave up or lost its link), or
			// already unpublished by the end of its link: its close is no
			// news about the current link.
			return gnet.None
		}
	} else {
		p.mu.Lock()
		delete(p.inbound, c)
		p.mu.Unlock()
	}
	if !n.closed.Load() {
		if err == nil {
			err = errors.New("connection closed")
		}
		n.peerLost(p, c.linkGen, fmt.Errorf("%s connection lost: %w", c.channel, err))
	}
	return gnet.None
}

// OnTick sheds accepted connections that have not said hello in time.
func (h *loopHandler) OnTick() (time.Duration, gnet.Action) {
	n := h.n
	n.bootOnce.Do(func() { close(n.booted) })
	limit := time.Now().Add(-n.cfg.HandshakeTimeout)
	n.pendingMu.Lock()
	for c, t := range n.pending {
		if t.Before(limit) {
			n.unpendLocked(c)
			n.m.limitHandshakeTimeout.Inc()
			n.m.handshakeRejects.Inc()
			n.log.Warn("closing connection: no handshake in time", "remote", c.gc.RemoteAddr(), "timeout", n.cfg.HandshakeTimeout)
			c.close()
		}
	}
	n.pendingMu.Unlock()
	return min(n.cfg.HandshakeTimeout/4, time.Second), gnet.None
}

func (c *conn) peerNum() NodeNum {
	if c.peer == nil {
		return 0
	}
	return c.peer.num
}

// wclosedFast reports whether the write side was closed, e.g. by a
// rejected handshake; the loop then closes the connection.
func (c *conn) wclosedFast() bool { return c.dead.Load() }

// handleFrame acts on one frame read by the event loop. An error closes
// the connection.
func (c *conn) handleFrame(f *framing.Frame) error {
	if !c.ready {
		switch {
		case c.outbound:
			return fmt.Errorf("%s frame before handshake", f.Type)
		case c.session != nil && f.Type == framing.TypeConfirm:
			return c.n.acceptConfirm(c, f)
		case c.session == nil && c.peer == nil && f.Type == framing.TypeHello:
			return c.n.acceptHello(c, f)
		}
		c.n.m.handshakeRejects.Inc()
		if c.session != nil {
			c.n.m.authFailures.Inc() // a dialler that skips the confirmation: a replay
		}
		return fmt.Errorf("%w: %s frame during handshake", ErrHandshake, f.Type)
	}
	c.met.framesIn.Inc()
	c.met.bytesIn.Add(framing.HeaderSize + len(f.Payload))
	switch f.Type {
	case framing.TypeRequest, framing.TypeOneWay:
		if c.outbound || c.channel == ChanReply || c.channel == ChanReplyPrio {
			return fmt.Errorf("%s frame on %s connection", f.Type, c.channel)
		}
		c.n.serveFrame(c, f)
	case framing.TypeReply:
		if c.outbound || (c.channel != ChanReply && c.channel != ChanReplyPrio) {
			return fmt.Errorf("reply on %s connection", c.channel)
		}
		c.n.completeReply(c, f)
	case framing.TypeCredit:
		if c.credit == nil {
			return fmt.Errorf("credit grant on %s connection that is not throttled", c.channel)
		}
		c.credit.grant(int64(f.Aux))
	case framing.TypeGoAway:
		return fmt.Errorf("peer said goaway")
	default:
		return fmt.Errorf("unexpected %s frame", f.Type)
	}
	return nil
}
