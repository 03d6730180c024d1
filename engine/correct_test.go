package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// Regression tests for issue 8's wrong results and node-down points: each
// one failed before its fix (the commit that added it says how).

// TestReplyForPreviousRunDropped: node 1 calls node 2, restarts, and calls
// again while node 2 is still serving the first call. The first call's
// reply belongs to node 1's previous run and must be dropped by node 2,
// never complete the new run's call (which, with generations restarting at
// 1 on every boot, had the same xid).
func TestReplyForPreviousRunDropped(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	a1, b := nodes[0], nodes[1]
	arrived := make(chan string, 2)
	release := map[string]chan struct{}{"A1": make(chan struct{}), "A2": make(chan struct{})}
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) }) // before the nodes close: no handler left waiting
	mustRegister(t, b, Service{ID: slowSvc, MaxHandles: 4, Procs: []Handler{func(_ context.Context, req *Request, resp *Response) error {
		arg := string(req.Args)
		arrived <- arg
		select {
		case <-release[arg]:
		case <-ended:
		}
		resp.Body = append(resp.Body, "reply-to "+arg...)
		return nil
	}}})
	m := Method{Service: slowSvc}
	ctx := ctxFor(t, 30*time.Second)
	f1 := a1.Go(ctx, 2, m, []byte("A1"))
	if got := <-arrived; got != "A1" {
		t.Fatalf("first request %q", got)
	}
	if err := a1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f1.Wait(); !errors.Is(err, ErrClosed) {
		t.Fatalf("call of the closed run: %v", err)
	}

	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Insecure = 1, "test", "127.0.0.1:0", true
	cfg.EventLoops = 2
	cfg.Peers = map[NodeNum]string{2: b.Addr()}
	a2 := startNode(t, cfg)
	if err := b.SetPeer(1, a2.Addr()); err != nil {
		t.Fatal(err)
	}
	f2 := a2.Go(ctx, 2, m, []byte("A2"))
	if got := <-arrived; got != "A2" {
		t.Fatalf("second request %q", got)
	}
	close(release["A1"])
	eventually(t, "the previous run's reply dropped", func() bool { return b.m.staleReplies.Get() == 1 })
	close(release["A2"])
	got, err := f2.Wait()
	if err != nil || string(got) != "reply-to A2" {
		t.Fatalf("new run's call got %q, %v; want \"reply-to A2\"", got, err)
	}
}

// TestGenerationsNotRepeated: a restarted node must not reuse the xids of
// its previous run (a fresh table armed the same xid every boot), and the
// xids of one slot must not be predictable from one another.
func TestGenerationsNotRepeated(t *testing.T) {
	seen := make(map[uint64]bool)
	for boot := 0; boot < 100; boot++ {
		tab := newHandleTable(4)
		idx, _ := tab.acquire()
		xid := tab.arm(idx, 2, nil)
		if seen[xid] {
			t.Fatalf("boot %d armed xid %#x, already used by an earlier boot", boot, xid)
		}
		seen[xid] = true
	}
	tab := newHandleTable(1)
	var prev uint64
	for i := 0; i < 1000; i++ {
		idx, _ := tab.acquire()
		xid := tab.arm(idx, 2, nil)
		if xid == 0 || xidSlot(xid) != 0 {
			t.Fatalf("xid %#x: want slot 0 and never 0", xid)
		}
		if prev != 0 && (xid == prev || xidGen(xid) == xidGen(prev)+1) {
			t.Fatalf("slot re-armed as %#x after %#x: guessable", xid, prev)
		}
		prev = xid
		if !tab.abandon(xid) {
			t.Fatal("abandon failed")
		}
	}
}

