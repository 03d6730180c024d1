package examplesvc

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// The hand-written twin of KV.Add: the same bytes on the wire and the same
// handler work, written directly against engine.Node.Call. It is served on
// its own subservice so that both run side by side.
var handID = engine.ServiceOn(engine.ChanFirstService, 2)

var handMethodAdd = engine.Method{Service: handID, Proc: KVProcAdd, Version: KVVersion}

func handService(store *Store) engine.Service {
	procs := make([]engine.Handler, KVProcAdd+1)
	procs[KVProcAdd] = func(ctx context.Context, req *engine.Request, resp *engine.Response) error {
		a := req.Args
		n, k := binary.Uvarint(a)
		if k <= 0 || n > uint64(len(a)-k) || uint64(len(a)-k)-n != 8 {
			return engine.ErrCantDecodeArgs
		}
		name := string(a[k : k+int(n)]) // the store keeps it: a copy, as the stub makes
		delta := int64(binary.LittleEndian.Uint64(a[k+int(n):]))
		v, err := store.Add(ctx, name, delta)
		if err != nil {
			return err
		}
		resp.Body = append(resp.Body, 0)
		resp.Body = binary.LittleEndian.AppendUint64(resp.Body, uint64(v))
		return nil
	}
	return engine.Service{ID: handID, Name: "kv-hand", Version: KVVersion, Procs: procs, MinHandles: 1, MaxHandles: 16}
}

// handClient owns its buffers: one goroutine at a time, as a hand-written
// caller that cares about allocations would do.
type handClient struct {
	node        *engine.Node
	args, reply []byte
}

func (c *handClient) Add(ctx context.Context, to engine.NodeNum, name string, delta int64) (int64, error) {
	c.args = binary.AppendUvarint(c.args[:0], uint64(len(name)))
	c.args = append(c.args, name...)
	c.args = binary.LittleEndian.AppendUint64(c.args, uint64(delta))
	reply, err := c.node.Call(ctx, to, handMethodAdd, c.args, c.reply[:0])
	c.reply = reply
	if err != nil {
		return 0, err
	}
	if len(reply) != 9 || reply[0] != 0 {
		return 0, fmt.Errorf("%w: add reply of %d bytes", engine.ErrCantDecodeRes, len(reply))
	}
	return int64(binary.LittleEndian.Uint64(reply[1:])), nil
}

// addPair starts two nodes serving KV.Add both ways and returns the two
// callers on node 1.
func addPair(tb testing.TB) (stub func(context.Context) (int64, error), hand func(context.Context) (int64, error)) {
	nodes := enginetest.StartCluster(tb, 2, nil)
	store := NewStore()
	if err := RegisterKV(nodes[1], store); err != nil {
		tb.Fatal(err)
	}
	if err := nodes[1].Register(handService(store)); err != nil {
		tb.Fatal(err)
	}
	kv := NewKVClient(nodes[0])
	hc := &handClient{node: nodes[0]}
	stub = func(ctx context.Context) (int64, error) { return kv.Add(ctx, 2, "requests", 1) }
	hand = func(ctx context.Context) (int64, error) { return hc.Add(ctx, 2, "requests", 1) }
	// Warm both paths: connections dialled, pools and buffers filled.
	for range 100 {
		if _, err := stub(context.Background()); err != nil {
			tb.Fatal(err)
		}
		if _, err := hand(context.Background()); err != nil {
			tb.Fatal(err)
		}
	}
	return stub, hand
}

// BenchmarkAdd compares one KV.Add RPC through the generated stub with the
// same RPC written by hand. Both share one node pair, so their numbers
// differ only by the stubs: run with -count to see the spread.
func BenchmarkAdd(b *testing.B) {
	stub, hand := addPair(b)
	for _, bc := range []struct {
		name string
		call func(context.Context) (int64, error)
	}{{"stub", stub}, {"hand", hand}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := bc.call(ctx); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

// TestStubAllocatesLikeHandWritten: a generated stub call allocates no more
// than the hand-written one (which allocates only what the engine and the
// handler's copy of the name need).
func TestStubAllocatesLikeHandWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("measures allocations over many RPCs")
	}
	if raceEnabled {
		t.Skip("sync.Pool drops items on purpose under the race detector")
	}
	stub, hand := addPair(t)
	ctx := context.Background()
	measure := func(call func(context.Context) (int64, error)) float64 {
		return testing.AllocsPerRun(500, func() {
			if _, err := call(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
	// Interleave and keep the best of three: a background allocation by the
	// runtime or a node's ticker lands on one side by chance.
	s, h := measure(stub), measure(hand)
	for range 2 {
		s, h = min(s, measure(stub)), min(h, measure(hand))
	}
	t.Logf("allocations per call: stub %.2f, hand-written %.2f", s, h)
	if s > h+0.05 {
		t.Fatalf("stub allocates %.2f per call, hand-written %.2f", s, h)
	}
}

// BenchmarkAddStubWork isolates what the generated stubs add to an RPC —
// pooled buffers, encoding and decoding on both sides — from the network
// round trip, next to the same work written by hand.
func BenchmarkAddStubWork(b *testing.B) {
	b.Run("stub", func(b *testing.B) {
		b.ReportAllocs()
		var resp engine.Response
		for range b.N {
			bufs := kvPool.Get()
			bufs.Args = kvAddAppendArgs(bufs.Args[:0], "requests", 1)
			name, delta, err := kvAddArgs(bufs.Args) // server side
			if err != nil || len(name) != 8 {
				b.Fatal(err)
			}
			resp.Body = kvAddAppendResults(resp.Body[:0], delta)
			bufs.Reply = append(bufs.Reply[:0], resp.Body...) // the engine's copy into the reply buffer
			if _, err := kvAddResults(bufs.Reply); err != nil {
				b.Fatal(err)
			}
			kvPool.Put(bufs)
		}
	})
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		var resp engine.Response
		var args, reply []byte
		for range b.N {
			args = binary.AppendUvarint(args[:0], 8)
			args = append(args, "requests"...)
			args = binary.LittleEndian.AppendUint64(args, 1)
			n, k := binary.Uvarint(args)
			if k <= 0 || uint64(len(args)-k)-n != 8 {
				b.Fatal("bad args")
			}
			name := string(args[k : k+int(n)])
			delta := int64(binary.LittleEndian.Uint64(args[k+int(n):]))
			if len(name) != 8 {
				b.Fatal(name)
			}
			resp.Body = append(resp.Body[:0], 0)
			resp.Body = binary.LittleEndian.AppendUint64(resp.Body, uint64(delta))
			reply = append(reply[:0], resp.Body...)
			if len(reply) != 9 || reply[0] != 0 {
				b.Fatal("bad reply")
			}
		}
	})
}
