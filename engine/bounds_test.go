package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

// helperNofileEnv lowers RLIMIT_NOFILE in a re-executed helper node (see
// runHelperNode), never in the test process itself.
const helperNofileEnv = "CI_HELPER_NOFILE"

// helperExtraFDsEnv makes a helper node hold that many more descriptors
// than it needs, so that a test can choose which of the descriptors an
// accepted connection takes (accept's, gnet's duplicate, the write side's
// duplicate) is the one that finds the process out of them.
const helperExtraFDsEnv = "CI_HELPER_EXTRA_FDS"

// helperExtraFDs keeps the extra descriptors open for the helper's life.
var helperExtraFDs []*os.File

func init() {
	if os.Getenv(helperEnv) == "" {
		return
	}
	if v := os.Getenv(helperNofileEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err == nil {
			err = unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n})
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	extra, _ := strconv.Atoi(os.Getenv(helperExtraFDsEnv))
	for range extra {
		f, err := os.Open(os.DevNull)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		helperExtraFDs = append(helperExtraFDs, f)
	}
}

// floodIdle opens count idle TCP connections to addr, spread over source
// addresses 127.0.<net>.1.. so that no per-address limit applies to most of
// them; it returns them for the caller to close.
func floodIdle(t testing.TB, addr string, subnet, perSource, count int) []net.Conn {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	for i := 0; i < count; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := fmt.Sprintf("127.0.%d.%d", subnet, 1+i/perSource)
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return // the kernel's queue is full: as good as shed
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return conns
}

// TestDescriptorExhaustionSurvived (issue 8 point 0): a node whose process
// runs out of descriptors under a flood of idle connections keeps its
// members' links, sheds the newcomers, and accepts again once the flood
// ends. The node runs in a child with RLIMIT_NOFILE lowered to 160: once
// with the default MaxConnections (a quarter of that), which sheds before
// the process runs out, and with no such cap, where accept or one of the
// duplicates an accepted connection needs fails with EMFILE. Which of
// them fails first depends on how many descriptors the process holds, so
// the EMFILE case runs with 0, 1 and 2 more held: a CI run whose child
// held one more than ours found the write side's duplicate uncounted, the
// node shedding every newcomer in a tight loop without saying why.
func TestDescriptorExhaustionSurvived(t *testing.T) {
	for _, tc := range []struct {
		name, maxConns string
		extraFDs       string
		counter        string // the limit the child must have counted
	}{
		{"connection cap", "", "0", "connections="},
		{"EMFILE", "100000", "0", "descriptors="},
		{"EMFILE+1", "100000", "1", "descriptors="},
		{"EMFILE+2", "100000", "2", "descriptors="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(helperNofileEnv, "160")
			t.Setenv(helperExtraFDsEnv, tc.extraFDs)
			t.Setenv("CI_HELPER_MAXCONNS", tc.maxConns)
			testDescriptorExhaustion(t, tc.counter)
		})
	}
}

func testDescriptorExhaustion(t *testing.T, counter string) {
	n := startCluster(t, 1, nil)[0]
	ch := startChild(t, "127.0.0.2:0", n.Addr())
	if err := n.SetPeer(2, ch.addr); err != nil {
		t.Fatal(err)
	}
	call := func(what string) error {
		got, err := n.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte(what), nil)
		if err == nil && string(got) != what {
			err = fmt.Errorf("reply %q", got)
		}
		return err
	}
	if err := call("before"); err != nil {
		t.Fatalf("call before the flood: %v", err)
	}

	// 400 idle connections from 20 addresses: far more descriptors than
	// the child has, each address under MaxUnauthPerSource.
	flood := floodIdle(t, ch.addr, 5, 20, 400)
	t.Logf("%d flood connections established", len(flood))
	if err := call("during"); err != nil {
		t.Errorf("call on the member's link during the flood: %v", err)
	}
	// The flood is established on our side before the child has accepted
	// it all: ask until the child has counted the limit.
	var l string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		_, _ = ch.stdin.Write([]byte("limits\n"))
		l = ch.expect(t, "limits ")
		if !strings.Contains(l, counter+"0 ") && !strings.HasSuffix(l, counter+"0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child did not count the limit %s in 10 s: %s", counter, l)
		}
	}
	t.Log(l)
	for _, c := range flood {
		_ = c.Close()
	}

	// Recovered: a member's new connections are accepted again.
	n.NodeDown(2, nil)
	n.NodeUp(2)
	var err error
	eventually(t, "a call on new connections after the flood", func() bool {
		err = call("after")
		return err == nil
	})
	select {
	case l := <-ch.lines:
		t.Fatalf("child said %q", l)
	default:
	}
}