// TestHandlerRepliesWithArgs: resp.Body = req.Args is correct handler
// code. The arguments' buffer went back to the pool before the reply was
// sent (wrong replies, race reports), and was kept as the handle's reply
// buffer afterwards.
func TestHandlerRepliesWithArgs(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			nodes := startCluster(t, 2, nil)
			mustRegister(t, nodes[1], Service{ID: echoSvc, Inline: inline, MaxHandles: 4, Procs: []Handler{func(_ context.Context, req *Request, resp *Response) error {
				resp.Body = req.Args
				return nil
			}}})
			ctx := ctxFor(t, 60*time.Second)
			var wg sync.WaitGroup
			var wrong atomic.Int32
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var reply []byte
					for i := 0; i < 300; i++ {
						args := bytes.Repeat([]byte{byte('a' + g)}, 1+(i*37+g*101)%1500)
						args = fmt.Appendf(args, "/%d/%d", g, i)
						var err error
						reply, err = nodes[0].Call(ctx, 2, Method{Service: echoSvc}, args, reply[:0])
						if err != nil {
							t.Error(err)
							return
						}
						if !bytes.Equal(reply, args) {
							wrong.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			if wrong.Load() != 0 {
				t.Fatalf("%d wrong replies of 1200", wrong.Load())
			}
		})
	}
}

// TestHandlerRepliesWithSharedSlice: a handler that answers with a slice of
// its own must find it unchanged afterwards. The engine kept that slice as
// the handle's buffer and appended the next request's results (and error
// texts) into it.
func TestHandlerRepliesWithSharedSlice(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	shared := []byte("the constant answer")
	const want = "the constant answer"
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 1, Procs: []Handler{
		func(_ context.Context, _ *Request, resp *Response) error { resp.Body = shared; return nil },
		echo,
		func(_ context.Context, _ *Request, resp *Response) error {
			resp.Body = shared
			return errors.New("failed")
		},
	}})
	ctx := ctxFor(t, 30*time.Second)
	for round := 0; round < 3; round++ {
		got, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 0}, nil, nil)
		if err != nil || string(got) != want {
			t.Fatalf("round %d: shared reply %q, %v", round, got, err)
		}
		got, err = nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 1}, []byte("XXXXXXXX"), nil)
		if err != nil || string(got) != "XXXXXXXX" {
			t.Fatalf("round %d: echo %q, %v", round, got, err)
		}
		_, err = nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 2}, nil, nil)
		var re *RemoteError
		if !errors.As(err, &re) || re.Message != "failed" {
			t.Fatalf("round %d: failing handler: %v", round, err)
		}
		if string(shared) != want {
			t.Fatalf("round %d: the handler's slice was overwritten: %q", round, shared)
		}
	}
}

