package engine

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// The read side, shared by both read modes (Config.ReadMode): gnet's event
// loops (loop.go) and the netpoller readers (netpoll.go) both hand a
// connection's buffered bytes to traffic, and its end to connClosed. All
// of it runs on the goroutine that reads the connection, which alone
// touches the conn's loop-side fields. Comments across the engine that say
// "the loop" or "an event loop" mean that goroutine, in either mode: it
// must never block, and what it hands to other goroutines it copies.

// inbound is the bytes a connection has received and not yet consumed:
// gnet's buffer on an event loop (gnet.Conn implements it), a netReader's
// own on a netpoller reader. Peek(-1) returns all of them, aliasing the
// buffer until the next Discard or read; Discard(k) consumes k of them.
type inbound interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	InboundBuffered() int
	RemoteAddr() net.Addr
}

// keepBufferMax is the largest read buffer a connection keeps once it is
// empty: one huge frame must not pin its size for the connection's life.
const keepBufferMax = 4 << 20

// traffic handles the whole frames buffered in in and consumes them. It
// reports false when the connection must close (the reason is logged and
// counted already); frames alias in's buffer only while they are handled.
// The replies inline handlers made meanwhile go out together at the end,
// one write per reply connection (conn.sendCorked).
func (n *Node) traffic(c *conn, in inbound) bool {
	ok := n.trafficFrames(c, in)
	c.uncorkAll()
	return ok
}

// trafficFrames is traffic before the corked replies are written.
func (n *Node) trafficFrames(c *conn, in inbound) bool {
	if c.wclosedFast() {
		return false // closed by the node (NodeDown, a loss): serve nothing more from it
	}
	// A large frame arrives over many reads; parse only once it is whole, so
	// the buffer does not re-assemble a growing prefix on every read.
	if c.need > 0 && in.InboundBuffered() < c.need {
		return true
	}
	if c.rx != nil {
		return n.trafficSealed(c, in)
	}
	buf, _ := in.Peek(-1)
	off, err := c.readFrames(buf)
	if err != nil {
		if errors.Is(err, framing.ErrBadVersion) && !c.outbound && c.peer == nil {
			// A hello whose header is of another version: still answer,
			// so the dialler learns "version", not "node down".
			err = n.rejectHello(c, refused(framing.RefuseVersion, fmt.Sprintf("this node speaks protocol version %d", n.version), err))
		}
		n.closeReason(c, in, err)
		return false
	}
	c.need = 0
	if c.rx != nil {
		// The handshake just switched this connection to encrypted records;
		// what follows the confirmation in this buffer is already sealed.
		if off > 0 {
			_, _ = in.Discard(off)
		}
		return n.trafficSealed(c, in)
	}
	if rest := buf[off:]; len(rest) >= framing.HeaderSize {
		c.need, _ = c.dec.Need(rest) // errors surface on the next full parse
	}
	if off > 0 {
		_, _ = in.Discard(off) // careful: gnet's Discard(0) drops everything buffered
	}
	return true
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

// trafficSealed opens the encrypted records buffered in in into c.plain
// and handles the frames in it. Payloads alias c.plain, which is reused only
// once they have been handled or copied.
func (n *Node) trafficSealed(c *conn, in inbound) bool {
	buf, _ := in.Peek(-1)
	var used, need int
	var err error
	c.plain, used, need, err = openRecords(c.plain, c.rx, buf)
	if used > 0 {
		_, _ = in.Discard(used)
	}
	if err != nil {
		n.m.authFailures.Inc()
		n.closeReason(c, in, err)
		return false
	}
	c.need = need
	off, err := c.readFramesPlain()
	if err != nil {
		n.closeReason(c, in, err)
		return false
	}
	// Keep the unparsed tail at the front of the buffer.
	c.plainOff += off
	if c.plainOff == len(c.plain) {
		c.plain, c.plainOff = c.plain[:0], 0
	} else if c.plainOff > len(c.plain)/2 {
		k := copy(c.plain, c.plain[c.plainOff:])
		c.plain, c.plainOff = c.plain[:k], 0
	}
	if cap(c.plain) > keepBufferMax && len(c.plain) == 0 {
		c.plain = nil // one huge frame passed; do not pin its buffer
	}
	return true
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

// closeReason logs why the reader closes a connection and counts it.
func (n *Node) closeReason(c *conn, in inbound, err error) {
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
	n.log.Warn("closing connection", "remote", in.RemoteAddr(), "peer", c.peerNum(), "err", err)
}

// errGoAway is a peer closing a connection on purpose: no violation.
var errGoAway = errors.New("peer said goaway")

// connClosed is the end of a connection, once, on the goroutine that read
// it: err is why (nil: closed on purpose). The link it belonged to is lost
// unless the node is closing.
func (n *Node) connClosed(c *conn, err error) {
	c.markClosed()
	if !c.outbound {
		n.accepted.Add(-1)
		n.pendingMu.Lock()
		n.unpendLocked(c)
		n.pendingMu.Unlock()
	}
	p := c.peer
	if p == nil || !c.ready {
		return
	}
	if c.outbound {
		if !p.out[c.channel].CompareAndSwap(c, nil) {
			// Never published (a dial that gave up or lost its link), or
			// already unpublished by the end of its link: its close is no
			// news about the current link.
			return
		}
	} else {
		p.mu.Lock()
		delete(p.inbound, c)
		p.mu.Unlock()
		if c.superseded.Load() {
			return // it left the link when a newer one replaced it
		}
	}
	if errors.Is(err, io.EOF) && p.draining.Load() && n.repliesOpen(p, c.linkGen) {
		// A draining peer closing (Shutdown) after writing its last
		// replies: each connection's replies come before its end, but
		// other connections' readers may not have read theirs yet. The
		// last of the connections this node dialled, after its last
		// reply, ends the link.
		return
	}
	if !n.closed.Load() {
		if err == nil {
			err = errors.New("connection closed")
		}
		n.peerLost(p, c.linkGen, fmt.Errorf("%s connection lost: %w", c.channel, err))
	}
}

// repliesOpen reports whether p still has a connection of link gen that
// this node dialled open: one on which replies may still arrive.
func (n *Node) repliesOpen(p *peer, gen uint64) bool {
	for i := range p.out {
		if c := p.out[i].Load(); c != nil && c.linkGen == gen && !c.wclosedFast() {
			return true
		}
	}
	return false
}

// shedLateHandshakes closes accepted connections that have not finished
// their handshake within HandshakeTimeout, and says when to look again.
// gnet's ticker runs it with event loops, routineTick with netpoller readers.
func (n *Node) shedLateHandshakes() time.Duration {
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
	return min(n.cfg.HandshakeTimeout/4, time.Second)
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
		if c.outbound {
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
		// Replies come back on the connection their requests went out
		// on, so at their requests' priority.
		if !c.outbound {
			return fmt.Errorf("reply on an accepted %s connection", c.channel)
		}
		if !priorityFits(c.channel, f.Priority) {
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
		if c.outbound {
			return fmt.Errorf("cancel frame on a dialled %s connection", c.channel)
		}
		c.n.cancelRequest(c, f.XID)
	case framing.TypeGoAway:
		return errGoAway
	default:
		return fmt.Errorf("unexpected %s frame", f.Type)
	}
	return nil
}
