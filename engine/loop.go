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
	if _, ok := gc.LocalAddr().(*net.UnixAddr); ok || n.closed.Load() {
		// The loops' own unix listener is private; nothing should come
		// through it (every TCP connection arrives from acceptLoop).
		return nil, gnet.Close
	}
	c := n.newConn(false, nil, 0)
	gc.SetContext(c)
	n.accepted.Add(1) // OnClose undoes it, whatever happens from here
	if err := c.attach(gc); err != nil {
		n.log.Warn("cannot attach accepted connection", "remote", gc.RemoteAddr(), "err", err)
		return nil, gnet.Close
	}
	c.source, c.remote = remoteIP(gc), gc.RemoteAddr().String()
	n.admitPending(c)
	return nil, gnet.None
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
		if errors.Is(err, framing.ErrBadVersion) && !c.outbound && c.peer == nil {
			// A hello whose header is of another version: still answer,
			// so the dialler learns "version", not "node down".
			err = h.n.rejectHello(c, refused(framing.RefuseVersion, fmt.Sprintf("this node speaks protocol version %d", h.n.version), err))
		}
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
	if errors.Is(err, errProbeAnswered) {
		return // a probe connection did its job (incarnation.go)
	}
	switch {
	case errors.Is(err, framing.ErrFrameTooLarge) && !c.ready && !c.outbound:
		n.m.limitHelloSize.Inc()
		n.m.handshakeRejects.Inc()
	case errors.Is(err, framing.ErrFrameTooLarge):
		n.m.limitFrameSize.Inc()
		n.m.badFrames.Inc()
	case errors.Is(err, errCreditExceeded):
		n.m.badFrames.Inc() // limit=credit counted it already
	case errors.Is(err, errConnClosed), errors.Is(err, errGoAway), errors.Is(err, ErrHandshake), errors.Is(err, ErrAuth):
	default:
		n.m.badFrames.Inc()
	}
	if c.ready && !c.outbound && !errors.Is(err, errConnClosed) && !errors.Is(err, errGoAway) {
		// A member that broke the protocol waits before it may come back.
		c.peer.holdOffUntil.Store(time.Now().Add(n.cfg.ViolationHoldOff).UnixNano())
	}
	n.log.Warn("closing connection", "remote", gc.RemoteAddr(), "peer", c.peerNum(), "err", err)
}

// errGoAway is a peer closing a connection on purpose: no violation.
var errGoAway = errors.New("peer said goaway")

func (h *loopHandler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	n := h.n
	c.markClosed()
	if !c.outbound {
		n.accepted.Add(-1)
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
	// Oldest first: stop at the first one still in time.
	for e := n.pending.Front(); e != nil; e = n.pending.Front() {
		c := e.Value.(*conn)
		if !c.pendingSince.Before(limit) {
			break
		}
		n.unpendLocked(c)
		n.m.limitHandshakeTimeout.Inc()
		n.m.handshakeRejects.Inc()
		n.log.Warn("closing connection: no handshake in time", "remote", c.remote, "timeout", n.cfg.HandshakeTimeout)
		c.close()
	}
	n.pendingMu.Unlock()
	return min(n.cfg.HandshakeTimeout/4, time.Second), gnet.None
}

// priorityFits reports whether a request of priority prio belongs on ch:
// priority p travels on ChanPrio1+p-1, priority 0 on a service channel.
func priorityFits(ch Channel, prio uint8) bool {
	if ch <= ChanPrio4 {
		return prio == uint8(ch-ChanPrio1)+1
	}
	return prio == 0
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
		case c.peer != nil && f.Type == framing.TypeConfirm:
			return c.n.acceptConfirm(c, f)
		case c.peer == nil && f.Type == framing.TypeHello:
			return c.n.acceptHello(c, f)
		}
		if c.peer != nil {
			c.n.m.authFailures.Inc() // a dialler that skips the confirmation: a replay
		}
		return c.n.rejectHello(c, refused(framing.RefuseBadHello, fmt.Sprintf("%s frame during the handshake", f.Type),
			fmt.Errorf("%s frame during handshake", f.Type)))
	}
	c.met.framesIn.Inc()
	c.met.bytesIn.Add(framing.HeaderSize + len(f.Payload))
	switch f.Type {
	case framing.TypeRequest, framing.TypeOneWay:
		if c.outbound || c.channel == ChanReply || c.channel == ChanReplyPrio {
			return fmt.Errorf("%s frame on %s connection", f.Type, c.channel)
		}
		if !priorityFits(c.channel, f.Priority) {
			// A priority-0 frame on a priority channel would bypass credit.
			return fmt.Errorf("%s frame of priority %d on %s connection", f.Type, f.Priority, c.channel)
		}
		if svcCh := Channel(f.Service.Channel()); c.channel.IsServiceChannel() && svcCh != c.channel {
			// A service's requests spend its own channel's credit and wait
			// in its own queue: one on another channel would dodge both.
			return fmt.Errorf("%s frame for service %s on %s connection", f.Type, f.Service, c.channel)
		}
		if err := c.spend(frameCost(&f.Header, len(f.Payload))); err != nil {
			return err
		}
		c.n.serveFrame(c, f)
	case framing.TypeReply:
		if c.outbound || (c.channel != ChanReply && c.channel != ChanReplyPrio) {
			return fmt.Errorf("reply on %s connection", c.channel)
		}
		if (c.channel == ChanReplyPrio) != (f.Priority > 0) {
			return fmt.Errorf("reply of priority %d on %s connection", f.Priority, c.channel)
		}
		c.n.completeReply(c, f)
	case framing.TypeCredit:
		if c.credit == nil {
			return fmt.Errorf("credit grant on %s connection that is not throttled", c.channel)
		}
		c.credit.grant(int64(f.Aux))
	case framing.TypeDraining:
		if !c.outbound {
			return fmt.Errorf("draining frame on an accepted connection")
		}
		c.n.peerDraining(c)
	case framing.TypeCancel:
		if c.outbound || c.channel == ChanReply || c.channel == ChanReplyPrio {
			return fmt.Errorf("cancel frame on %s connection", c.channel)
		}
		c.n.cancelRequest(c, f.XID)
	case framing.TypeGoAway:
		return errGoAway
	default:
		return fmt.Errorf("unexpected %s frame", f.Type)
	}
	return nil
}
