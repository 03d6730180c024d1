package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

// The netpoller readers' own failure paths. The rest of the suite runs in
// either read mode (CI_ENGINE_READ_MODE); these force ReadNetpoller.

func netpollCluster(t *testing.T, count int, tweak func(*Config)) []*Node {
	t.Helper()
	return startCluster(t, count, func(c *Config) {
		c.ReadMode, c.EventLoops = ReadNetpoller, 0
		if tweak != nil {
			tweak(c)
		}
	})
}

func readerCount(n *Node) int {
	n.readersMu.Lock()
	defer n.readersMu.Unlock()
	return len(n.readers)
}

// oneWayCounter registers an inline service on echoSvc that passes each
// message it receives to the returned channel (a copy of it).
func oneWayCounter(t *testing.T, n *Node) <-chan []byte {
	got := make(chan []byte, 16)
	mustRegister(t, n, Service{ID: echoSvc, Inline: true, Procs: []Handler{func(_ context.Context, req *Request, _ *Response) error {
		got <- bytes.Clone(req.Args)
		return nil
	}}})
	return got
}

// netpollMember starts a netpoller node serving oneWayCounter and connects
// fake member 2 to it on ChanFirstService.
func netpollMember(t *testing.T, tweak func(*Config)) (*Node, <-chan []byte, *fakeConn) {
	target := netpollCluster(t, 1, tweak)[0]
	got := oneWayCounter(t, target)
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	return target, got, m.connect(ChanFirstService)
}

// TestNetpollReaderEndsOnPeerClose: a member that closes its connection
// ends the reader, which tears the connection down once: the link is lost
// and nothing of it stays counted.
func TestNetpollReaderEndsOnPeerClose(t *testing.T) {
	target, got, c := netpollMember(t, nil)
	if err := c.writeFrame(framing.Header{Type: framing.TypeOneWay, Service: echoSvc, XID: 1}, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "hi" {
		t.Fatalf("handler got %q", b)
	}
	if readerCount(target) != 1 {
		t.Fatalf("%d readers, want 1", readerCount(target))
	}
	losses := target.m.peerLosses.Get()
	_ = c.Close()
	eventually(t, "the reader to end", func() bool { return readerCount(target) == 0 })
	eventually(t, "the link to be lost", func() bool { return target.m.peerLosses.Get() == losses+1 })
	if k := target.accepted.Load(); k != 0 {
		t.Fatalf("%d accepted connections still counted", k)
	}
	if got := target.m.badFrames.Get(); got != 0 {
		t.Fatalf("a peer's close counted as %d bad frames", got)
	}
}

// TestNetpollReaderEndsOnNodeClose: Close ends readers blocked in Read on
// both the accepted and the dialled side, and returns only once they have
// (goleak in TestMain checks no goroutine is left).
func TestNetpollReaderEndsOnNodeClose(t *testing.T) {
	nodes := netpollCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	// One connection, dialled by node 1 and accepted by node 2; the reply
	// came back on it.
	if a, b := readerCount(nodes[0]), readerCount(nodes[1]); a != 1 || b != 1 {
		t.Fatalf("readers %d and %d, want 1 and 1", a, b)
	}
	for _, n := range nodes {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if k := readerCount(n); k != 0 {
			t.Fatalf("node %d: %d readers after Close", n.Num(), k)
		}
	}
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil, nil); err == nil {
		t.Fatal("call after Close succeeded")
	}
}

// TestNetpollViolationMidBuffer: a protocol violation between two good
// frames in one read: the frame before it is served, the violation closes
// the connection and is counted once, the frame after it never runs.
func TestNetpollViolationMidBuffer(t *testing.T) {
	target, got, c := netpollMember(t, func(c *Config) { c.ViolationHoldOff = time.Nanosecond })
	frame := func(h framing.Header, payload string) []byte {
		h.Length = uint32(len(payload))
		b := make([]byte, framing.HeaderSize, framing.HeaderSize+len(payload))
		h.Encode(b)
		return append(b, payload...)
	}
	var buf []byte
	buf = append(buf, frame(framing.Header{Type: framing.TypeOneWay, Service: echoSvc, XID: 1}, "before")...)
	buf = append(buf, frame(framing.Header{Type: framing.TypeReply, Service: echoSvc, XID: 2}, "reply on a request channel")...)
	buf = append(buf, frame(framing.Header{Type: framing.TypeOneWay, Service: echoSvc, XID: 3}, "after")...)
	bad := target.m.badFrames.Get()
	if err := c.writeBytes(buf); err != nil {
		t.Fatal(err)
	}
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("violation did not close the connection")
	}
	eventually(t, "the reader to end", func() bool { return readerCount(target) == 0 })
	if b := <-got; string(b) != "before" {
		t.Fatalf("first message %q, want before", b)
	}
	select {
	case b := <-got:
		t.Fatalf("a frame after the violation was served: %q", b)
	default:
	}
	if k := target.m.badFrames.Get() - bad; k != 1 {
		t.Fatalf("%d bad frames counted, want 1", k)
	}
}

