package engine

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/clusterinfra/ci/framing"
)

// fakeMember is a configured member of a real Node's cluster that speaks
// the wire protocol by hand and obeys none of it: after a genuine handshake
// (open mode, or Noise with its own node key through the engine's own
// handshake code) it writes whatever frames a test asks for — any type,
// channel, service, priority, xid, flags or announced length — ignores
// credit, reads slowly or never. It can also accept the node's dials (the
// reply channels) and then answer, never read, or never even say hello.
//
// It is the tool for tests that prove a bound is enforced by the receiver:
// a well-behaved peer cannot exceed a bound its own sender respects.
//
//	m := newFakeMember(t, target, 3, sec)   // target knows node 3 (SetPeer, key)
//	c := m.connect(ChanFirstService)        // handshake done; credit ignored
//	c.writeFrame(framing.Header{Type: framing.TypeRequest, Service: echoSvc, XID: 7}, args)
//	h, body := c.readFrame()                // a reply arrives on an accepted conn, see listen
type fakeMember struct {
	t           testing.TB
	num         NodeNum
	target      *Node
	sec         *Security // nil: open mode
	incarnation uint64
	// source is the local IP to dial from; "" lets the kernel choose.
	source string

	mu       sync.Mutex
	ln       net.Listener
	accepted chan *fakeConn // connections the node dialled, handshake done
}

// newFakeMember makes node num of target's cluster. sec is its own Security
// (nil in open mode); target must already know num (SetPeer, and with
// Security its public key). It dials from 127.0.0.1 unless source is set.
func newFakeMember(t testing.TB, target *Node, num NodeNum, sec *Security) *fakeMember {
	return &fakeMember{t: t, num: num, target: target, sec: sec, incarnation: 0xfa4e0000 | uint64(num)}
}

// fakeConn is one connection between a fakeMember and the node. Writes and
// reads go through the record cipher when the handshake set one up
// (SecurityEncrypt), so a test writes plain frames either way.
type fakeConn struct {
	net.Conn
	t      testing.TB
	ack    framing.Hello // the node's hello: its ack when dialled, its hello when accepted
	tx, rx *recordCipher
	in     []byte // received (and opened) bytes not yet returned as frames
	raw    []byte // received records not yet opened
}

// helloFor is the hello this member sends for channel ch.
func (m *fakeMember) helloFor(ch Channel) framing.Hello {
	return framing.Hello{
		Version: framing.ProtocolVersion, From: uint32(m.num), To: uint32(m.target.Num()),
		Channel: uint8(ch), Incarnation: m.incarnation, Cluster: m.target.Cluster(),
	}
}

// dialRaw opens a bare TCP connection to the node: nothing is sent.
func (m *fakeMember) dialRaw() (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if m.source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(m.source)}
	}
	nc, err := d.Dial("tcp", m.target.Addr())
	if err != nil {
		return nil, err
	}
	m.t.Cleanup(func() { _ = nc.Close() })
	return nc, nil
}

// connect dials the node and completes the handshake on ch, failing the
// test if the node refuses.
func (m *fakeMember) connect(ch Channel) *fakeConn {
	m.t.Helper()
	c, err := m.tryConnect(ch)
	if err != nil {
		m.t.Fatalf("fake member %d: connect on %s: %v", m.num, ch, err)
	}
	return c
}