// pendingCount is the number of accepted connections in their handshake.
func pendingCount(n *Node) int {
	n.pendingMu.Lock()
	defer n.pendingMu.Unlock()
	return n.pending.Len()
}

// TestAcceptorHelloLimit (issue 8 point 7): before the handshake the node
// buffers no more than a hello can be. A connection announcing a 15 MiB
// hello is closed as soon as its header arrives, long before the
// handshake timeout, and counted.
func TestAcceptorHelloLimit(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprint("secure=", secure), func(t *testing.T) {
			var tweak func(*Config)
			if secure {
				tweak, _ = fakeMemberSecurity(t, SecurityEncrypt, 1)
			}
			target := startCluster(t, 1, func(c *Config) {
				if tweak != nil {
					tweak(c)
				}
				c.HandshakeTimeout = time.Minute
			})[0]
			m := newFakeMember(t, target, 2, nil)
			nc, err := m.dialRaw()
			if err != nil {
				t.Fatal(err)
			}
			c := &fakeConn{Conn: nc, t: t}
			if err := c.writeHeader(framing.Header{Type: framing.TypeHello, Length: 15 << 20}); err != nil {
				t.Fatal(err)
			}
			_ = c.writeBytes(make([]byte, 64<<10)) // may fail: the node is closing it
			if !c.closedWithin(5 * time.Second) {
				t.Fatal("a 15 MiB hello was not refused at once")
			}
			if got := target.m.limitHelloSize.Get(); got != 1 {
				t.Fatalf("hello_size limit hits = %d, want 1", got)
			}
		})
	}
}

// TestPendingHandshakesCapped (issue 8 point 7): connections in their
// handshake are bounded node-wide, not only per address, and a member
// still gets in while the cap is full of idle strangers: the oldest
// stranger makes room.
func TestPendingHandshakesCapped(t *testing.T) {
	target := startCluster(t, 1, func(c *Config) {
		c.HandshakeTimeout = time.Minute
		c.MaxUnauthPerSource = 4
		c.MaxPendingHandshakes = 8
	})[0]
	flood := floodIdle(t, target.Addr(), 6, 2, 20) // 10 addresses, 2 each
	defer func() {
		for _, c := range flood {
			_ = c.Close()
		}
	}()
	eventually(t, "the node to shed the oldest strangers", func() bool {
		return target.m.limitPending.Get() == 12
	})
	if k := pendingCount(target); k != 8 {
		t.Fatalf("%d connections pending, want the cap 8", k)
	}
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	m.connect(ChanFirstService) // fails the test if refused
	if got := target.m.limitUnauthPerSource.Get(); got != 0 {
		t.Fatalf("per-address limit hit %d times, no address went over it", got)
	}
}

// TestMemberRoomFromSameAddress (issue 8 point 12): idle connections from
// a member's own address cannot keep that member out: it reconnects at
// once, well before the strangers' handshake timeout.
func TestMemberRoomFromSameAddress(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.HandshakeTimeout = time.Minute })
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	var flood []net.Conn
	for i := 0; i < nodes[1].cfg.MaxUnauthPerSource; i++ {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}
		c, err := d.Dial("tcp", nodes[1].Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		flood = append(flood, c)
	}
	eventually(t, "the idle connections to be pending", func() bool {
		return pendingCount(nodes[1]) == len(flood)
	})
	got, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("member"), nil)
	if err != nil || string(got) != "member" {
		t.Fatalf("member's call with its address's room full of strangers: %q %v", got, err)
	}
	if got := nodes[1].m.limitUnauthPerSource.Get(); got == 0 {
		t.Fatal("the per-address limit never triggered")
	}
}

