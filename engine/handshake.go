package engine

import (
	"context"
	"errors"
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
	if hello.Version != n.version {
		return n.rejectHello(c, refused(framing.RefuseVersion, fmt.Sprintf("this node speaks protocol version %d", n.version),
			fmt.Errorf("protocol version %d, this node speaks %d", hello.Version, n.version)))
	}
	if hello.Cluster != n.cfg.Cluster {
		// The dialler learns that its cluster name is wrong, not ours.
		return n.rejectHello(c, refused(framing.RefuseCluster, fmt.Sprintf("cluster %q is not this node's", hello.Cluster),
			fmt.Errorf("cluster %q, this node is in %q", hello.Cluster, n.cfg.Cluster)))
	}
	if NodeNum(hello.To) != n.cfg.Node {
		msg := fmt.Sprintf("dialler wanted node %d, this is node %d", hello.To, n.cfg.Node)
		return n.rejectHello(c, refused(framing.RefuseWrongNode, msg, errors.New(msg)))
	}
	p := n.peer(NodeNum(hello.From))
	if p == nil {
		msg := fmt.Sprintf("node %d is not a member this node knows", hello.From)
		return n.rejectHello(c, refused(framing.RefuseUnknownNode, msg, errors.New(msg)))
	}
	if int(hello.Channel) >= n.cfg.MaxChannels {
		msg := fmt.Sprintf("channel %d out of 0..%d", hello.Channel, n.cfg.MaxChannels-1)
		return n.rejectHello(c, refused(framing.RefuseChannel, msg, errors.New(msg)))
	}
	if ch := Channel(hello.Channel); ch.reserved() {
		msg := fmt.Sprintf("channel %d is reserved: replies travel back on their request's connection", hello.Channel)
		return n.rejectHello(c, refused(framing.RefuseChannel, msg, errors.New(msg)))
	}
	if p.isRefused(hello.Incarnation) {
		// This process was declared down for good (NodeDownIncarnation): it
		// is told, so that it fences itself (CLMS), and never served.
		msg := fmt.Sprintf("incarnation %#x of node %d was declared down here", hello.Incarnation, p.num)
		return n.rejectHello(c, refused(framing.RefuseDeclaredDown, msg, errors.New(msg)))
	}
	if p.down.Load() && !p.liftDownFor(hello.Incarnation) {
		// Declared down (CLMS's NODEDOWN): it may come back only after NodeUp
		// (or, after NodeDownIncarnation, as another incarnation), and must
		// not reach a handler meanwhile.
		msg := fmt.Sprintf("node %d is declared down here", p.num)
		return n.rejectHello(c, refused(framing.RefuseDeclaredDown, msg, errors.New(msg)))
	}
	if sec := n.sec.Load(); sec == nil && len(hello.Auth) > 0 {
		return n.rejectHello(c, refused(framing.RefuseSecurity, "this node runs without security", errors.New("dialler authenticates, this node runs without security")))
	}
	if until := p.holdOffUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		n.m.limitViolationHoldOff.Inc()
		return n.rejectHello(c, fmt.Errorf("node %d broke the protocol; held off for %v", p.num, n.cfg.ViolationHoldOff))
	}
	ch := Channel(hello.Channel)
	if k := n.inboundOn(p, ch); k > n.cfg.MaxConnsPerChannel {
		// Each would get a window of its own. One over the bound may
		// still come: once authenticated, it replaces the oldest
		// (becomeReady), as a member redialling after its side of the
		// link ended does before this side has seen the old one close.
		n.m.limitConnsPerChannel.Inc()
		return n.rejectHello(c, refused(framing.RefuseBusy, "too many connections on this channel", fmt.Errorf("node %d already has %d connections on %s", p.num, k, ch)))
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
	if c.peer.down.Load() {
		// Declared down after its hello: it must not reach a handler.
		msg := fmt.Sprintf("node %d is declared down here", c.peer.num)
		return n.rejectHello(c, refused(framing.RefuseDeclaredDown, msg, errors.New(msg)))
	}
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

// rejectHello refuses a connection: a refusal frame saying why, as far as
// that leaks nothing (see refusalFor), a log line and a metric, then the
// close.
func (n *Node) rejectHello(c *conn, why error) error {
	n.m.handshakeRejects.Inc()
	r := refusalFor(why)
	r.Version = n.version
	var b [framing.HeaderSize + 3 + framing.MaxRefusalDetail]byte
	frame := framing.AppendRefusal(b[:framing.HeaderSize], &r)
	h := framing.Header{Type: framing.TypeRefuse, Length: uint32(len(frame) - framing.HeaderSize)}
	h.Encode(frame)
	c.wmu.Lock()
	if c.fd >= 0 && c.tx == nil {
		_, _ = c.writev(c.fd, [][]byte{frame}) // best effort: tell the dialler why
	}
	c.wmu.Unlock()
	c.markClosed()
	return fmt.Errorf("%w (%s): %w", ErrHandshake, r.Reason, why)
}

// becomeReady puts an accepted, authenticated connection to work: it joins
// the peer's link and grants credit on throttled channels.
func (n *Node) becomeReady(c *conn) error {
	p, ch := c.peer, c.channel
	if ch == ChanCLMSProbe {
		return n.answeredProbe(c)
	}
	c.ready = true
	c.dec.MaxPayload = uint32(n.cfg.MaxPayload)
	n.pendingMu.Lock()
	n.unpendLocked(c)
	n.pendingMu.Unlock()
	w := n.cfg.window(ch)
	if w > 0 {
		c.recv = newRecvCredit(w, n.cfg.MaxCreditWindow) // before joinLink publishes c to the gauges
	}
	if _, err := n.joinLink(p, c.incarnation, c); err != nil { // sets c.linkGen
		c.ready = false // never joined: its close is no link loss
		return n.rejectHello(c, err)
	}
	if old := n.supersede(p, ch); old != nil {
		// Counted after joining, so two racing handshakes cannot both
		// slip under the bound.
		n.m.limitConnsPerChannel.Inc()
		n.log.Debug("a new connection replaces the oldest on its channel", "peer", p.num, "channel", ch, "bound", n.cfg.MaxConnsPerChannel)
		old.close()
	}
	if w > 0 {
		n.m.watchReceiveWindow(n, p, ch)
		c.sendGrant(int64(w))
	}
	n.log.Debug("accepted connection", "peer", p.num, "channel", ch)
	return nil
}

// supersede makes room for a connection p's current run just opened on ch
// past MaxConnsPerChannel: the oldest of p's accepted connections on ch
// leaves the link, and is returned for closing; nil when there is room.
// A dialler keeps one connection per channel and dials another only once
// the first has ended on its side, so the oldest is one whose end this
// node has not seen yet (or a peer opening connection after connection,
// which so gets no more than the bound). Leaving the link, its close is
// no link loss, and replies still due on it are dropped: their callers
// were failed when the dialler's side of it ended.
func (n *Node) supersede(p *peer, ch Channel) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var oldest *conn
	k := 0
	for c := range p.inbound {
		if c.channel != ch {
			continue
		}
		k++
		if oldest == nil || c.pendingSince.Before(oldest.pendingSince) {
			oldest = c
		}
	}
	if k <= n.cfg.MaxConnsPerChannel {
		return nil
	}
	delete(p.inbound, oldest)
	oldest.superseded.Store(true)
	return oldest
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

func (n *Node) hello(to NodeNum, ch Channel) *framing.Hello {
	return &framing.Hello{
		Version:     n.version,
		From:        uint32(n.cfg.Node),
		To:          uint32(to),
		Channel:     uint8(ch),
		Incarnation: n.incarnation,
		Cluster:     n.cfg.Cluster,
	}
}

// outConn returns the connection this node sends to p on ch, dialling it if
// needed. Concurrent callers share one dial, which runs on its own
// goroutine bounded by DialTimeout; each caller waits for it only as long
// as its ctx allows. After a failed dial, dials to p wait out a backoff
// (see peer.dialFailedLocked) and calls meanwhile fail at once.
func (n *Node) outConn(ctx context.Context, p *peer, ch Channel) (*conn, error) {
	if c := p.out[ch].Load(); c != nil {
		return c, nil
	}
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
	d := p.dialing[ch]
	if d == nil {
		if wait := time.Until(p.retryAt); wait > 0 {
			last := p.lastDialErr
			p.mu.Unlock()
			n.m.dialBackoffRefusals.Inc()
			if refusedDial(last) {
				// The peer answered, and said no: that stays the answer (a
				// version mismatch must not read as a dead node), and the
				// error answers one sentinel, not ErrNodeDown too.
				return nil, fmt.Errorf("%w (next dial in %v)", last, wait.Round(time.Millisecond))
			}
			return nil, fmt.Errorf("%w: node %d: next dial in %v after %w", ErrNodeDown, p.num, wait.Round(time.Millisecond), last)
		}
		d = &dialResult{done: make(chan struct{})}
		p.dialing[ch] = d
		if !n.goOwned(func() { n.routineDial(p, ch, d) }) {
			p.dialing[ch] = nil
			p.mu.Unlock()
			return nil, ErrClosed
		}
	}
	p.mu.Unlock()
	select {
	case <-d.done:
		return d.c, d.err
	case <-ctx.Done():
		return nil, ctxError(ctx)
	}
}

// refusedDial reports whether a dial failed on the peer's refusal (its
// handshake said no, or spoke another version), not on the way to it.
func refusedDial(err error) bool {
	switch Code(err) {
	case StatusHandshake, StatusVersMismatch, StatusAuthError:
		return true
	}
	return false
}

// dialResult is the outcome of one dial, shared by every caller waiting for
// it: c and err are written before done closes.
type dialResult struct {
	done chan struct{}
	c    *conn
	err  error
}

// routineDial dials p on ch for outConn's callers, bounded by DialTimeout
// and the node's life, and publishes the connection unless the link ended
// (or p was declared down) while it was being made.
func (n *Node) routineDial(p *peer, ch Channel, d *dialResult) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.DialTimeout)
	defer cancel()
	p.dialAttempts.Inc()
	c, err := n.dial(ctx, p, ch)
	p.mu.Lock()
	p.dialing[ch] = nil
	switch {
	case err != nil:
		if !n.closed.Load() {
			p.dialFailedLocked(n.cfg, err)
		}
	case n.closed.Load():
		err = ErrClosed
	case p.down.Load() || c.linkGen != p.linkGen.Load():
		err = fmt.Errorf("%w: node %d: link lost while dialling", ErrNodeDown, p.num)
	default:
		p.out[ch].Store(c)
		if c.dead.Load() {
			// Its reader saw it end before it was published, and took
			// that for no news (connClosed: a connection never published
			// says nothing of the link). Published now, it would stay,
			// dead, and fail every call at once without a redial. The
			// check after the store: a reader that ends it from here on
			// finds it published and unpublishes it itself.
			p.out[ch].CompareAndSwap(c, nil)
			err = fmt.Errorf("%w: node %d: %s connection closed while dialling", ErrNodeDown, p.num, ch)
			break
		}
		p.dialFailures, p.retryAt, p.lastDialErr = 0, time.Time{}, nil
	}
	if err != nil && c != nil {
		c.close()
		c = nil
	}
	d.c, d.err = c, err
	close(d.done)
	p.mu.Unlock()
	if err != nil {
		p.dialErrors.Inc()
	}
}