// tryConnect is connect that returns the refusal instead.
func (m *fakeMember) tryConnect(ch Channel) (*fakeConn, error) {
	nc, err := m.dialRaw()
	if err != nil {
		return nil, err
	}
	c, err := m.handshake(nc, m.helloFor(ch))
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// handshake runs the dialler's side of the handshake on nc with hello,
// as the engine's dial does (Noise KK when the member has Security).
func (m *fakeMember) handshake(nc net.Conn, hello framing.Hello) (*fakeConn, error) {
	c := &fakeConn{Conn: nc, t: m.t}
	var sess session
	var hs *noise.HandshakeState
	if m.sec != nil {
		var err error
		if hs, hello.Auth, err = m.sec.initiate(NodeNum(hello.To), hello); err != nil {
			return nil, err
		}
	}
	payload, err := framing.AppendHello(nil, &hello)
	if err != nil {
		return nil, err
	}
	if err := c.writeFrame(framing.Header{Type: framing.TypeHello}, payload); err != nil {
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, body, err := c.tryReadFrame()
	_ = nc.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, err
	}
	if h.Type != framing.TypeHelloAck || h.Status != 0 {
		return nil, fmt.Errorf("%w: refused: %s status %d", ErrHandshake, h.Type, h.Status)
	}
	if c.ack, err = framing.DecodeHello(body); err != nil {
		return nil, err
	}
	if hs != nil {
		var confirm []byte
		if sess, confirm, err = m.sec.finishInitiate(hs, c.ack); err != nil {
			return nil, err
		}
		if err := c.writeFrame(framing.Header{Type: framing.TypeConfirm}, confirm); err != nil {
			return nil, err
		}
		if m.sec.Mode == SecurityEncrypt {
			tx, rx, err := sess.recordCiphers()
			if err != nil {
				return nil, err
			}
			c.encrypted(tx, rx)
		}
	}
	return c, nil
}

// listen makes the member reachable: the node dials it (reply channels, or
// calls to it). With tarpit the member accepts TCP and then never reads nor
// answers; otherwise it completes the acceptor's handshake and delivers the
// connection on accepted(). It returns the address to give SetPeer.
func (m *fakeMember) listen(ip string, tarpit bool) string {
	m.t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	m.ln, m.accepted = ln, make(chan *fakeConn, 64)
	m.mu.Unlock()
	var wg sync.WaitGroup
	var held []net.Conn
	var hmu sync.Mutex
	m.t.Cleanup(func() {
		_ = ln.Close()
		hmu.Lock()
		for _, c := range held {
			_ = c.Close()
		}
		hmu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			hmu.Lock()
			held = append(held, nc)
			hmu.Unlock()
			if tarpit {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if c, err := m.acceptHandshake(nc); err == nil {
					select {
					case m.accepted <- c:
					default:
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// acceptedConns delivers the node's dials the member accepted (listen).
func (m *fakeMember) acceptedConns() <-chan *fakeConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.accepted
}

// acceptHandshake is the acceptor's side, as the engine's acceptHello.
func (m *fakeMember) acceptHandshake(nc net.Conn) (*fakeConn, error) {
	c := &fakeConn{Conn: nc, t: m.t}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = nc.SetReadDeadline(time.Time{}) }()
	h, body, err := c.tryReadFrame()
	if err != nil {
		return nil, err
	}
	if h.Type != framing.TypeHello {
		return nil, fmt.Errorf("fake member: %s before hello", h.Type)
	}
	hello, err := framing.DecodeHello(body)
	if err != nil {
		return nil, err
	}
	c.ack = hello
	ack := framing.Hello{Version: framing.ProtocolVersion, From: uint32(m.num), To: hello.From,
		Channel: hello.Channel, Incarnation: m.incarnation, Cluster: hello.Cluster}
	var sess session
	if m.sec != nil {
		if sess, ack.Auth, err = m.sec.respond(NodeNum(hello.From), hello, ack); err != nil {
			return nil, err
		}
	}
	payload, _ := framing.AppendHello(nil, &ack)
	if err := c.writeFrame(framing.Header{Type: framing.TypeHelloAck}, payload); err != nil {
		return nil, err
	}
	if m.sec != nil {
		h, body, err := c.tryReadFrame()
		if err != nil {
			return nil, err
		}
		if h.Type != framing.TypeConfirm {
			return nil, fmt.Errorf("fake member: %s instead of confirm", h.Type)
		}
		if err := sess.checkConfirm(body); err != nil {
			return nil, err
		}
		if m.sec.Mode == SecurityEncrypt {
			tx, rx, err := sess.recordCiphers()
			if err != nil {
				return nil, err
			}
			c.encrypted(tx, rx)
		}
	}
	return c, nil
}

// writeFrame writes one frame with h as given, except that Length is set to
// len(payload). The member's own credit is never consulted.
func (c *fakeConn) writeFrame(h framing.Header, payload []byte) error {
	h.Length = uint32(len(payload))
	b := make([]byte, framing.HeaderSize, framing.HeaderSize+len(payload))
	h.Encode(b)
	return c.writeBytes(append(b, payload...))
}

// writeHeader writes h exactly as given — Length included — and nothing
// else: a frame that announces more than it sends, or a header to be
// followed by writeBytes.
func (c *fakeConn) writeHeader(h framing.Header) error {
	var b [framing.HeaderSize]byte
	h.Encode(b[:])
	return c.writeBytes(b[:])
}

// writeBytes writes raw stream bytes (sealed as records on an encrypted
// connection).
func (c *fakeConn) writeBytes(b []byte) error {
	if c.tx == nil {
		_, err := c.Write(b)
		return err
	}
	var out []byte
	for len(b) > 0 {
		k := min(len(b), maxRecordPlain)
		var err error
		if out, err = sealRecord(out, c.tx, b[:k]); err != nil {
			return err
		}
		b = b[k:]
	}
	_, err := c.Write(out)
	return err
}

// readFrame reads one whole frame, failing the test on error. Use a read
// deadline (SetReadDeadline) when the node may never send.
func (c *fakeConn) readFrame() (framing.Header, []byte) {
	c.t.Helper()
	h, b, err := c.tryReadFrame()
	if err != nil {
		c.t.Fatalf("fake member: read: %v", err)
	}
	return h, b
}

// tryReadFrame reads one whole frame. Credit frames are returned like any
// other: a member that ignores credit simply does not look at them.
func (c *fakeConn) tryReadFrame() (framing.Header, []byte, error) {
	var dec framing.Decoder
	for {
		f, n, err := dec.Next(c.in)
		if err != nil {
			return framing.Header{}, nil, err
		}
		if n > 0 {
			payload := append([]byte(nil), f.Payload...)
			c.in = append(c.in[:0], c.in[n:]...)
			return f.Header, payload, nil
		}
		if err := c.fill(); err != nil {
			return framing.Header{}, nil, err
		}
	}
}

// fill reads more stream bytes into c.in, opening records if encrypted.
func (c *fakeConn) fill() error {
	var buf [64 << 10]byte
	if c.rx == nil {
		k, err := c.Read(buf[:])
		c.in = append(c.in, buf[:k]...)
		if k > 0 {
			return nil
		}
		return err
	}
	for {
		var used int
		var err error
		c.in, used, _, err = openRecords(c.in, c.rx, c.raw)
		c.raw = c.raw[used:]
		if err != nil || used > 0 {
			return err
		}
		k, err := c.Read(buf[:])
		c.raw = append(c.raw, buf[:k]...)
		if k == 0 {
			return err
		}
	}
}

// encrypted switches c to records: whatever followed the handshake in the
// last read is already sealed.
func (c *fakeConn) encrypted(tx, rx *recordCipher) {
	c.tx, c.rx = tx, rx
	c.raw, c.in = c.in, nil
}

// readUntil reads frames until one of type typ arrives, discarding others
// (credit grants, typically), and returns it.
func (c *fakeConn) readUntil(typ framing.Type) (framing.Header, []byte, error) {
	for {
		h, b, err := c.tryReadFrame()
		if err != nil || h.Type == typ {
			return h, b, err
		}
	}
}

// closedWithin discards what the node sends and reports whether the node
// closed c within the given time: a test asserting "refused at once" uses a
// bound shorter than any timeout that would also close it.
func (c *fakeConn) closedWithin(within time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(within))
	var buf [4096]byte
	for {
		_, err := c.Conn.Read(buf[:])
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// fakeMemberSecurity builds keys for a target node 1..count and a fake
// member num=count+1: it returns a tweak for the real nodes' configs (which
// know the fake member's key) and the fake member's Security.
func fakeMemberSecurity(t testing.TB, mode SecurityMode, count int) (tweak func(*Config), member *Security) {
	ck, keys := clusterKeys(t, count+1)
	return func(c *Config) { c.Security = securityFor(mode, int(c.Node), ck, keys) },
		securityFor(mode, count+1, ck, keys)
}

// addFakeMember tells nodes about member num at addr ("" when it only dials).
func addFakeMember(t testing.TB, num NodeNum, addr string, nodes ...*Node) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.250:9" // discard port: the member dials, it is never dialled
	}
	for _, n := range nodes {
		if err := n.SetPeer(num, addr); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFakeMemberSpeaksTheProtocol checks the tool itself: in open mode and
// with each security mode, a hand-made request reaches the handler and the
// reply comes back on the request's own connection, with no dial.
func TestFakeMemberSpeaksTheProtocol(t *testing.T) {
	for _, mode := range []SecurityMode{0, SecurityAuthenticate, SecurityEncrypt} {
		name := "open"
		if mode != 0 {
			name = mode.String()
		}
		t.Run(name, func(t *testing.T) {
			var tweak func(*Config)
			var msec *Security
			if mode != 0 {
				tweak, msec = fakeMemberSecurity(t, mode, 1)
			}
			target := startCluster(t, 1, tweak)[0]
			mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
			m := newFakeMember(t, target, 2, msec)
			addFakeMember(t, 2, m.listen("127.0.0.2", false), target)

			c := m.connect(ChanFirstService)
			h, _, err := c.readUntil(framing.TypeCredit)
			if err != nil || h.Aux != uint32(target.cfg.CreditWindow) {
				t.Fatalf("first grant: %+v %v", h, err)
			}
			req := framing.Header{Type: framing.TypeRequest, Service: echoSvc, XID: 7<<32 | 3}
			if err := c.writeFrame(req, []byte("hello from a fake")); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			rh, body, err := c.readUntil(framing.TypeReply)
			if err != nil || rh.XID != req.XID || string(body) != "hello from a fake" {
				t.Fatalf("reply %+v %q %v", rh, body, err)
			}
			if got := target.peer(2).dialAttempts.Get(); got != 0 {
				t.Fatalf("the node dialled the member %d times to reply", got)
			}
		})
	}
}