// TestNoiseOffTheEventLoop (issue 8 point 11): the key exchange of a hello
// does not run on the event loop. With a single loop and the Noise work
// of a stranger's hello held up, a member's calls on that loop go on.
func TestNoiseOffTheEventLoop(t *testing.T) {
	tweak, msec := fakeMemberSecurity(t, SecurityAuthenticate, 2)
	nodes := startCluster(t, 2, func(c *Config) { tweak(c); c.EventLoops = 1 })
	target := nodes[1]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("warm"), nil); err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() {
		once.Do(func() { close(held) })
		<-release
	}
	testHookNoise.Store(&hook)
	defer testHookNoise.Store(nil)
	defer once.Do(func() {})
	m := newFakeMember(t, target, 3, msec)
	addFakeMember(t, 3, "", target)
	go func() { _, _ = m.tryConnect(ChanFirstService) }()
	<-held
	got, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("meanwhile"), nil)
	close(release)
	if err != nil || string(got) != "meanwhile" {
		t.Fatalf("call while a handshake's Noise work was held: %q %v", got, err)
	}
}

// TestNoiseRateLimited (issue 8 point 11): hellos whose key exchange must
// be computed are rate-limited, strangers apart from members dialling
// from their own address, so a flood of forged hellos costs bounded CPU
// and a member still gets in.
func TestNoiseRateLimited(t *testing.T) {
	ck, keys := clusterKeys(t, 2)
	nodes := startCluster(t, 2, func(c *Config) {
		c.Security = securityFor(SecurityAuthenticate, int(c.Node), ck, keys)
		c.MaxHandshakesPerSecond = 1
	})
	target := nodes[1]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
	// The forger has the cluster key (its id is all a hello shows) but not
	// node 1's key: the node learns that only from the key exchange.
	forger := securityFor(SecurityAuthenticate, 1, ck, keys)
	var err error
	if forger.NodeKey, err = GenerateNodeKey(); err != nil {
		t.Fatal(err)
	}
	m := newFakeMember(t, target, 1, forger) // claims node 1, from another address
	m.source = "127.0.7.1"
	const forged = 60
	for i := 0; i < forged; i++ {
		if _, err := m.tryConnect(ChanFirstService); err == nil {
			t.Fatal("a forged hello was accepted")
		}
	}
	rate, auth := target.m.limitHandshakeRate.Get(), target.m.authFailures.Get()
	t.Logf("%d forged hellos: %d refused by the rate limit, %d failed authentication", forged, rate, auth)
	if rate+auth != forged || rate < forged*2/3 {
		t.Fatalf("rate-limited %d + auth failures %d, want %d with most rate-limited", rate, auth, forged)
	}
	// The real node 1 dials from its own address: its room is not spent.
	got, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("member"), nil)
	if err != nil || string(got) != "member" {
		t.Fatalf("member's call after the flood: %q %v", got, err)
	}
}

// bigReply answers every request with 256 KiB.
func bigReply(_ context.Context, _ *Request, resp *Response) error {
	resp.Body = append(resp.Body[:0], make([]byte, 256<<10)...)
	return nil
}

var bigSvc = ServiceOn(ChanFirstService, 3)

// nonReadingMember is a fake member that sends requests and never reads
// the replies that come back on its connections. Its own address accepts
// and never answers: replies must need no dial.
func nonReadingMember(t *testing.T, target *Node, num NodeNum, ip string) *fakeMember {
	m := newFakeMember(t, target, num, nil)
	addFakeMember(t, num, m.listen(ip, true), target)
	return m
}

