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
)

// TestHostileClients: thousands of half-open and garbage connections hit a
// node while two members run a real RPC workload through it. Every call
// must succeed, the node must shed the junk (handshake timeout, bad frames,
// the per-address limit) and its memory must stay bounded.
func TestHostileClients(t *testing.T) {
	ck, keys := clusterKeys(t, 2)
	nodes := startCluster(t, 2, func(c *Config) {
		c.Security = securityFor(SecurityEncrypt, int(c.Node), ck, keys)
		c.HandshakeTimeout = 300 * time.Millisecond
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
	var opened, refusedEarly atomic.Int64
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
		// The node, not the test, must end every one of them: the garbage
		// at once, the half-open ones at the handshake timeout.
		var ending sync.WaitGroup
		for c := range conns {
			ending.Add(1)
			go func() {
				defer ending.Done()
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, err := io.Copy(io.Discard, c)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("hostile connection left open by the node: %v", err)
				}
			}()
		}
		ending.Wait()
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
	if target.m.limitHandshakeTimeout.Get() == 0 {
		t.Fatal("no half-open connection was ended by the handshake timeout")
	}
	if growth > 16<<20 {
		t.Fatalf("heap grew by %d MiB under attack", growth>>20)
	}
}