// TestHandlerContextOutlivesHandler: a handler that starts calls with its
// own ctx (GoFunc) and returns at once must not race the next request. The
// context was a per-handle object reset for every request (the race
// detector reported it).
func TestHandlerContextOutlivesHandler(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[0], Service{ID: echoSvc, Procs: []Handler{echo}, MaxHandles: 8})
	const calls = 200
	results := make(chan error, calls)
	fwd := ServiceOn(ChanFirstService, 3)
	mustRegister(t, nodes[1], Service{ID: fwd, MaxHandles: 2, Procs: []Handler{func(ctx context.Context, req *Request, _ *Response) error {
		args := append([]byte(nil), req.Args...)
		// Outliving the handler: without its cancellation (the caller's
		// ctx has a deadline, so the handler's ends when it returns).
		nodes[1].GoFunc(context.WithoutCancel(ctx), 1, Method{Service: echoSvc}, args, func(reply []byte, err error) {
			if err == nil && !bytes.Equal(reply, args) {
				err = fmt.Errorf("reply %q for %q", reply, args)
			}
			results <- err
		})
		return nil
	}}})
	ctx := ctxFor(t, 60*time.Second)
	for i := 0; i < calls; i++ {
		if _, err := nodes[0].Call(ctx, 2, Method{Service: fwd}, fmt.Appendf(nil, "%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < calls; i++ {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
}

// TestNodeDownBetweenHelloAndConfirm: a dialler declared down after its
// hello and before its confirmation is refused at the confirmation; it
// used to become a ready connection that reached handlers.
func TestNodeDownBetweenHelloAndConfirm(t *testing.T) {
	nodes, ck, keys := startSecureCluster(t, SecurityAuthenticate, 2)
	var served atomic.Int32
	mustRegister(t, nodes[1], Service{ID: echoSvc, Inline: true, Procs: []Handler{func(context.Context, *Request, *Response) error {
		served.Add(1)
		return nil
	}}})
	rejects := nodes[1].m.handshakeRejects.Get()
	c, sent, _ := rawHandshake(t, securityFor(SecurityAuthenticate, 1, ck, keys), nodes[1].Addr(), false)
	nodes[1].NodeDown(1, errors.New("CLMS says so"))
	confirm := confirmFrame(t, sent)
	req := framing.Header{Type: framing.TypeOneWay, Service: echoSvc}
	frame := make([]byte, framing.HeaderSize)
	req.Encode(frame)
	if _, err := c.Write(append(append([]byte(nil), confirm...), frame...)); err != nil {
		t.Fatal(err)
	}
	// Refused at once: well within HandshakeTimeout, so a close by the
	// timeout cannot pass for the refusal.
	_ = c.SetReadDeadline(time.Now().Add(nodes[1].cfg.HandshakeTimeout / 2))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("not refused at once: %v", err)
	}
	if got := nodes[1].m.handshakeRejects.Get() - rejects; got != 1 {
		t.Fatalf("%d handshake rejections counted, want 1", got)
	}
	if served.Load() != 0 {
		t.Fatal("a node declared down reached a handler")
	}
}

// confirmFrame is the TypeConfirm frame at the end of what rawHandshake sent.
func confirmFrame(t *testing.T, sent []byte) []byte {
	t.Helper()
	h, err := framing.DecodeHeader(sent, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return sent[framing.HeaderSize+int(h.Length):]
}

// fakeAcceptor listens on addr and hands each accepted connection, after
// reading its hello, to serve.
func fakeAcceptor(t *testing.T, addr string, serve func(net.Conn, framing.Hello)) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				hello, err := readHello(c)
				if err != nil {
					return
				}
				serve(c, hello)
			}()
		}
	}()
	return l
}

func readHello(c net.Conn) (framing.Hello, error) {
	var hb [framing.HeaderSize]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		return framing.Hello{}, err
	}
	h, err := framing.DecodeHeader(hb[:], 4096)
	if err != nil {
		return framing.Hello{}, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c, p); err != nil {
		return framing.Hello{}, err
	}
	return framing.DecodeHello(p)
}

// TestNodeDownDuringDialNotPublished: NodeDown while a dial waits for the
// peer's answer; the dial must not publish its connection afterwards (it
// joined the link NodeDown had just started and carried calls to a node
// declared dead).
func TestNodeDownDuringDialNotPublished(t *testing.T) {
	helloSeen := make(chan struct{})
	answer := make(chan struct{})
	closed := make(chan error, 1)
	l := fakeAcceptor(t, "127.0.0.2:0", func(c net.Conn, h framing.Hello) {
		close(helloSeen)
		<-answer
		ack := framing.Hello{Version: framing.ProtocolVersion, From: h.To, To: h.From, Channel: h.Channel, Incarnation: 7, Cluster: h.Cluster}
		if _, err := c.Write(frameBytes(t, framing.TypeHelloAck, mustHello(t, &ack))); err != nil {
			closed <- err
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		closed <- err
	})
	n := startCluster(t, 1, func(c *Config) { c.DialTimeout = 5 * time.Second })[0]
	if err := n.SetPeer(2, l.Addr().String()); err != nil {
		t.Fatal(err)
	}
	callErr := make(chan error, 1)
	go func() { // Go, like Call, dials before it returns
		_, err := n.Call(ctxFor(t, 8*time.Second), 2, Method{Service: echoSvc}, nil, nil)
		callErr <- err
	}()
	<-helloSeen
	n.NodeDown(2, errors.New("CLMS says so"))
	close(answer)
	if err := <-callErr; !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call: %v, want ErrNodeDown", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("the dialled connection was not closed: %v", err)
	}
	if c := n.peer(2).out[ChanFirstService].Load(); c != nil {
		t.Fatal("a connection to a node declared down was published")
	}
	if got := n.m.peerLosses.Get(); got != 1 {
		t.Fatalf("%d link teardowns, want 1 (the NodeDown)", got)
	}
}

