package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// TestHostileClients: thousands of half-open and garbage connections hit a
// node while two members run a real RPC workload through it. Every call
// must succeed, the node must shed the junk (handshake timeout, bad frames,
// the per-address limit) and its memory must stay bounded.
func TestHostileClients(t *testing.T) {
	ck, keys := clusterKeys(t, 2)
	nodes := startCluster(t, 2, func(c *Config) {
		c.Security = securityFor(SecurityEncrypt, int(c.Node), ck, keys)
		c.HandshakeTimeout = time.Second // a member's handshake under -race on a loaded machine takes a few hundred ms
	})
	target := nodes[1]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}, MaxHandles: 8})

	// The workload's connections exist before the attack, as a member's do
	// (with a 300 ms handshake timeout, a dial during the flood on a loaded
	// machine may time out; that is the timeout working, not the workload).
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
	}

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	ctx, stop := context.WithCancel(context.Background())
	var calls, failures atomic.Int64
	var work sync.WaitGroup
	for g := 0; g < 4; g++ {
		work.Add(1)
		go func() {
			defer work.Done()
			args := []byte(fmt.Sprintf("worker %d", g))
			for ctx.Err() == nil {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				got, err := nodes[0].Call(cctx, 2, Method{Service: echoSvc}, args, nil)
				cancel()
				if ctx.Err() != nil {
					return
				}
				if err != nil || string(got) != string(args) {
					failures.Add(1)
					t.Errorf("call during attack: %q %v", got, err)
					return
				}
				calls.Add(1)
			}
		}()
	}

	const waves, perWave = 4, 800
	garbage := []byte("GET / HTTP/1.1\r\nHost: cluster\r\n\r\n\x00\x01\x02\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
	var opened, refusedEarly, notClosed atomic.Int64
	for w := 0; w < waves; w++ {
		var wave sync.WaitGroup
		conns := make(chan net.Conn, perWave)
		for i := 0; i < perWave; i++ {
			wave.Add(1)
			go func() {
				defer wave.Done()
				// Most attackers share one address (the per-address limit cuts
				// them off); the rest come from many addresses.
				src := "127.0.3.1"
				if i%4 == 0 {
					src = fmt.Sprintf("127.0.4.%d", 1+i%250)
				}
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", target.Addr())
				if err != nil {
					refusedEarly.Add(1)
					return
				}
				opened.Add(1)
				if i%2 == 0 {
					_, _ = c.Write(garbage) // garbage: closed at once
				} // else half-open: says nothing, closed at the handshake timeout
				conns <- c
			}()
		}
		wave.Wait()
		close(conns)
		// The node, not the test, must close every one of them: garbage at
		// once, half-open ones at the handshake timeout (or shed earlier to
		// make room). A read sees the close; a timeout here means the node
		// left a connection open.
		var closing sync.WaitGroup
		for c := range conns {
			closing.Add(1)
			go func() {
				defer closing.Done()
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				if _, err := io.Copy(io.Discard, c); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						notClosed.Add(1)
					}
				}
			}()
		}
		closing.Wait()
	}
	stop()
	work.Wait()

	eventually(t, "no unauthenticated connection left", func() bool {
		target.pendingMu.Lock()
		defer target.pendingMu.Unlock()
		return target.pending.Len() == 0 && len(target.pendingBySource) == 0
	})
	// Twice: the first GC only moves sync.Pool caches to their victim list.
	runtime.GC()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d hostile connections opened (%d refused by the kernel), %d calls succeeded meanwhile; "+
		"per-address limit hits %d, handshake timeouts %d, bad frames %d; heap in use %d -> %d KiB",
		opened.Load(), refusedEarly.Load(), calls.Load(),
		target.m.limitUnauthPerSource.Get(), target.m.limitHandshakeTimeout.Get(), target.m.badFrames.Get()+target.m.handshakeRejects.Get(),
		before.HeapInuse>>10, after.HeapInuse>>10)
	if failures.Load() > 0 || calls.Load() == 0 {
		t.Fatalf("workload: %d calls, %d failures", calls.Load(), failures.Load())
	}
	if target.m.limitUnauthPerSource.Get() == 0 {
		t.Fatal("the per-address limit never triggered")
	}
	if k := notClosed.Load(); k > 0 {
		t.Fatalf("the node left %d hostile connections open", k)
	}
	// Every connection the node accepted, it closed for a reason it
	// counted: its handshake timed out, it was shed to make room, or it
	// sent a bad frame.
	// (Garbage is refused as a hello of no known version: a handshake
	// reject, which the timeouts also count.)
	closed := target.m.handshakeRejects.Get() + target.m.limitUnauthPerSource.Get() +
		target.m.limitPending.Get() + target.m.badFrames.Get()
	if target.m.limitHandshakeTimeout.Get() == 0 || closed < uint64(opened.Load()) {
		t.Fatalf("%d connections opened, %d closes counted (%d handshake timeouts)", opened.Load(), closed, target.m.limitHandshakeTimeout.Get())
	}
	if growth > 16<<20 {
		t.Fatalf("heap grew by %d MiB under attack", growth>>20)
	}
}