// TestNetpollLargeFrameInSmallReads: a frame larger than the reader's
// buffer, arriving a kilobyte at a time, is assembled and served whole,
// and the connection serves the next frame after it.
func TestNetpollLargeFrameInSmallReads(t *testing.T) {
	_, got, c := netpollMember(t, nil)
	big := make([]byte, 5<<20) // over keepBufferMax: the buffer is released after it
	for i := range big {
		big[i] = byte(i * 7)
	}
	h := framing.Header{Type: framing.TypeOneWay, Service: echoSvc, XID: 1, Length: uint32(len(big))}
	if err := c.writeHeader(h); err != nil {
		t.Fatal(err)
	}
	for rest := big; len(rest) > 0; {
		k := min(len(rest), 1<<10)
		if err := c.writeBytes(rest[:k]); err != nil {
			t.Fatal(err)
		}
		rest = rest[k:]
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("large frame arrived as %d bytes, changed", len(b))
	}
	if err := c.writeFrame(framing.Header{Type: framing.TypeOneWay, Service: echoSvc, XID: 2}, []byte("next")); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "next" {
		t.Fatalf("next frame %q", b)
	}
}

// TestNetReaderBuffer pins the reader's buffer sizing: small in the
// handshake, readBufReady once ready, grown to the frame at the head,
// released after a huge one, and the unconsumed tail kept at the front.
func TestNetReaderBuffer(t *testing.T) {
	c := &conn{}
	b := &netReader{buf: make([]byte, readBufHandshake)}
	if err := b.makeRoom(c); err != nil || len(b.buf) != readBufHandshake {
		t.Fatalf("handshake buffer %d (%v), want %d", len(b.buf), err, readBufHandshake)
	}
	c.ready = true
	if err := b.makeRoom(c); err != nil || len(b.buf) != readBufReady {
		t.Fatalf("ready buffer %d (%v), want %d", len(b.buf), err, readBufReady)
	}
	// Ten bytes, of which four are consumed: six move to the front.
	copy(b.buf, "0123456789")
	b.w = 10
	if k, _ := b.Discard(4); k != 4 {
		t.Fatalf("discarded %d", k)
	}
	if err := b.makeRoom(c); err != nil || b.r != 0 || b.w != 6 || string(b.buf[:6]) != "456789" {
		t.Fatalf("after compaction r=%d w=%d %q (%v)", b.r, b.w, b.buf[:b.w], err)
	}
	c.need = 6 << 20
	if err := b.makeRoom(c); err != nil || len(b.buf) != 6<<20 || string(b.buf[:6]) != "456789" {
		t.Fatalf("grown to %d (%v), want %d with the tail kept", len(b.buf), err, 6<<20)
	}
	c.need = 0
	if err := b.makeRoom(c); err != nil || len(b.buf) != 6<<20 {
		t.Fatalf("released while bytes are buffered: %d (%v)", len(b.buf), err)
	}
	_, _ = b.Discard(6)
	if err := b.makeRoom(c); err != nil || len(b.buf) != readBufReady {
		t.Fatalf("after the huge frame: %d (%v), want %d", len(b.buf), err, readBufReady)
	}
	b.w = len(b.buf) // full, and no frame announced: cannot happen, must not spin
	if err := b.makeRoom(c); err != errReadBufferFull {
		t.Fatalf("full buffer: %v, want errReadBufferFull", err)
	}
}

