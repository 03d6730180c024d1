package engine

import (
	"context"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// latencies records per-call durations for percentile metrics.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	b.ReportMetric(float64(l[len(l)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(l[len(l)*99/100].Nanoseconds()), "p99-ns")
}

func BenchmarkCall(b *testing.B) {
	ck, keys := clusterKeys(b, 2)
	for _, bc := range []struct {
		name     string
		inline   bool
		mode     WriteMode
		security SecurityMode
		deadline bool // the caller's ctx has a deadline: the cancellable path
	}{
		{"inline/direct", true, WriteDirect, 0, false},
		{"handles/direct", false, WriteDirect, 0, false},
		{"handles/direct/deadline", false, WriteDirect, 0, true},
		{"inline/eventloop", true, WriteEventLoop, 0, false},
		{"inline/direct/authenticated", true, WriteDirect, SecurityAuthenticate, false},
		{"inline/direct/encrypted", true, WriteDirect, SecurityEncrypt, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			nodes := startCluster(b, 2, func(c *Config) {
				c.WriteMode = bc.mode
				if bc.security != 0 {
					c.Security = securityFor(bc.security, int(c.Node), ck, keys)
				}
			})
			if err := nodes[1].Register(Service{ID: echoSvc, Procs: []Handler{echo}, MinHandles: 1, MaxHandles: 4, Inline: bc.inline}); err != nil {
				b.Fatal(err)
			}
			m := Method{Service: echoSvc}
			args := make([]byte, 64)
			reply := make([]byte, 0, 64)
			ctx := context.Background()
			if bc.deadline {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Hour)
				defer cancel()
			}
			if _, err := nodes[0].Call(ctx, 2, m, args, reply); err != nil {
				b.Fatal(err)
			}
			lat := make(latencies, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := nodes[0].Call(ctx, 2, m, args, reply[:0]); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			lat.report(b)
		})
	}
}

// BenchmarkBulk streams 64 KiB one-way messages over a throttled channel to
// a server handle that drops them, plain and encrypted: the cost of
// encryption on bulk throughput.
func BenchmarkBulk(b *testing.B) {
	ck, keys := clusterKeys(b, 2)
	for _, mode := range []SecurityMode{0, SecurityEncrypt} {
		name := "plain"
		if mode != 0 {
			name = "encrypted"
		}
		b.Run(name, func(b *testing.B) {
			nodes := startCluster(b, 2, func(c *Config) {
				if mode != 0 {
					c.Security = securityFor(mode, int(c.Node), ck, keys)
				}
			})
			var got atomic.Int64
			mustRegister(b, nodes[1], Service{ID: throttledSvc, MaxHandles: 2, Procs: []Handler{
				func(_ context.Context, req *Request, _ *Response) error { got.Add(int64(len(req.Args))); return nil },
			}})
			msg := make([]byte, 64<<10)
			ctx := context.Background()
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := nodes[0].Send(ctx, 2, Method{Service: throttledSvc}, msg); err != nil {
					b.Fatal(err)
				}
			}
			for got.Load() < int64(b.N)*int64(len(msg)) {
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
}

// BenchmarkRawTCPPingPong is the baseline BenchmarkCall is judged against:
// 64 bytes each way over a plain Go TCP connection, one call in flight.
func BenchmarkRawTCPPingPong(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			if _, err := readFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64)
	lat := make(latencies, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := readFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	lat.report(b)
	c.Close()
	ln.Close()
	wg.Wait()
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := c.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// BenchmarkCallParallel: 256 callers at once on one node pair (issue 10's
// throughput case, both nodes in this process), 64 B echo, inline and
// through server handles. ns/op is per call across all callers.
func BenchmarkCallParallel(b *testing.B) {
	for _, inline := range []bool{true, false} {
		name := "handles"
		if inline {
			name = "inline"
		}
		b.Run(name, func(b *testing.B) {
			nodes := startCluster(b, 2, nil)
			if err := nodes[1].Register(Service{ID: echoSvc, Procs: []Handler{echo}, MinHandles: 1, MaxHandles: 64, Inline: inline}); err != nil {
				b.Fatal(err)
			}
			m := Method{Service: echoSvc}
			if _, err := nodes[0].Call(context.Background(), 2, m, make([]byte, 64), nil); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(max(1, 256/runtime.GOMAXPROCS(0)))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				args, reply := make([]byte, 64), make([]byte, 0, 64)
				for pb.Next() {
					if _, err := nodes[0].Call(context.Background(), 2, m, args, reply[:0]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