// TestOneNodeDownOneTeardown: requests of the dead peer still running when
// it is declared down must not end its link again when their replies find
// no way back (one NodeDown gave one teardown per job in flight, each with
// its node-down callback).
func TestOneNodeDownOneTeardown(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	var callbacks atomic.Int32
	b.OnNodeDown(func(NodeNum, error) { callbacks.Add(1) })
	release := make(chan struct{})
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) }) // before the nodes close: no handler left waiting
	mustRegister(t, b, Service{ID: slowSvc, MaxHandles: 4, Procs: []Handler{func(_ context.Context, _ *Request, resp *Response) error {
		select {
		case <-release:
		case <-ended:
		}
		resp.Body = append(resp.Body, "late"...)
		return nil
	}}})
	ctx := ctxFor(t, 30*time.Second)
	var fs []*Future
	for i := 0; i < 3; i++ {
		fs = append(fs, a.Go(ctx, 2, Method{Service: slowSvc}, nil))
	}
	pool := b.lookupService(slowSvc).pool
	eventually(t, "three requests being served", func() bool { return pool.running.Load() == 3 })
	b.NodeDown(1, errors.New("CLMS says so"))
	for _, f := range fs {
		if _, err := f.Wait(); !errors.Is(err, ErrNodeDown) {
			t.Fatalf("call to the node that declared us down: %v", err)
		}
	}
	close(release)
	eventually(t, "the handlers done", func() bool { return pool.running.Load() == 0 && pool.queued.Load() == 0 })
	if got := b.m.staleReplies.Get(); got != 3 {
		t.Errorf("%d replies dropped as stale, want 3", got)
	}
	if got := b.m.peerLosses.Get(); got != 1 {
		t.Errorf("%d link teardowns for one NodeDown, want 1", got)
	}
	_ = b.Close() // waits for the callbacks
	if got := callbacks.Load(); got != 1 {
		t.Errorf("%d node-down callbacks for one NodeDown, want 1", got)
	}
}

