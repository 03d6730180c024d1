package engine

import (
	"net"
	"time"

	"github.com/panjf2000/gnet/v2"
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
		n.attachFailed.Store(&err) // enrollAccepted reports it to acceptLoop
		return nil, gnet.Close
	}
	c.source, c.remote = remoteIP(gc.RemoteAddr()), gc.RemoteAddr().String()
	n.admitPending(c)
	return nil, gnet.None
}

func (h *loopHandler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok || !h.n.traffic(c, gc) {
		return gnet.Close
	}
	return gnet.None
}

func (h *loopHandler) OnClose(gc gnet.Conn, err error) gnet.Action {
	if c, ok := gc.Context().(*conn); ok {
		h.n.connClosed(c, err)
	}
	return gnet.None
}

// OnTick sheds accepted connections that have not said hello in time.
func (h *loopHandler) OnTick() (time.Duration, gnet.Action) {
	n := h.n
	n.bootOnce.Do(func() { close(n.booted) })
	return n.shedLateHandshakes(), gnet.None
}
