package engine

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/flynn/noise"
	"github.com/panjf2000/gnet/v2"

	"github.com/clusterinfra/ci/framing"
)

// maxHelloFrame bounds the payload of the frames of a handshake (hello,
// acknowledgement, confirmation): a hello with the longest cluster name and
// authentication blob, and room for its fixed fields.
const maxHelloFrame = framing.MaxHelloAuth + framing.MaxClusterName + 64

// acceptHello checks a dialler's hello on the event loop. A connection from
// another cluster, an unknown node, a node that thinks it is calling someone
// else, or another protocol version is refused before any service sees a
// byte of it. With Security, the hello must also carry the first message of
// a Noise handshake that proves the dialler holds the node key of the
// member it claims to be and the cluster key; the connection becomes usable
// only when the dialler's confirmation arrives (acceptConfirm).
func (n *Node) acceptHello(c *conn, f *framing.Frame) error {
	hello, err := framing.DecodeHello(f.Payload)
	if err != nil {
		return n.rejectHello(c, err)
	}
	if hello.Version != framing.ProtocolVersion {
		return n.rejectHello(c, fmt.Errorf("protocol version %d, this node speaks %d", hello.Version, framing.ProtocolVersion))
	}
	if hello.Cluster != n.cfg.Cluster {
		return n.rejectHello(c, fmt.Errorf("cluster %q, this node is in %q", hello.Cluster, n.cfg.Cluster))
	}
	if NodeNum(hello.To) != n.cfg.Node {
		return n.rejectHello(c, fmt.Errorf("dialler wanted node %d, this is node %d", hello.To, n.cfg.Node))
	}
	p := n.peer(NodeNum(hello.From))
	if p == nil {
		return n.rejectHello(c, fmt.Errorf("node %d is not a configured member", hello.From))
	}
	if int(hello.Channel) >= n.cfg.MaxChannels {
		return n.rejectHello(c, fmt.Errorf("channel %d out of 0..%d", hello.Channel, n.cfg.MaxChannels-1))
	}
	if p.down.Load() {
		// Declared down (CLMS's NODEDOWN): it may come back only after NodeUp,
		// and must not reach a handler meanwhile.
		return n.rejectHello(c, fmt.Errorf("node %d is declared down", p.num))
	}
	if until := p.holdOffUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		n.m.limitViolationHoldOff.Inc()
		return n.rejectHello(c, fmt.Errorf("node %d broke the protocol; held off for %v", p.num, n.cfg.ViolationHoldOff))
	}
	ch := Channel(hello.Channel)
	if k := n.inboundOn(p, ch); k >= n.cfg.MaxConnsPerChannel {
		// Each would get a window of its own. (becomeReady checks again,
		// race-free; this refuses before any work, and clearly.)
		n.m.limitConnsPerChannel.Inc()
		return n.rejectHello(c, fmt.Errorf("node %d already has %d connections on %s", p.num, k, ch))
	}
	c.peer, c.channel, c.incarnation = p, ch, hello.Incarnation
	c.met = n.m.forConn(n.cfg.Node, p.num, ch)
	ack := *n.hello(p.num, ch)
	if sec := n.sec.Load(); sec != nil {
		// The key exchange costs ~0.3 ms of CPU: a handshake worker does
		// it, off the loop, and only as often as the rate limit allows.
		return n.queueNoise(c, sec, hello, ack)
	}
	n.namedMember(c)
	payload, _ := framing.AppendHello(nil, &ack)
	h := framing.Header{Type: framing.TypeHelloAck}
	if err := c.send(nil, &h, payload); err != nil {
		return err
	}
	return n.becomeReady(c)
}