// silentListener accepts TCP connections (the kernel does, from its
// backlog) and never answers: a peer whose process is stopped or a
// blackholed address.
func silentListener(t *testing.T, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// TestCallHonoursContextWhileDialling: a 200 ms call to a peer that never
// answers the handshake returns ErrTimedOut after about 200 ms; it used to
// wait the whole DialTimeout and say ErrNodeDown.
func TestCallHonoursContextWhileDialling(t *testing.T) {
	n := startCluster(t, 1, func(c *Config) { c.DialTimeout = 10 * time.Second })[0]
	if err := n.SetPeer(2, silentListener(t, "127.0.0.2:0")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := n.Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
	took := time.Since(start)
	if !errors.Is(err, ErrTimedOut) {
		t.Fatalf("got %v, want ErrTimedOut", err)
	}
	if took > 2*time.Second {
		t.Fatalf("returned after %v, its context ended after 200ms", took)
	}
	// A cancelled caller says ErrIntr, as promised.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := n.Call(ctx, 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrIntr) {
		t.Fatalf("cancelled while dialling: %v, want ErrIntr", err)
	}
}

// TestBlackholedPeerBoundedByDialTimeout: with a long context, a peer that
// never answers the handshake costs the caller DialTimeout, then
// ErrNodeDown.
func TestBlackholedPeerBoundedByDialTimeout(t *testing.T) {
	n := startCluster(t, 1, func(c *Config) { c.DialTimeout = 300 * time.Millisecond })[0]
	if err := n.SetPeer(2, silentListener(t, "127.0.0.2:0")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := n.Call(ctxFor(t, 30*time.Second), 2, Method{Service: echoSvc}, nil, nil)
	took := time.Since(start)
	if !errors.Is(err, ErrNodeDown) {
		t.Fatalf("got %v, want ErrNodeDown", err)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Fatalf("returned after %v, want DialTimeout (300ms) and a little", took)
	}
}

// TestDialBackoff: callers hammering a peer whose address refuses
// connections make a bounded number of dial attempts per second, whatever
// their number (4 callers made 22,000 a second), and the first call after
// the peer is back resets the backoff.
func TestDialBackoff(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connections are refused
	n := startCluster(t, 1, nil)[0]
	if err := n.SetPeer(2, addr); err != nil {
		t.Fatal(err)
	}
	p := n.peer(2)
	var wg sync.WaitGroup
	var calls atomic.Int64
	stop := time.Now().Add(time.Second)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				_, err := n.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil, nil)
				if !errors.Is(err, ErrNodeDown) {
					t.Errorf("call to a refusing address: %v", err)
					return
				}
				calls.Add(1)
			}
		}()
	}
	wg.Wait()
	// 20ms doubling, each drawn from its upper half: attempts start no
	// sooner than 0, 10, 30, 70, 150, 310, 630 ms.
	attempts := p.dialAttempts.Get()
	t.Logf("16 callers, 1 s: %d calls, %d dial attempts, %d failed by the backoff", calls.Load(), attempts, n.m.dialBackoffRefusals.Get())
	if attempts < 2 || attempts > 8 {
		t.Fatalf("%d dial attempts in a second from %d calls, want 2..8", attempts, calls.Load())
	}
	if refused := n.m.dialBackoffRefusals.Get(); refused == 0 {
		t.Fatalf("%d calls failed by the backoff, %d dialled, of %d", refused, attempts, calls.Load())
	}

	// The peer comes up at that address: reached within MaxDialBackoff.
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Insecure = 2, "test", addr, true
	cfg.Peers = map[NodeNum]string{1: n.Addr()}
	peer := startNode(t, cfg)
	mustRegister(t, peer, Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	up := time.Now()
	eventually(t, "the peer reached", func() bool {
		_, err := n.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil, nil)
		return err == nil
	})
	if took := time.Since(up); took > n.cfg.MaxDialBackoff+2*time.Second {
		t.Errorf("reached %v after it came up, MaxDialBackoff is %v", took, n.cfg.MaxDialBackoff)
	}
	p.mu.Lock()
	failures := p.dialFailures
	p.mu.Unlock()
	if failures != 0 {
		t.Fatalf("backoff not reset by a successful dial: %d failures remembered", failures)
	}
}

// rawMember opens an open-mode connection to n as member from on channel
// ch, the way a node dials, and reads the acceptor's answer.
func rawMember(t *testing.T, n *Node, from NodeNum, ch Channel) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := framing.Hello{Version: framing.ProtocolVersion, From: uint32(from), To: uint32(n.Num()), Channel: uint8(ch), Incarnation: n.peer(from).incarnation.Load(), Cluster: n.Cluster()}
	if _, err := c.Write(frameBytes(t, framing.TypeHello, mustHello(t, &h))); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := readHello(c); err != nil {
		t.Fatalf("no answer to the hello: %v", err)
	}
	return c
}

