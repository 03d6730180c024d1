package engine

import (
	"errors"
	"fmt"
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
	n.pendingMu.Lock()
	n.pending[c] = time.Now()
	n.pendingMu.Unlock()
	return nil, gnet.None
}

func (h *loopHandler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.Close
	}
	// A large frame arrives over many reads; parse only once it is whole, so
	// gnet does not re-assemble a growing prefix on every read.
	if c.need > 0 && gc.InboundBuffered() < c.need {
		return gnet.None
	}
	buf, _ := gc.Peek(-1)
	off := 0
	for {
		f, k, err := c.dec.Next(buf[off:])
		if err != nil {
			h.n.m.badFrames.Inc()
			h.n.log.Warn("closing connection: bad frame", "remote", gc.RemoteAddr(), "peer", c.peerNum(), "err", err)
			return gnet.Close
		}
		if k == 0 {
			break
		}
		off += k
		if err := c.handleFrame(&f); err != nil {
			h.n.log.Warn("closing connection", "remote", gc.RemoteAddr(), "peer", c.peerNum(), "err", err)
			return gnet.Close
		}
		if c.wclosedFast() {
			return gnet.Close
		}
	}
	c.need = 0
	if rest := buf[off:]; len(rest) >= framing.HeaderSize {
		c.need, _ = c.dec.Need(rest) // errors surface on the next full parse
	}
	if off > 0 {
		_, _ = gc.Discard(off) // careful: gnet's Discard(0) drops everything buffered
	}
	return gnet.None
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
		delete(n.pending, c)
		n.pendingMu.Unlock()
	}
	p := c.peer
	if p == nil || !c.ready {
		return gnet.None
	}
	if c.outbound {
		p.out[c.channel].CompareAndSwap(c, nil)
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
			delete(n.pending, c)
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
func (c *conn) wclosedFast() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.wclosed
}

// handleFrame acts on one frame read by the event loop. An error closes
// the connection.
func (c *conn) handleFrame(f *framing.Frame) error {
	if !c.ready {
		if c.outbound || f.Type != framing.TypeHello {
			c.n.m.handshakeRejects.Inc()
			return fmt.Errorf("%s frame before handshake", f.Type)
		}
		return c.n.acceptHello(c, f)
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