// TestLoopRepliesBounded (issue 8 point 4): replies sent by the reader
// (inline handlers) respect MaxPendingWrite (80 MiB were seen against 8).
// An event loop cannot wait, so a member that never reads its replies ends
// its link when the queue would pass the bound; a netpoller reader waits
// for room instead, reading no more requests meanwhile, until the write
// timeout ends the link.
func TestLoopRepliesBounded(t *testing.T) {
	target := startCluster(t, 1, func(c *Config) {
		c.MaxPayload = 1 << 20
		c.MaxPendingWrite = 2 << 20
		c.WriteTimeout = time.Minute // not what ends it with event loops
		if c.EffectiveReadMode() == ReadNetpoller {
			c.WriteTimeout = 500 * time.Millisecond // what ends it here
		}
	})[0]
	loops := target.cfg.ReadMode == ReadEventLoops
	mustRegister(t, target, Service{ID: bigSvc, Procs: []Handler{bigReply}, Inline: true})
	m := nonReadingMember(t, target, 2, "127.0.0.2")
	c := m.connect(ChanPrio1) // never throttled: the replies are the only bound
	req := framing.Header{Type: framing.TypeRequest, Priority: 1, Service: bigSvc}
	for i := 0; i < 100; i++ { // 25 MiB of replies
		req.XID = uint64(i+1)<<32 | 1
		if err := c.writeFrame(req, nil); err != nil {
			break // the node already ended the link
		}
	}
	// Reading would let the replies drain: the member only watches.
	eventually(t, "the node to end the link of a member that reads no replies", func() bool {
		return target.m.peerLosses.Get() >= 1
	})
	if got := target.m.limitPendingWrite.Get(); loops && got < 1 {
		t.Fatalf("pending_write limit hits = %d", got)
	}
	if got := target.m.limitWriteTimeout.Get(); !loops && got < 1 {
		t.Fatalf("write timeouts = %d: the reader's wait for room did not end at the write timeout", got)
	}
	if p := target.peer(2); target.inboundOn(p, ChanPrio1) != 0 {
		t.Fatal("the member's connection is still recorded")
	}
}

// TestNonReadingPeerReleasesHandles (issue 8 point 5): a peer that stops
// reading cannot hold server handles for ever. Priority requests with
// large replies fill the priority handles; the write timeout ends the
// link, the handles come back, and a healthy node's priority call works.
func TestNonReadingPeerReleasesHandles(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.WriteTimeout = 500 * time.Millisecond })
	target := nodes[1]
	mustRegister(t, target, Service{ID: bigSvc, Procs: []Handler{bigReply}})
	m := nonReadingMember(t, target, 3, "127.0.0.3")
	c := m.connect(ChanPrio1)
	req := framing.Header{Type: framing.TypeRequest, Priority: 1, Service: bigSvc}
	for i := 0; i < 200; i++ {
		req.XID = uint64(i+1)<<32 | 1
		if err := c.writeFrame(req, nil); err != nil {
			break
		}
	}
	eventually(t, "the write timeout to end the link", func() bool {
		return target.m.limitWriteTimeout.Get() >= 1
	})
	eventually(t, "the priority handles to be released", func() bool {
		return target.prioPool.running.Load() == 0
	})
	got, err := nodes[0].Call(WithPriority(ctxFor(t, 10*time.Second), 1), 2, Method{Service: bigSvc}, nil, nil)
	if err != nil || len(got) != 256<<10 {
		t.Fatalf("healthy priority call: %d bytes, %v", len(got), err)
	}
}