// TestFrameCheckedAgainstItsChannel: a request for a service of one
// channel sent on another channel's connection (dodging that channel's
// credit and queue) ends the connection, is counted as a bad frame, and
// reaches no handler; so does a priority-0 request on a priority channel.
func TestFrameCheckedAgainstItsChannel(t *testing.T) {
	// Each case breaks the protocol as node 1 and reconnects at once: no
	// hold-off (ViolationHoldOff) between them.
	nodes := startCluster(t, 2, func(c *Config) { c.ViolationHoldOff = time.Nanosecond })
	var served atomic.Int32
	clmsSvc := ServiceOn(ChanCLMS, 1)
	count := func(context.Context, *Request, *Response) error { served.Add(1); return nil }
	mustRegister(t, nodes[1], Service{ID: clmsSvc, Inline: true, Procs: []Handler{count}})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Inline: true, Procs: []Handler{count}})
	// Node 1 is up and known to node 2, so its incarnation is current.
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
	}
	served.Store(0)
	for _, tc := range []struct {
		name string
		ch   Channel
		h    framing.Header
	}{
		{"service of another channel", ChanFirstService, framing.Header{Type: framing.TypeOneWay, Service: clmsSvc}},
		{"priority 0 on a priority channel", ChanPrio1, framing.Header{Type: framing.TypeOneWay, Service: echoSvc}},
		{"priority 2 on the priority-1 channel", ChanPrio1, framing.Header{Type: framing.TypeOneWay, Priority: 2, Service: echoSvc}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := nodes[1].m.badFrames.Get()
			c := rawMember(t, nodes[1], 1, tc.ch)
			b := make([]byte, framing.HeaderSize)
			tc.h.Encode(b)
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatalf("connection not ended: %v", err)
			}
			if got := nodes[1].m.badFrames.Get() - bad; got != 1 {
				t.Fatalf("%d bad frames counted, want 1", got)
			}
			if served.Load() != 0 {
				t.Fatal("the misrouted frame reached a handler")
			}
		})
	}
}

// TestCallsRacingTeardownFailAtOnce: callers keep calling while their
// connections are torn down under them, again and again. Every call either
// succeeds or fails with ErrNodeDown well before its deadline: none is
// left waiting on a connection that died.
func TestCallsRacingTeardownFailAtOnce(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, MaxHandles: 8})
	p := nodes[0].peer(2)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, down atomic.Int64
	for g := 0; g < 6; g++ {
		wg.Add(1)
		// One context per caller: ctxFor registers a cleanup with t, and
		// one per call piled up hundreds of thousands of them behind t's
		// lock once calls got fast, stalling the callers.
		ctx := ctxFor(t, time.Minute)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, []byte("x"), nil)
				switch took := time.Since(start); {
				case took > 5*time.Second:
					t.Errorf("call took %v (%v): it waited on a dead link", took, err)
					return
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrNodeDown):
					down.Add(1)
				default:
					t.Errorf("call: %v, want success or ErrNodeDown", err)
					return
				}
			}
		}()
	}
	for i := 0; i < 30; i++ {
		// Calls get through between teardowns, then race the next one.
		last := ok.Load()
		eventually(t, "calls through a new link", func() bool {
			p.resetBackoff() // a dial that raced the loss must not hold the next ones back
			return ok.Load() > last+3
		})
		for ch := range p.out {
			if c := p.out[ch].Load(); c != nil {
				c.close() // a connection loss, as a reset would be
			}
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls succeeded, %d failed fast with ErrNodeDown", ok.Load(), down.Load())
	if ok.Load() == 0 {
		t.Fatal("no call succeeded")
	}
}

// TestNewIncarnationEndsOldLink: a hello from a peer's new incarnation ends
// the link to its previous run at once, before any connection of the old
// run is seen to drop: calls to the old run fail with ErrNodeDown saying it
// restarted.
func TestNewIncarnationEndsOldLink(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	release := make(chan struct{})
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) })
	mustRegister(t, nodes[0], Service{ID: slowSvc, MaxHandles: 2, Procs: []Handler{func(context.Context, *Request, *Response) error {
		select {
		case <-release:
		case <-ended:
		}
		return nil
	}}})
	f := nodes[1].Go(ctxFor(t, 30*time.Second), 1, Method{Service: slowSvc}, nil)
	eventually(t, "the call in flight", func() bool { return nodes[0].lookupService(slowSvc).pool.running.Load() == 1 })
	losses := nodes[1].m.peerLosses.Get()
	// "Node 1, rebooted": a hello with another incarnation.
	c, err := net.Dial("tcp", nodes[1].Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := framing.Hello{Version: framing.ProtocolVersion, From: 1, To: 2, Channel: uint8(ChanFirstService), Incarnation: nodes[0].Incarnation() + 2, Cluster: "test"}
	if _, err := c.Write(frameBytes(t, framing.TypeHello, mustHello(t, &h))); err != nil {
		t.Fatal(err)
	}
	_, err = f.Wait()
	if !errors.Is(err, ErrNodeDown) || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("call to the previous run: %v, want ErrNodeDown saying it restarted", err)
	}
	// Counted just after the calls fail.
	eventually(t, "the teardown counted", func() bool { return nodes[1].m.peerLosses.Get() > losses })
	if got := nodes[1].m.peerLosses.Get() - losses; got != 1 {
		t.Fatalf("%d link teardowns, want 1", got)
	}
	close(release)
}