// acceptConfirm checks the dialler's third handshake message: only a
// dialler that completed the key exchange can produce it, which a replay of
// a recorded first message cannot.
func (n *Node) acceptConfirm(c *conn, f *framing.Frame) error {
	ss := c.session.Load()
	if ss == nil {
		// Before our answer: not a dialler that read it, a replay.
		n.m.authFailures.Inc()
		return n.rejectHello(c, fmt.Errorf("node %d: %w", c.peer.num, errBadConfirm))
	}
	if err := ss.checkConfirm(f.Payload); err != nil {
		n.m.authFailures.Inc()
		return n.rejectHello(c, fmt.Errorf("node %d: %w", c.peer.num, err))
	}
	if n.sec.Load().Mode == SecurityEncrypt {
		tx, rx, err := ss.recordCiphers()
		if err != nil {
			return n.rejectHello(c, err)
		}
		c.rx = rx
		c.wmu.Lock()
		c.tx = tx
		c.wmu.Unlock()
	}
	c.session.Store(nil)
	return n.becomeReady(c)
}

// rejectHello refuses a connection: a bare refusal for the dialler's
// benefit, a log line and a metric, then the close.
func (n *Node) rejectHello(c *conn, why error) error {
	n.m.handshakeRejects.Inc()
	h := framing.Header{Type: framing.TypeHelloAck, Status: uint16(StatusAuthError)}
	var b [framing.HeaderSize]byte
	h.Encode(b[:])
	c.wmu.Lock()
	if c.fd >= 0 && c.tx == nil {
		_, _ = c.writev(c.fd, [][]byte{b[:]}) // best effort: tell the dialler it was refused
	}
	c.wmu.Unlock()
	c.markClosed()
	return fmt.Errorf("%w: %w", ErrHandshake, why)
}

// becomeReady puts an accepted, authenticated connection to work: it joins
// the peer's link, grants credit on throttled channels, and dials the reply
// channel the peer's requests will want.
func (n *Node) becomeReady(c *conn) error {
	p, ch := c.peer, c.channel
	c.ready = true
	c.dec.MaxPayload = uint32(n.cfg.MaxPayload)
	n.pendingMu.Lock()
	n.unpendLocked(c)
	n.pendingMu.Unlock()
	w := n.cfg.window(ch)
	if w > 0 {
		c.recv = newRecvCredit(w, n.cfg.MaxCreditWindow) // before joinLink publishes c to the gauges
	}
	c.linkGen = n.joinLink(p, c.incarnation, c)
	if k := n.inboundOn(p, ch); k > n.cfg.MaxConnsPerChannel {
		// Counted after joining, so two racing handshakes cannot both
		// slip under the bound. Not ready: its close is no link loss.
		p.mu.Lock()
		delete(p.inbound, c)
		p.mu.Unlock()
		c.ready = false
		n.m.limitConnsPerChannel.Inc()
		return n.rejectHello(c, fmt.Errorf("node %d already has %d connections on %s", p.num, k-1, ch))
	}
	if w > 0 {
		n.m.watchReceiveWindow(n, p, ch)
		c.sendGrant(int64(w))
	}
	// Requests from p will want replies: dial the reply channel now rather
	// than on the first reply, which may be sent from an event loop.
	if reply := replyChannelFor(ch); reply != ch && p.out[reply].Load() == nil && !p.down.Load() {
		n.goOwned(func() {
			ctx, cancel := context.WithTimeout(n.ctx, n.cfg.DialTimeout)
			defer cancel()
			_, _ = n.outConn(ctx, p, reply)
		})
	}
	n.log.Debug("accepted connection", "peer", p.num, "channel", ch)
	return nil
}

// inboundOn counts p's accepted connections on ch.
func (n *Node) inboundOn(p *peer, ch Channel) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := 0
	for c := range p.inbound {
		if c.channel == ch {
			k++
		}
	}
	return k
}

// replyChannelFor is the channel replies to requests received on ch use.
func replyChannelFor(ch Channel) Channel {
	switch {
	case ch == ChanReply || ch == ChanReplyPrio:
		return ch
	case ch <= ChanPrio4:
		return ChanReplyPrio
	}
	return ChanReply
}