// dialHandshake connects to p for channel ch and does the handshake on the
// plain socket: hello, the acceptor's answer, and with Security the
// confirmation; dctx bounds it. It returns the socket (the caller owns it),
// the acceptor's answer and the session keys. A connection refused by p's
// address wraps both ErrNodeDown and the system's error
// (syscall.ECONNREFUSED), which ProbePeer reports as proof that nothing
// listens there.
func (n *Node) dialHandshake(dctx context.Context, p *peer, ch Channel) (net.Conn, framing.Hello, session, error) {
	var ss session
	addr := *p.addr.Load()
	d := net.Dialer{LocalAddr: n.localDialAddr()}
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: %w", ErrNodeDown, p.num, addr, err)
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
	// Close cancels dctx: the handshake's reads must not wait it out.
	stop := context.AfterFunc(dctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	mine := n.hello(p.num, ch)
	sec := n.sec.Load()
	var hs *noise.HandshakeState
	if sec != nil {
		if hs, mine.Auth, err = sec.initiate(p.num, *mine); err != nil {
			return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d: %v", ErrHandshake, p.num, err)
		}
	}
	hello, _ := framing.AppendHello(make([]byte, framing.HeaderSize, 256), mine)
	h := framing.Header{Type: framing.TypeHello, Length: uint32(len(hello) - framing.HeaderSize)}
	h.Encode(hello)
	if _, err := nc.Write(hello); err != nil {
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: handshake: %v", ErrNodeDown, p.num, addr, err)
	}
	var hb [framing.HeaderSize]byte
	if _, err := io.ReadFull(nc, hb[:]); err != nil {
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: no handshake answer: %v", ErrNodeDown, p.num, addr, err)
	}
	ah, err := framing.DecodeHeader(hb[:], maxHelloFrame)
	switch {
	case errors.Is(err, framing.ErrBadVersion):
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s answered in another protocol version (%v)", ErrVersMismatch, p.num, addr, err)
	case err != nil || (ah.Type != framing.TypeHelloAck && ah.Type != framing.TypeRefuse):
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: bad handshake answer (%v %v)", ErrHandshake, p.num, addr, ah.Type, err)
	case ah.Type == framing.TypeHelloAck && ah.Status != 0:
		// A bare refusal, as nodes sent before the refusal frame.
		return nil, framing.Hello{}, ss, &HandshakeError{Node: p.num, Addr: addr}
	}
	payload := make([]byte, ah.Length)
	if _, err := io.ReadFull(nc, payload); err != nil {
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: short handshake answer: %v", ErrNodeDown, p.num, addr, err)
	}
	if ah.Type == framing.TypeRefuse {
		r, err := framing.DecodeRefusal(payload)
		if err != nil {
			return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s refused us: %v", ErrHandshake, p.num, addr, err)
		}
		return nil, framing.Hello{}, ss, &HandshakeError{Node: p.num, Addr: addr, Reason: r.Reason, Version: r.Version, Detail: r.Detail}
	}
	ack, err := framing.DecodeHello(payload)
	switch {
	case err != nil:
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: %v", ErrHandshake, p.num, addr, err)
	case ack.Version != n.version:
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s speaks version %d, we speak %d", ErrVersMismatch, p.num, addr, ack.Version, n.version)
	case ack.Cluster != n.cfg.Cluster || NodeNum(ack.From) != p.num || NodeNum(ack.To) != n.cfg.Node || Channel(ack.Channel) != ch:
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: %s answered as node %d of cluster %q, expected node %d of %q", ErrHandshake, addr, ack.From, ack.Cluster, p.num, n.cfg.Cluster)
	}
	if sec != nil {
		var confirm []byte
		if ss, confirm, err = sec.finishInitiate(hs, ack); err != nil {
			// Our check of its answer failed: we know which.
			return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: its answer failed our check: %v", ErrHandshake, p.num, addr, err)
		}
		ch := framing.Header{Type: framing.TypeConfirm, Length: uint32(len(confirm))}
		frame := make([]byte, framing.HeaderSize, framing.HeaderSize+len(confirm))
		ch.Encode(frame)
		if _, err := nc.Write(append(frame, confirm...)); err != nil {
			return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s: handshake: %v", ErrNodeDown, p.num, addr, err)
		}
	}
	// Only after the key exchange: an unauthenticated answer must not get
	// an incarnation refused or a link ended.
	if p.isRefused(ack.Incarnation) {
		return nil, framing.Hello{}, ss, fmt.Errorf("%w: node %d at %s answered as incarnation %#x, which was declared down", ErrNodeDown, p.num, addr, ack.Incarnation)
	}
	_ = nc.SetDeadline(time.Time{})
	ok = true
	return nc, ack, ss, nil
}

// dial connects to p for channel ch, does the handshake on the plain socket
// (dialHandshake) and then hands the socket to a gnet event loop, or to a
// netpoller reader of its own (Config.ReadMode).
// dctx bounds all of it, the handshake's reads and the wait for the loop
// included.
func (n *Node) dial(dctx context.Context, p *peer, ch Channel) (*conn, error) {
	nc, ack, ss, err := n.dialHandshake(dctx, p, ch)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = nc.Close()
		}
	}()
	sec := n.sec.Load()
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
	if c.linkGen, err = n.joinLink(p, ack.Incarnation, nil); err != nil {
		return nil, err
	}
	c.ready = true
	if n.cfg.ReadMode == ReadNetpoller {
		if err := n.readDialled(dctx, c, nc); err != nil {
			return nil, err
		}
		ok = true // the reader owns nc
		n.log.Debug("dialled connection", "peer", p.num, "channel", ch)
		return c, nil
	}
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
	select {
	case r := <-res:
		if r.Err != nil {
			return nil, fmt.Errorf("%w: node %d: cannot register connection: %v", ErrCantSend, p.num, r.Err)
		}
	case <-dctx.Done():
		// A loop that has not taken the socket by now (descriptors
		// exhausted, loops overloaded) must not hold the callers for ever.
		// If it takes it later, OnOpen sees the dial abandoned and closes it.
		if !c.enrol.CompareAndSwap(enrolPending, enrolAbandoned) {
			c.close() // OnOpen ran meanwhile
		}
		return nil, fmt.Errorf("%w: node %d: the event loop did not take the connection in time", ErrNodeDown, p.num)
	}
	c.wmu.Lock()
	attached := c.fd >= 0
	c.wmu.Unlock()
	if !attached {
		c.close()
		if c.enrol.Load() == enrolAttached {
			// OnOpen took it, and it has closed since (the peer ended the
			// link it joined): a link lost, like any other.
			return nil, fmt.Errorf("%w: node %d: link lost while dialling", ErrNodeDown, p.num)
		}
		// gnet reports success even when registering with epoll failed and
		// OnOpen never ran; such a connection can never carry a frame.
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