// TestHelloTamperingFailsPrologue: the hello's fields are the Noise
// prologue, so a hello altered after the dialler authenticated it (here its
// channel) fails authentication, while the same hello unaltered passes.
func TestHelloTamperingFailsPrologue(t *testing.T) {
	nodes, ck, keys := startSecureCluster(t, SecurityAuthenticate, 2)
	sec := securityFor(SecurityAuthenticate, 1, ck, keys)
	for _, tamper := range []bool{false, true} {
		auth0 := nodes[1].m.authFailures.Get()
		hello := framing.Hello{Version: framing.ProtocolVersion, From: 1, To: 2, Channel: uint8(ChanFirstService), Incarnation: nodes[0].Incarnation(), Cluster: "test"}
		_, auth, err := sec.initiate(2, hello)
		if err != nil {
			t.Fatal(err)
		}
		hello.Auth = auth
		if tamper {
			hello.Channel = uint8(ChanCLMS) // what a man in the middle would redirect
		}
		c, err := net.Dial("tcp", nodes[1].Addr())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(frameBytes(t, framing.TypeHello, mustHello(t, &hello))); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var hb [framing.HeaderSize]byte
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			t.Fatal(err)
		}
		ah, err := framing.DecodeHeader(hb[:], 4096)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !tamper && ah.Type != framing.TypeHelloAck:
			t.Fatalf("untampered hello answered with %s", ah.Type)
		case tamper && ah.Type != framing.TypeRefuse:
			t.Fatalf("tampered hello answered with %s, want a refusal", ah.Type)
		case tamper && nodes[1].m.authFailures.Get()-auth0 != 1:
			t.Fatalf("%d authentication failures counted, want 1", nodes[1].m.authFailures.Get()-auth0)
		}
	}
}

// TestRegisterWaitBounded: a dialled socket waits for an event loop to take
// it (gnet's Register). With the node's only loop stuck (here in a
// misbehaving inline handler), that wait is bounded by DialTimeout instead
// of holding the caller until the loop frees, and the socket the loop takes
// late is closed, not published. (Netpoller readers have no such wait: a
// stuck inline handler holds only its own connection's reader.)
func TestRegisterWaitBounded(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) {
		c.ReadMode, c.EventLoops = ReadEventLoops, 1
		c.DialTimeout = 500 * time.Millisecond
	})
	a := nodes[0]
	stuck, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unstick := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unstick)
	mustRegister(t, a, Service{ID: slowSvc, Inline: true, Procs: []Handler{func(context.Context, *Request, *Response) error {
		close(stuck)
		<-release // blocks a's only event loop: never do this
		return nil
	}}})
	mustRegister(t, nodes[2], Service{ID: echoSvc, Inline: true, Procs: []Handler{echo}})
	if err := nodes[1].Send(ctxFor(t, 10*time.Second), 1, Method{Service: slowSvc}, nil); err != nil {
		t.Fatal(err)
	}
	<-stuck
	start := time.Now()
	_, err := a.Call(ctxFor(t, 30*time.Second), 3, Method{Service: echoSvc}, []byte("x"), nil)
	took := time.Since(start)
	if !errors.Is(err, ErrNodeDown) || took > 5*time.Second {
		t.Fatalf("call with the loop stuck: %v after %v, want ErrNodeDown after about DialTimeout (500ms)", err, took)
	}
	unstick()
	if c := a.peer(3).out[ChanFirstService].Load(); c != nil {
		t.Fatal("the abandoned connection was published")
	}
	a.peer(3).resetBackoff()
	eventually(t, "calls work once the loop is free", func() bool {
		got, err := a.Call(ctxFor(t, 10*time.Second), 3, Method{Service: echoSvc}, []byte("x"), nil)
		return err == nil && string(got) == "x"
	})
}