// workload is a real RPC workload from one node to another: callers that
// count their calls and fail the test on any error.
type workload struct {
	t      *testing.T
	calls  atomic.Int64
	stop   context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup
	failed atomic.Int64
}

func startWorkload(t *testing.T, from *Node, to NodeNum, callers int) *workload {
	w := &workload{t: t}
	w.ctx, w.stop = context.WithCancel(context.Background())
	for g := 0; g < callers; g++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			args := []byte(fmt.Sprintf("caller %d", g))
			for w.ctx.Err() == nil {
				cctx, cancel := context.WithTimeout(w.ctx, 15*time.Second)
				got, err := from.Call(cctx, to, Method{Service: echoSvc}, args, nil)
				cancel()
				if w.ctx.Err() != nil {
					return
				}
				if err != nil || string(got) != string(args) {
					w.failed.Add(1)
					t.Errorf("workload call: %q %v", got, err)
					return
				}
				w.calls.Add(1)
			}
		}()
	}
	return w
}

func (w *workload) end() { w.stop(); w.wg.Wait() }

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestHostilePeers (issue 8, tests and evidence): a real workload runs
// between two members while fake members and strangers attack the target
// node, one attack after another. The workload must never fail, must keep
// going during and after each attack, the heap and the goroutine count
// must stay bounded, and each attack must have hit the bound that stops
// it. Figures go to the log (docs/ARCHITECTURE.md records a run).
func TestHostilePeers(t *testing.T) {
	if testing.Short() {
		t.Skip("hostile-peer test: a few seconds per attack")
	}
	ck, keys := clusterKeys(t, 6)
	sec := func(n int) *Security { return securityFor(SecurityAuthenticate, n, ck, keys) }
	nodes := startCluster(t, 2, func(c *Config) {
		c.Security = sec(int(c.Node))
		c.HandshakeTimeout = time.Second
		c.WriteTimeout = time.Second
		c.DialTimeout = time.Second
		c.MaxInflightBytesPerPeer = 64 << 20
		c.MaxPendingHandshakes = 256
	})
	target := nodes[1]
	mustRegister(t, target, Service{ID: echoSvc, Procs: []Handler{echo}})
	mustRegister(t, target, Service{ID: bigSvc, Procs: []Handler{bigReply}})
	sink := ServiceOn(ChanFirstService, 5)
	mustRegister(t, target, Service{ID: sink, Procs: []Handler{func(context.Context, *Request, *Response) error { return nil }}})

	w := startWorkload(t, nodes[0], 2, 4)
	defer w.end()
	eventually(t, "the workload to run", func() bool { return w.calls.Load() > 100 })
	baseHeap, baseG := heapInUse(), runtime.NumGoroutine()
	rate := func(d time.Duration) float64 {
		c0, t0 := w.calls.Load(), time.Now()
		time.Sleep(d) // a measurement window, not synchronisation
		return float64(w.calls.Load()-c0) / time.Since(t0).Seconds()
	}
	before := rate(time.Second)
	t.Logf("baseline: %.0f calls/s, heap %d KiB, %d goroutines", before, baseHeap>>10, baseG)

	type attack struct {
		name  string
		run   func(ctx context.Context) // runs until ctx ends
		bound func() uint64             // counts of the limits that must have stopped it; nil: see below
	}
	member := func(num NodeNum, listen string, tarpit bool) *fakeMember {
		m := newFakeMember(t, target, num, sec(int(num)))
		addr := ""
		if listen != "" {
			addr = m.listen(listen, tarpit)
		}
		addFakeMember(t, num, addr, target)
		return m
	}
	attacks := []attack{
		{"1000 idle and garbage connections from 100 addresses", func(ctx context.Context) {
			conns := floodIdle(t, target.Addr(), 8, 10, 1000)
			for i, c := range conns {
				if i%2 == 0 {
					_, _ = c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
				}
			}
			<-ctx.Done()
			for _, c := range conns {
				_ = c.Close()
			}
		}, func() uint64 {
			return target.m.limitPending.Get() + target.m.limitHandshakeTimeout.Get() + target.m.badFrames.Get()
		}},
		{"hellos announcing 15 MiB", func(ctx context.Context) {
			m := newFakeMember(t, target, 3, nil)
			m.source = "127.0.9.1"
			for ctx.Err() == nil {
				nc, err := m.dialRaw()
				if err != nil {
					continue
				}
				c := &fakeConn{Conn: nc, t: t}
				_ = c.writeHeader(framing.Header{Type: framing.TypeHello, Length: 15 << 20})
				_ = c.writeBytes(make([]byte, 256<<10))
				_ = nc.Close()
			}
		}, target.m.limitHelloSize.Get},
		{"compression bombs from a member", func(ctx context.Context) {
			m := member(3, "127.0.0.3", false)
			codec := framing.NewCodec(0)
			defer codec.Close()
			real, flag, _ := codec.Compress(nil, make([]byte, 16<<20), framing.CompressS2)
			liar := []byte{0x80, 0x80, 0x80, 0x08, 0x00, 'x'}
			for i := uint64(1); ctx.Err() == nil; i++ {
				c, err := m.tryConnect(ChanFirstService)
				if err != nil {
					continue
				}
				for j := 0; j < 50 && ctx.Err() == nil; j++ {
					payload := liar
					if j%2 == 0 {
						payload = real
					}
					h := framing.Header{Type: framing.TypeRequest, Service: sink, XID: i<<32 | uint64(j), Flags: flag, Aux: 16 << 20}
					if c.writeFrame(h, payload) != nil {
						break
					}
				}
				_ = c.Close()
			}
		}, func() uint64 { return target.m.limitDecompress.Get() + target.m.limitCredit.Get() }},
		{"a member that never reads its replies", func(ctx context.Context) {
			m := member(4, "127.0.0.4", false)
			for ctx.Err() == nil {
				c, err := m.tryConnect(ChanPrio1)
				if err != nil {
					continue
				}
				before := target.m.limitWriteTimeout.Get()
				h := framing.Header{Type: framing.TypeRequest, Priority: 1, Service: bigSvc}
				for j := uint64(1); j < 200 && ctx.Err() == nil; j++ {
					h.XID = j<<32 | 1
					if c.writeFrame(h, nil) != nil {
						break
					}
				}
				// Its replies come back on this connection: reading them
				// would be reading. Wait for the node to give up on it.
				for ctx.Err() == nil && target.m.limitWriteTimeout.Get() == before {
					time.Sleep(5 * time.Millisecond)
				}
				_ = c.Close()
			}
		}, target.m.limitWriteTimeout.Get},
		{"a member that sends the node replies it never asked for", func(ctx context.Context) {
			m := member(5, "127.0.0.5", true)
			for ctx.Err() == nil {
				c, err := m.tryConnect(ChanPrio1)
				if err != nil {
					continue
				}
				h := framing.Header{Type: framing.TypeReply, Priority: 1, Service: echoSvc}
				for j := uint64(1); j < 500 && ctx.Err() == nil; j++ {
					h.XID = j<<32 | 1
					if c.writeFrame(h, []byte("x")) != nil {
						break
					}
				}
				_ = c.closedWithin(5 * time.Second)
			}
		}, target.m.badFrames.Get},
		{"a member's reconnect storm", func(ctx context.Context) {
			m := member(6, "", false)
			for ctx.Err() == nil {
				if c, err := m.tryConnect(ChanFirstService); err == nil {
					_ = c.Close()
				}
			}
		}, nil}, // bounded by the handshake budget only if it outruns it; its connections must all be gone after
	}
	for _, a := range attacks {
		var start uint64
		if a.bound != nil {
			start = a.bound()
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.run(ctx) }()
		during := rate(time.Second)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		duringHeap := ms.HeapInuse
		if a.bound != nil {
			// Until its limit has stopped it at least once, however slow
			// the machine.
			eventually(t, a.name+" to hit its limit", func() bool { return a.bound() != start })
		}
		cancel()
		<-done
		after := rate(500 * time.Millisecond)
		heap := heapInUse()
		line := fmt.Sprintf("%-58s calls/s during %6.0f after %6.0f; heap during %4d MiB, after %4d MiB; %d goroutines",
			a.name, during, after, duringHeap>>20, heap>>20, runtime.NumGoroutine())
		t.Log(line)
		if after == 0 {
			t.Fatalf("%s: the workload stopped after the attack", a.name)
		}
		if heap > baseHeap+64<<20 {
			t.Fatalf("%s: heap %d MiB after the attack, %d before", a.name, heap>>20, baseHeap>>20)
		}
	}
	// Server handles a pool started stay warm (up to its MaxHandles): the
	// priority pool and the two services attacked may each keep 64.
	eventually(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseG+3*64+30 })
	eventually(t, "no hostile connection left", func() bool { return pendingCount(target) == 0 && target.accepted.Load() <= 12 })
	if w.failed.Load() > 0 {
		t.Fatalf("%d workload calls failed", w.failed.Load())
	}
}