// TestRepliesNeedNoDial (issue 8 point 10, where replies once waited for
// a reply channel to be dialled): a member whose own address accepts TCP
// and never answers still gets every reply, on the connection its requests
// came on; the node never dials it, and no goroutine is started per reply.
func TestRepliesNeedNoDial(t *testing.T) {
	target := startCluster(t, 1, func(c *Config) { c.DialTimeout = 3 * time.Second })[0]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, m.listen("127.0.0.2", true), target)
	c := m.connect(ChanPrio1)
	before := runtime.NumGoroutine()
	const requests = 200
	req := framing.Header{Type: framing.TypeRequest, Priority: 1, Service: echoSvc}
	for i := 0; i < requests; i++ {
		req.XID = uint64(i+1)<<32 | 1
		if err := c.writeFrame(req, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := 0; i < requests; i++ {
		h, body, err := c.readUntil(framing.TypeReply)
		if err != nil || h.XID != uint64(i+1)<<32|1 || string(body) != "x" {
			t.Fatalf("reply %d: %+v %q %v", i, h, body, err)
		}
	}
	if grew := runtime.NumGoroutine() - before; grew > 10 {
		t.Errorf("%d more goroutines while replying", grew)
	}
	if got := target.peer(2).dialAttempts.Get(); got != 0 {
		t.Fatalf("%d dials to reply", got)
	}
	if got := target.m.peerLosses.Get(); got != 0 {
		t.Fatalf("%d link losses", got)
	}
}

// blockingSvc's handler waits until the test releases it, so credit is
// not returned and requests stay in flight.
var blockingSvc = ServiceOn(ChanFirstService, 4)

func registerBlocking(t *testing.T, n *Node, handles int) (release func()) {
	gate := make(chan struct{})
	mustRegister(t, n, Service{ID: blockingSvc, MaxHandles: handles, Procs: []Handler{func(ctx context.Context, _ *Request, _ *Response) error {
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return nil
	}}})
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	return release
}

// TestReceiverEnforcesCredit (issue 8 point 6): a sender that ignores the
// credit it was granted is cut off: a frame sent with no credit left ends
// its connection, counted, instead of queueing without bound (30 MiB were
// held against a 256 KiB window).
func TestReceiverEnforcesCredit(t *testing.T) {
	target := startCluster(t, 1, func(c *Config) { c.CreditWindow = 64 << 10; c.MaxCreditWindow = 64 << 10 })[0]
	registerBlocking(t, target, 2)
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	c := m.connect(ChanFirstService)
	req := framing.Header{Type: framing.TypeRequest, Service: blockingSvc}
	args := make([]byte, 4<<10)
	sent := 0
	for i := 0; i < 100; i++ { // 400 KiB against a 64 KiB window
		req.XID = uint64(i+1)<<32 | 1
		if err := c.writeFrame(req, args); err != nil {
			break
		}
		sent += framing.HeaderSize + len(args)
	}
	if !c.closedWithin(10 * time.Second) {
		t.Fatalf("a sender %d bytes over its window kept its connection", sent-(64<<10))
	}
	if got := target.m.limitCredit.Get(); got != 1 {
		t.Fatalf("credit limit hits = %d, want 1", got)
	}
}

// TestFramePriorityMatchesChannel (issue 8 point 6): a priority-0 request
// on a priority channel would bypass credit; it is refused, as is any
// priority that is not the channel's.
func TestFramePriorityMatchesChannel(t *testing.T) {
	// One violation per connection, reconnecting at once: no hold-off.
	target := startCluster(t, 1, func(c *Config) { c.ViolationHoldOff = time.Nanosecond })[0]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	for _, tc := range []struct {
		ch   Channel
		prio uint8
	}{{ChanPrio1, 0}, {ChanPrio2, 1}, {ChanFirstService, 3}} {
		before := target.m.badFrames.Get()
		c := m.connect(tc.ch)
		req := framing.Header{Type: framing.TypeRequest, Priority: tc.prio, Service: echoSvc, XID: 1<<32 | 1}
		if err := c.writeFrame(req, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if !c.closedWithin(5 * time.Second) {
			t.Fatalf("priority %d on %s: connection kept", tc.prio, tc.ch)
		}
		if target.m.badFrames.Get() != before+1 {
			t.Fatalf("priority %d on %s: not counted as a bad frame", tc.prio, tc.ch)
		}
	}
	if got := target.m.framesInByPrio[0].Get() + target.m.framesInByPrio[1].Get() + target.m.framesInByPrio[3].Get(); got != 0 {
		t.Fatalf("%d misrouted requests reached the service layer", got)
	}
}

// busyReplies sends count requests of size bytes each to blockingSvc on a
// priority channel and returns how many were answered busy.
func busyReplies(t *testing.T, target *Node, count, size int) int {
	t.Helper()
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, m.listen("127.0.0.2", false), target)
	c := m.connect(ChanPrio1)
	req := framing.Header{Type: framing.TypeRequest, Priority: 1, Service: blockingSvc}
	for i := 0; i < count; i++ {
		req.XID = uint64(i+1)<<32 | 1
		if err := c.writeFrame(req, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
	}
	busy := 0
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		h, _, err := c.readUntil(framing.TypeReply)
		if err != nil {
			return busy // every refusal has been read: the rest are in flight
		}
		if Status(h.Status) != StatusBusy {
			t.Fatalf("reply status %d, want busy", h.Status)
		}
		busy++
	}
}

// TestInflightPerPeerAnswersBusy: MaxInflightPerPeer (a promise nothing
// tested): requests past it are answered busy, at once.
func TestInflightPerPeerAnswersBusy(t *testing.T) {
	target := startCluster(t, 1, func(c *Config) { c.MaxInflightPerPeer = 5 })[0]
	registerBlocking(t, target, 64)
	if busy := busyReplies(t, target, 12, 10); busy != 7 {
		t.Fatalf("%d busy replies, want 7 (12 sent, 5 allowed)", busy)
	}
	if got := target.m.limitInflight.Get(); got != 7 {
		t.Fatalf("inflight limit hits = %d, want 7", got)
	}
}

// TestInflightBytesPerPeer (issue 8 point 9): requests in flight from one
// peer are bounded in bytes too, not only in number (65,536 x 16 MiB).
func TestInflightBytesPerPeer(t *testing.T) {
	const limit, size = 1 << 20, 128 << 10
	target := startCluster(t, 1, func(c *Config) { c.MaxInflightBytesPerPeer = limit })[0]
	registerBlocking(t, target, 64)
	allowed := limit / (framing.HeaderSize + size) // 7
	if busy := busyReplies(t, target, 20, size); busy != 20-allowed {
		t.Fatalf("%d busy replies, want %d", busy, 20-allowed)
	}
	if got := target.m.limitInflightBytes.Get(); got != uint64(20-allowed) {
		t.Fatalf("inflight_bytes limit hits = %d, want %d", got, 20-allowed)
	}
}

// TestInboundConnsPerChannelCapped (issue 8 point 9): a peer cannot open
// connection after connection on one channel, each with its own window:
// past MaxConnsPerChannel the newest replaces the oldest, which leaves the
// link quietly (a member redialling after its side of the link ended does
// exactly this, before the old connection's close has been seen here). The
// count stays at the bound and the link is untouched. A hello past the
// bound plus one is refused outright.
func TestInboundConnsPerChannelCapped(t *testing.T) {
	target := startCluster(t, 1, nil)[0]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	var conns []*fakeConn
	for i := 0; i < target.cfg.MaxConnsPerChannel; i++ {
		conns = append(conns, m.connect(ChanFirstService))
	}
	p := target.peer(2)
	eventually(t, "the connections joined", func() bool { return target.inboundOn(p, ChanFirstService) == len(conns) })
	newest := m.connect(ChanFirstService)
	if !conns[0].closedWithin(5 * time.Second) {
		t.Fatal("the oldest connection was not replaced")
	}
	if k := target.inboundOn(p, ChanFirstService); k != target.cfg.MaxConnsPerChannel {
		t.Fatalf("%d connections on one channel, bound %d", k, target.cfg.MaxConnsPerChannel)
	}
	if got := target.m.limitConnsPerChannel.Get(); got != 1 {
		t.Fatalf("conns_per_channel limit hits = %d, want 1", got)
	}
	if got := target.m.peerLosses.Get(); got != 0 {
		t.Fatalf("replacing the oldest connection ended the link (%d losses)", got)
	}
	req := framing.Header{Type: framing.TypeRequest, Service: echoSvc, XID: 9<<32 | 1}
	if err := newest.writeFrame(req, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	_ = newest.SetReadDeadline(time.Now().Add(10 * time.Second))
	if h, body, err := newest.readUntil(framing.TypeReply); err != nil || h.XID != req.XID || string(body) != "still here" {
		t.Fatalf("reply on the newest connection: %+v %q %v", h, body, err)
	}
	m.connect(ChanFirstService + 1) // another channel has its own room
}

// TestReceivedFrameOverMaxPayloadCloses: a promise nothing tested. A frame
// whose header announces more than MaxPayload — on the wire, or once
// decompressed — ends the connection as soon as its header arrives,
// counted, before a byte of it is buffered.
func TestReceivedFrameOverMaxPayloadCloses(t *testing.T) {
	const limit = 1 << 16
	target := startCluster(t, 1, func(c *Config) {
		c.MaxPayload = limit
		c.ViolationHoldOff = time.Nanosecond // one violation per connection, reconnecting at once
	})[0]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	for i, h := range []framing.Header{
		{Type: framing.TypeRequest, Priority: 1, Service: echoSvc, XID: 1<<32 | 1, Length: limit + 1},
		{Type: framing.TypeRequest, Priority: 1, Service: echoSvc, XID: 1<<32 | 1, Length: 10, Flags: framing.FlagS2, Aux: limit + 1},
	} {
		c := m.connect(ChanPrio1)
		if err := c.writeHeader(h); err != nil {
			t.Fatal(err)
		}
		if !c.closedWithin(5 * time.Second) {
			t.Fatalf("frame %d over MaxPayload: connection kept", i)
		}
		if got := target.m.limitFrameSize.Get(); got != uint64(i+1) {
			t.Fatalf("frame_size limit hits = %d, want %d", got, i+1)
		}
	}
}

// TestCreditCountsDecompressedBytes (issue 8 points 6 and 8): credit is
// spent at a compressed frame's decompressed size, so a window bounds the
// decompression work it admits too: a sender of real compression bombs
// (1 MiB of zeros in a few dozen bytes) exhausts a 256 KiB window with
// its first frame and is cut off at the second.
func TestCreditCountsDecompressedBytes(t *testing.T) {
	target := startCluster(t, 1, nil)[0]
	registerBlocking(t, target, 2)
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	c := m.connect(ChanFirstService)
	codec := framing.NewCodec(0)
	defer codec.Close()
	bomb, flag, err := codec.Compress(nil, make([]byte, 1<<20), framing.CompressS2)
	if err != nil || len(bomb) > 1024 {
		t.Fatalf("bomb of %d bytes: %v", len(bomb), err)
	}
	req := framing.Header{Type: framing.TypeRequest, Service: blockingSvc, Flags: flag, Aux: 1 << 20}
	for i := 0; i < 3; i++ {
		req.XID = uint64(i+1)<<32 | 1
		if err := c.writeFrame(req, bomb); err != nil {
			break
		}
	}
	if !c.closedWithin(10 * time.Second) {
		t.Fatal("three 1 MiB bombs against a 256 KiB window kept the connection")
	}
	if got := target.m.limitCredit.Get(); got != 1 {
		t.Fatalf("credit limit hits = %d, want 1", got)
	}
}

// TestViolatorHeldOff: a member whose connection broke the protocol (here
// a request on the wrong priority) is refused for ViolationHoldOff before
// it may connect again, so a member that reconnects as fast as it can
// earns one window (one compression bomb) per hold-off, not per handshake.
func TestViolatorHeldOff(t *testing.T) {
	const holdOff = 500 * time.Millisecond
	target := startCluster(t, 1, func(c *Config) { c.ViolationHoldOff = holdOff })[0]
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, "", target)
	c := m.connect(ChanPrio1)
	cut := time.Now() // the node's hold-off starts later than this, never earlier
	if err := c.writeFrame(framing.Header{Type: framing.TypeRequest, Priority: 0, Service: echoSvc, XID: 1<<32 | 1}, nil); err != nil {
		t.Fatal(err)
	}
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("violating connection kept")
	}
	if _, err := m.tryConnect(ChanPrio1); err == nil {
		if time.Since(cut) < holdOff {
			t.Fatal("the violator reconnected at once")
		}
		t.Skip("the machine took longer than the hold-off to reconnect")
	}
	if got := target.m.limitViolationHoldOff.Get(); got != 1 {
		t.Fatalf("violation hold-off hits = %d, want 1", got)
	}
	eventually(t, "the violator let back after the hold-off", func() bool {
		_, err := m.tryConnect(ChanPrio1)
		return err == nil
	})
	if waited := time.Since(cut); waited < holdOff {
		t.Fatalf("let back after %v, hold-off %v", waited, holdOff)
	}
}

// TestLoopDirRemovedAtStart: the event loops' private unix listener is
// unlinked as soon as it is bound, so a node killed with SIGKILL leaves
// nothing in the temporary directory (1,400 ics-loops-* directories had
// piled up in /tmp from the multi-process tests before).
func TestLoopDirRemovedAtStart(t *testing.T) {
	nodes := startCluster(t, 1, func(c *Config) { c.ReadMode = ReadEventLoops })
	if _, err := os.Stat(nodes[0].loopDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("loop directory %s still there after Start: %v", nodes[0].loopDir, err)
	}
	// The loops still run: a registered service answers a local peer's call.
	if got := nodes[0].eng.Validate(); got != nil {
		t.Fatalf("engine not running: %v", got)
	}
}