// TestForgedRepliesNeverComplete (issue 8 point 20): in open mode anyone
// can claim a member's number. Replies are read only on connections the
// caller dialled, so a stranger posing as node 3 first gets node 1 to dial
// it (a one-way message to node 3), then sprays replies on that connection:
// xids for every slot with guessed generations, and random ones. Node 1
// meanwhile makes real calls to node 2. A forged reply must never complete
// a real call: each call gets its own echo back, and every forged frame is
// counted as a late reply (dropped). A reply on a connection the stranger
// dialled itself is a protocol violation: the connection is closed.
func TestForgedRepliesNeverComplete(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	caller := nodes[0]
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	stranger := newFakeMember(t, caller, 3, nil)
	addFakeMember(t, 3, stranger.listen("127.0.0.3", false), caller)

	// Another stranger, as node 4 (a violation holds its sender off for a
	// while): a reply on a connection it dialled itself.
	addFakeMember(t, 4, "", caller)
	dialled := newFakeMember(t, caller, 4, nil).connect(ChanFirstService)
	bad := caller.m.badFrames.Get()
	if err := dialled.writeFrame(framing.Header{Type: framing.TypeReply, XID: 1<<32 | 1}, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	if !dialled.closedWithin(5 * time.Second) {
		t.Fatal("a reply on an accepted connection was not refused")
	}
	if got := caller.m.badFrames.Get(); got != bad+1 {
		t.Fatalf("bad frames %d, want %d", got, bad+1)
	}

	// At priority 1, unthrottled: the stranger grants no credit.
	if err := caller.Send(WithPriority(ctxFor(t, 10*time.Second), 1), 3, Method{Service: echoSvc}, []byte("dial me")); err != nil {
		t.Fatal(err)
	}
	var c *fakeConn
	select {
	case c = <-stranger.acceptedConns():
	case <-time.After(10 * time.Second):
		t.Fatal("node 1 never dialled the stranger")
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var calls, wrong atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				args := []byte(fmt.Sprintf("worker %d call %d", w, i))
				got, err := caller.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, args, nil)
				if err != nil {
					t.Errorf("real call: %v", err)
					return
				}
				if !bytes.Equal(got, args) {
					wrong.Add(1)
				}
				calls.Add(1)
			}
		}()
	}
	eventually(t, "real calls under way", func() bool { return calls.Load() > 50 })
	late0 := caller.m.lateReplies.Get()
	var sent uint64
	rng := rand.New(rand.NewPCG(1, 2))
	for round := uint64(0); round < 20; round++ {
		for slot := uint64(0); slot < 64; slot++ {
			for _, xid := range []uint64{slot | round<<24, slot | round<<32, rng.Uint64()} {
				if err := c.writeFrame(framing.Header{Type: framing.TypeReply, Priority: 1, XID: xid}, []byte("forged")); err != nil {
					t.Fatalf("forged reply %d: %v", sent, err)
				}
				sent++
			}
		}
	}
	eventually(t, "every forged reply dropped", func() bool { return caller.m.lateReplies.Get()-late0 == sent })
	cancel()
	wg.Wait()
	if n := wrong.Load(); n != 0 {
		t.Fatalf("%d of %d real calls completed with someone else's reply", n, calls.Load())
	}
	t.Logf("%d forged replies dropped during %d real calls", sent, calls.Load())
}