// TestNetpollHandshakeTimeoutSheds: without gnet (and so without its
// ticker), the node's own ticker sheds a connection that never says hello.
func TestNetpollHandshakeTimeoutSheds(t *testing.T) {
	target := netpollCluster(t, 1, func(c *Config) { c.HandshakeTimeout = 100 * time.Millisecond })[0]
	if target.eng.Validate() == nil || target.loopDir != "" {
		t.Fatal("a netpoller node started gnet")
	}
	m := newFakeMember(t, target, 2, nil)
	nc, err := m.dialRaw()
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeConn{Conn: nc, t: t}
	if !c.closedWithin(10 * time.Second) {
		t.Fatal("a silent connection was kept past the handshake timeout")
	}
	eventually(t, "the reader to end", func() bool { return readerCount(target) == 0 })
	if got := target.m.limitHandshakeTimeout.Get(); got != 1 {
		t.Fatalf("handshake timeout hits = %d, want 1", got)
	}
	if k := pendingCount(target); k != 0 {
		t.Fatalf("%d connections still pending", k)
	}
}

// TestReadModeConfig: the read mode's names and the combinations refused.
func TestReadModeConfig(t *testing.T) {
	for _, m := range []ReadMode{ReadAuto, ReadEventLoops, ReadNetpoller} {
		if got, err := ParseReadMode(m.String()); err != nil || got != m {
			t.Errorf("ParseReadMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseReadMode("epoll"); err == nil {
		t.Error("ParseReadMode accepted epoll")
	}
	base := DefaultConfig()
	base.Node, base.Cluster, base.Insecure = 1, "c", true
	for name, tc := range map[string]struct {
		tweak func(*Config)
		want  ReadMode // 0: refused
	}{
		"auto":                     {func(*Config) {}, autoReadMode(WriteDirect)},
		"auto with loop writes":    {func(c *Config) { c.WriteMode = WriteEventLoop }, ReadEventLoops},
		"loops":                    {func(c *Config) { c.ReadMode, c.EventLoops = ReadEventLoops, 3 }, ReadEventLoops},
		"netpoll":                  {func(c *Config) { c.ReadMode = ReadNetpoller }, ReadNetpoller},
		"netpoll with event loops": {func(c *Config) { c.ReadMode, c.EventLoops = ReadNetpoller, 2 }, 0},
		"netpoll with loop writes": {func(c *Config) { c.ReadMode, c.WriteMode = ReadNetpoller, WriteEventLoop }, 0},
		"unknown":                  {func(c *Config) { c.ReadMode = 9 }, 0},
	} {
		cfg := base
		tc.tweak(&cfg)
		err := cfg.validate()
		switch {
		case tc.want == 0 && err == nil:
			t.Errorf("%s: accepted", name)
		case tc.want != 0 && (err != nil || cfg.ReadMode != tc.want):
			t.Errorf("%s: %v, mode %v, want %v", name, err, cfg.ReadMode, tc.want)
		}
	}
}

// TestNetpollAcceptOutOfWriteDescriptors: a netpoller reader needs a
// second descriptor (its write dup). When accept takes the process's last
// descriptor and the dup finds none, that is the descriptor limit as much
// as accept's own EMFILE: the newcomer is shed, the limit counted, and the
// node accepts again once descriptors free. (Before, the dup's failure was
// shed uncounted and without backing off, and which of the two failed
// depended on the parity of the process's descriptor count.)
func TestNetpollAcceptOutOfWriteDescriptors(t *testing.T) {
	target := netpollCluster(t, 1, nil)[0]
	var failing atomic.Bool
	failing.Store(true)
	hook := func() error {
		if failing.Load() {
			return fmt.Errorf("dup: %w", unix.EMFILE)
		}
		return nil
	}
	testHookAttachAccepted.Store(&hook)
	defer testHookAttachAccepted.Store(nil)

	// On loopback the reset can beat connect's own completion.
	if nc, err := net.Dial("tcp", target.Addr()); err == nil {
		c := &fakeConn{Conn: nc, t: t}
		if !c.closedWithin(5 * time.Second) {
			t.Fatal("a connection without a write descriptor was not shed")
		}
	} else if !errors.Is(err, unix.ECONNRESET) {
		t.Fatal(err)
	}
	eventually(t, "the descriptor limit to be counted", func() bool {
		return target.m.limitDescriptors.Get() >= 1
	})
	if got := target.accepted.Load(); got != 0 {
		t.Fatalf("%d accepted connections still counted after the shed", got)
	}

	failing.Store(false)
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	m.connect(ChanFirstService) // the handshake completes: accepted again
}