func (n *Node) hello(to NodeNum, ch Channel) *framing.Hello {
	return &framing.Hello{
		Version:     framing.ProtocolVersion,
		From:        uint32(n.cfg.Node),
		To:          uint32(to),
		Channel:     uint8(ch),
		Incarnation: n.incarnation,
		Cluster:     n.cfg.Cluster,
	}
}

// outConn returns the connection this node sends to p on ch, dialling it if
// needed. Concurrent callers share one dial.
func (n *Node) outConn(ctx context.Context, p *peer, ch Channel) (*conn, error) {
	if c := p.out[ch].Load(); c != nil {
		return c, nil
	}
	for {
		if n.closed.Load() {
			return nil, ErrClosed
		}
		if p.down.Load() {
			return nil, fmt.Errorf("%w: node %d", ErrNodeDown, p.num)
		}
		p.mu.Lock()
		if c := p.out[ch].Load(); c != nil {
			p.mu.Unlock()
			return c, nil
		}
		if w := p.dialing[ch]; w != nil {
			p.mu.Unlock()
			select {
			case <-w:
				continue
			case <-ctx.Done():
				return nil, ctxError(ctx)
			}
		}
		w := make(chan struct{})
		p.dialing[ch] = w
		p.mu.Unlock()

		c, err := n.dial(ctx, p, ch)

		p.mu.Lock()
		p.dialing[ch] = nil
		close(w)
		if err == nil {
			if c.linkGen != p.linkGen.Load() || n.closed.Load() {
				err = fmt.Errorf("%w: node %d: link lost while dialling", ErrNodeDown, p.num)
				c.close()
			} else {
				p.out[ch].Store(c)
			}
		}
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// dial connects to p for channel ch, does the handshake on the plain socket
// and then hands the socket to a gnet event loop.
func (n *Node) dial(ctx context.Context, p *peer, ch Channel) (*conn, error) {
	addr := *p.addr.Load()
	dctx, cancel := context.WithTimeout(n.ctx, n.cfg.DialTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()

	d := net.Dialer{LocalAddr: n.localDialAddr()}
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctxError(ctx)
		}
		return nil, fmt.Errorf("%w: node %d at %s: %v", ErrNodeDown, p.num, addr, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = nc.Close()
		}
	}()
	if dl, has := dctx.Deadline(); has {
		_ = nc.SetDeadline(dl)
	}
	mine := n.hello(p.num, ch)
	sec := n.sec.Load()
	var hs *noise.HandshakeState
	if sec != nil {
		if hs, mine.Auth, err = sec.initiate(p.num, *mine); err != nil {
			return nil, fmt.Errorf("%w: node %d: %v", ErrHandshake, p.num, err)
		}
	}
	hello, _ := framing.AppendHello(make([]byte, framing.HeaderSize, 256), mine)
	h := framing.Header{Type: framing.TypeHello, Length: uint32(len(hello) - framing.HeaderSize)}
	h.Encode(hello)
	if _, err := nc.Write(hello); err != nil {
		return nil, fmt.Errorf("%w: node %d at %s: handshake: %v", ErrNodeDown, p.num, addr, err)
	}
	var hb [framing.HeaderSize]byte
	if _, err := io.ReadFull(nc, hb[:]); err != nil {
		return nil, fmt.Errorf("%w: node %d at %s: no handshake answer: %v", ErrNodeDown, p.num, addr, err)
	}
	ah, err := framing.DecodeHeader(hb[:], framing.MaxHelloAuth+framing.MaxClusterName+64)
	if err != nil || ah.Type != framing.TypeHelloAck {
		return nil, fmt.Errorf("%w: node %d at %s: bad handshake answer (%v)", ErrHandshake, p.num, addr, err)
	}
	if ah.Status != 0 {
		return nil, fmt.Errorf("%w: node %d at %s refused us: %v (wrong cluster, unknown node or version?)", ErrHandshake, p.num, addr, Status(ah.Status).Err())
	}
	payload := make([]byte, ah.Length)
	if _, err := io.ReadFull(nc, payload); err != nil {
		return nil, fmt.Errorf("%w: node %d at %s: short handshake answer: %v", ErrNodeDown, p.num, addr, err)
	}
	ack, err := framing.DecodeHello(payload)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: node %d at %s: %v", ErrHandshake, p.num, addr, err)
	case ack.Version != framing.ProtocolVersion:
		return nil, fmt.Errorf("%w: node %d at %s speaks version %d, we speak %d", ErrVersMismatch, p.num, addr, ack.Version, framing.ProtocolVersion)
	case ack.Cluster != n.cfg.Cluster || NodeNum(ack.From) != p.num || NodeNum(ack.To) != n.cfg.Node || Channel(ack.Channel) != ch:
		return nil, fmt.Errorf("%w: %s answered as node %d of cluster %q, expected node %d of %q", ErrHandshake, addr, ack.From, ack.Cluster, p.num, n.cfg.Cluster)
	}
	var ss session
	if sec != nil {
		var confirm []byte
		if ss, confirm, err = sec.finishInitiate(hs, ack); err != nil {
			return nil, fmt.Errorf("%w: node %d at %s: %v", ErrHandshake, p.num, addr, err)
		}
		ch := framing.Header{Type: framing.TypeConfirm, Length: uint32(len(confirm))}
		frame := make([]byte, framing.HeaderSize, framing.HeaderSize+len(confirm))
		ch.Encode(frame)
		if _, err := nc.Write(append(frame, confirm...)); err != nil {
			return nil, fmt.Errorf("%w: node %d at %s: handshake: %v", ErrNodeDown, p.num, addr, err)
		}
	}
	_ = nc.SetDeadline(time.Time{})

	c := n.newConn(true, p, ch)
	if sec != nil && sec.Mode == SecurityEncrypt {
		if c.tx, c.rx, err = ss.recordCiphers(); err != nil {
			return nil, fmt.Errorf("%w: node %d: %v", ErrHandshake, p.num, err)
		}
	}
	if ch.Throttled() {
		// No credit until the acceptor's first grant, right behind its ack.
		c.credit = n.m.newSendCredit(n, p, ch)
	}
	c.linkGen = n.joinLink(p, ack.Incarnation, nil)
	c.ready = true
	// gnet's enrolment waits for the event loop to take the socket; a loop
	// stopped meanwhile would leave that wait hanging for ever. Close waits
	// for enrolments in progress before it stops the loops.
	n.enrollMu.RLock()
	defer n.enrollMu.RUnlock()
	if n.closed.Load() {
		return nil, ErrClosed
	}
	res, err := n.eng.Register(gnet.NewContext(gnet.NewNetConnContext(dctx, nc), c))
	if err != nil {
		return nil, fmt.Errorf("%w: cannot register connection: %v", ErrClosed, err)
	}
	ok = true // gnet duplicates the socket and closes nc itself
	if r := <-res; r.Err != nil {
		return nil, fmt.Errorf("%w: node %d: cannot register connection: %v", ErrCantSend, p.num, r.Err)
	}
	c.wmu.Lock()
	attached := c.fd >= 0
	c.wmu.Unlock()
	if !attached {
		// gnet reports success even when registering with epoll failed and
		// OnOpen never ran; such a connection can never carry a frame.
		c.close()
		return nil, fmt.Errorf("%w: node %d: the event loop did not take the connection", ErrCantSend, p.num)
	}
	n.log.Debug("dialled connection", "peer", p.num, "channel", ch)
	return c, nil
}

// localDialAddr binds outgoing connections to the node's own IP when it
// listens on a specific one, so that peers (and netstat) see each node of a
// 127.0.0.x test cluster as itself.
func (n *Node) localDialAddr() net.Addr {
	host, _, err := net.SplitHostPort(n.cfg.ListenAddr)
	if err != nil {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return nil
	}
	return &net.TCPAddr{IP: ip}
}
