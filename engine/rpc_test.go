package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

func TestCallEcho(t *testing.T) {
	for _, bc := range []struct {
		name   string
		inline bool
		mode   WriteMode
	}{
		{"inline", true, WriteDirect},
		{"handles", false, WriteDirect},
		{"eventloop-writes", false, WriteEventLoop},
	} {
		t.Run(bc.name, func(t *testing.T) {
			nodes := startCluster(t, 2, func(c *Config) { c.WriteMode = bc.mode })
			if err := nodes[1].Register(Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}, MaxHandles: 4, Inline: bc.inline}); err != nil {
				t.Fatal(err)
			}
			m := Method{Service: echoSvc}
			for i := 0; i < 100; i++ {
				args := []byte{byte(i), 1, 2, 3}
				got, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, m, args, nil)
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if !bytes.Equal(got, args) {
					t.Fatalf("call %d: got %v want %v", i, got, args)
				}
			}
		})
	}
}

func TestCallAppendsToReplyBuffer(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	buf := append(make([]byte, 0, 64), "prefix:"...)
	got, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("body"), buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "prefix:body" {
		t.Fatalf("got %q", got)
	}
	if &got[0] != &buf[:1][0] {
		t.Fatal("reply did not reuse the caller's buffer")
	}
}

func mustRegister(t testing.TB, n *Node, s Service) {
	t.Helper()
	if err := n.Register(s); err != nil {
		t.Fatal(err)
	}
}

func TestCallBothDirections(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	for _, n := range nodes {
		mustRegister(t, n, Service{ID: echoSvc, Procs: []Handler{echo}})
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			args := []byte(fmt.Sprintf("%d->%d", a.Num(), b.Num()))
			got, err := a.Call(ctxFor(t, 5*time.Second), b.Num(), Method{Service: echoSvc}, args, nil)
			if err != nil || !bytes.Equal(got, args) {
				t.Fatalf("%s: got %q, %v", args, got, err)
			}
		}
	}
}

func TestAsyncAndCallback(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, MaxHandles: 8})
	ctx := ctxFor(t, 5*time.Second)
	futures := make([]*Future, 50)
	for i := range futures {
		futures[i] = nodes[0].Go(ctx, 2, Method{Service: echoSvc}, []byte{byte(i)})
	}
	for i, f := range futures {
		got, err := f.Wait()
		if err != nil || len(got) != 1 || got[0] != byte(i) {
			t.Fatalf("future %d: %v %v", i, got, err)
		}
		select {
		case <-f.Done():
		default:
			t.Fatal("Done not closed after Wait returned")
		}
	}
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := 0; i < 20; i++ {
		wg.Add(1)
		nodes[0].GoFunc(ctx, 2, Method{Service: echoSvc}, []byte{byte(i)}, func(reply []byte, err error) {
			defer wg.Done()
			if err == nil && len(reply) == 1 && reply[0] == byte(i) {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 20 {
		t.Fatalf("%d of 20 callbacks saw the right reply", ok.Load())
	}
}

func TestOneWay(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	got := make(chan string, 100)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(_ context.Context, req *Request, _ *Response) error {
		if !req.OneWay || req.From != 1 {
			t.Errorf("request %+v", req)
		}
		got <- string(req.Args)
		return nil
	}}, MaxHandles: 1})
	for i := 0; i < 10; i++ {
		if err := nodes[0].Send(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	// One handle, one connection: messages are served in the order sent.
	for i := 0; i < 10; i++ {
		select {
		case s := <-got:
			if s != fmt.Sprint(i) {
				t.Fatalf("message %d arrived as %q", i, s)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("one-way message never served")
		}
	}
}

func TestManyConcurrentCallers(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	for _, inline := range []bool{true, false} {
		svc := ServiceOn(ChanFirstService, map[bool]uint16{true: 1, false: 2}[inline])
		mustRegister(t, nodes[1], Service{ID: svc, Procs: []Handler{echo}, MaxHandles: 16, Inline: inline})
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := 0; g < 64; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var buf []byte
				for i := 0; i < 100; i++ {
					args := []byte(fmt.Sprintf("g%d-i%d", g, i))
					var err error
					buf, err = nodes[0].Call(ctxFor(t, 20*time.Second), 2, Method{Service: svc}, args, buf[:0])
					if err != nil || !bytes.Equal(buf, args) {
						errs <- fmt.Errorf("%s: got %q, %v", args, buf, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	if n := nodes[0].handles.inUse.Load(); n != 0 {
		t.Fatalf("%d client handles still in use", n)
	}
}

// TestLargePayloads: each codec carries 3 MiB both ways, and each shrinks
// what goes on the wire, requests and replies separately: compressible
// text to under a quarter, while incompressible bytes and CompressNone go
// as they are.
func TestLargePayloads(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	random := make([]byte, 3<<20)
	_, _ = rand.Read(random)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog. "), 70000) // ~3 MiB, compressible
	for _, algo := range []framing.Compression{framing.CompressNone, framing.CompressS2, framing.CompressZstd} {
		svc := ServiceOn(ChanFirstService, uint16(algo))
		mustRegister(t, nodes[1], Service{ID: svc, Procs: []Handler{echo}, Compression: algo, CompressAbove: 1024})
		m := Method{Service: svc, Compression: algo, CompressAbove: 1024}
		for _, tc := range []struct {
			name       string
			payload    []byte
			compresses bool
		}{{"random", random, false}, {"text", text, algo != framing.CompressNone}} {
			reqBefore, replyBefore := bytesOut(t, nodes[0]), bytesOut(t, nodes[1])
			got, err := nodes[0].Call(ctxFor(t, 20*time.Second), 2, m, tc.payload, nil)
			if err != nil {
				t.Fatalf("%s/%s: %v", algo, tc.name, err)
			}
			if !bytes.Equal(got, tc.payload) {
				t.Fatalf("%s/%s: reply differs (%d bytes, want %d)", algo, tc.name, len(got), len(tc.payload))
			}
			req, reply := bytesOut(t, nodes[0])-reqBefore, bytesOut(t, nodes[1])-replyBefore
			t.Logf("%s/%s: %d bytes: request %d on the wire, reply %d", algo, tc.name, len(tc.payload), req, reply)
			limit := uint64(len(tc.payload))
			if tc.compresses {
				if req > limit/4 || reply > limit/4 {
					t.Fatalf("%s/%s: request %d, reply %d bytes on the wire for %d: not compressed", algo, tc.name, req, reply, limit)
				}
			} else if req < limit || reply < limit {
				t.Fatalf("%s/%s: request %d, reply %d bytes on the wire for %d incompressible", algo, tc.name, req, reply, limit)
			}
		}
	}
}

// bytesOut is what n has written to its peers, all channels.
func bytesOut(t *testing.T, n *Node) uint64 {
	var out float64
	for _, m := range scrape(t, n.Metrics())["ci_ics_bytes_out_total"].GetMetric() {
		out += m.GetCounter().GetValue()
	}
	return uint64(out)
}

func TestPayloadOverMaxIsRefusedBySender(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.MaxPayload = 1 << 16 })
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	_, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, make([]byte, 1<<17), nil)
	if !errors.Is(err, ErrCantEncodeArgs) {
		t.Fatalf("got %v, want ErrCantEncodeArgs", err)
	}
	// The connection survived: the next call works.
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("ok"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestRPCErrors(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	failing := errors.New("disk on fire")
	mustRegister(t, nodes[1], Service{ID: echoSvc, Version: 3, Procs: []Handler{
		echo,
		nil, // proc 1 does not exist
		func(context.Context, *Request, *Response) error { return failing },
		func(context.Context, *Request, *Response) error {
			return fmt.Errorf("bad input: %w", ErrCantDecodeArgs)
		},
	}})
	ctx := ctxFor(t, 5*time.Second)
	cases := []struct {
		name string
		m    Method
		want error
		msg  string
	}{
		{"ok with matching version", Method{Service: echoSvc, Version: 3}, nil, ""},
		{"ok with unchecked version", Method{Service: echoSvc}, nil, ""},
		{"version mismatch", Method{Service: echoSvc, Version: 2}, ErrProgVersMismatch, ""},
		{"no such service", Method{Service: ServiceOn(ChanFirstService, 5)}, ErrProgUnavail, ""},
		{"nil procedure", Method{Service: echoSvc, Proc: 1}, ErrProcUnavail, ""},
		{"procedure past the table", Method{Service: echoSvc, Proc: 99}, ErrProcUnavail, ""},
		{"handler error", Method{Service: echoSvc, Proc: 2}, ErrFailed, "disk on fire"},
		{"cannot decode args", Method{Service: echoSvc, Proc: 3}, ErrCantDecodeArgs, "bad input"},
		{"not a service channel", Method{Service: ServiceOn(chanReservedReply, 0)}, ErrProgUnavail, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nodes[0].Call(ctx, 2, tc.m, []byte("x"), nil)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.msg != "" && !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("error %q does not carry %q", err, tc.msg)
			}
		})
	}
	if _, err := nodes[0].Call(ctx, 9, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("call to unknown node: %v", err)
	}
}

func TestDeadlineAndLateReply(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	release := make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(ctx context.Context, req *Request, resp *Response) error {
		<-release
		resp.Body = append(resp.Body, "late"...)
		return nil
	}, echo}, MaxHandles: 2})
	// Connect first: the short deadline below is for the call, not a dial.
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc, Proc: 1}, nil, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
	if !errors.Is(err, ErrTimedOut) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrTimedOut wrapping DeadlineExceeded", err)
	}
	// The caller sent a TypeCancel as it gave up: once the server has it,
	// the handler's reply is not sent at all.
	eventually(t, "cancel received", func() bool { return nodes[1].m.cancelsReceived.Get() == 1 })
	// The slot is free again; a new call reuses it with a new generation, and
	// the stale reply for the old one must not complete the new call.
	close(release)
	got, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc, Proc: 1}, []byte("fresh"), nil)
	if err != nil || string(got) != "fresh" {
		t.Fatalf("got %q, %v", got, err)
	}
	eventually(t, "cancelled reply dropped", func() bool { return nodes[1].m.cancelledReplies.Get() == 1 })
	if got := nodes[0].m.lateReplies.Get(); got != 0 {
		t.Fatalf("%d late replies reached the caller", got)
	}

	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := nodes[0].Call(cctx, 2, Method{Service: echoSvc, Proc: 1}, nil, nil); !errors.Is(err, ErrIntr) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v, want ErrIntr wrapping Canceled", err)
	}
}

// TestCancelInFlight: cancelling a call while it waits for its reply ends
// it at once with ErrIntr (not ErrTimedOut), frees its handle, and the
// reply that comes later is dropped: on the server, which has the
// caller's cancel frame.
func TestCancelInFlight(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	arrived, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{func(context.Context, *Request, *Response) error {
		close(arrived)
		<-release
		return nil
	}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
		done <- err
	}()
	<-arrived // in flight: the request is being served
	cancel()
	err := <-done
	if !errors.Is(err, ErrIntr) || errors.Is(err, ErrTimedOut) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want ErrIntr wrapping context.Canceled", err)
	}
	if n := nodes[0].handles.inUse.Load(); n != 0 {
		t.Fatalf("%d client handles still in use", n)
	}
	eventually(t, "the cancel frame received", func() bool { return nodes[1].m.cancelsReceived.Get() == 1 })
	close(release)
	eventually(t, "the late reply dropped", func() bool { return nodes[1].m.cancelledReplies.Get() == 1 })
	if n := nodes[0].m.lateReplies.Get(); n != 0 {
		t.Fatalf("%d late replies reached the caller", n)
	}
}

func TestTooManyOutstandingCalls(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.MaxOutstandingCalls = 4 })
	release := make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(context.Context, *Request, *Response) error {
		<-release
		return nil
	}}, MaxHandles: 8})
	var futures []*Future
	for i := 0; i < 4; i++ {
		futures = append(futures, nodes[0].Go(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil))
	}
	eventually(t, "four calls in flight", func() bool { return nodes[0].handles.inUse.Load() == 4 })
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrTooManyCalls) {
		t.Fatalf("fifth call: %v, want ErrTooManyCalls", err)
	}
	close(release)
	for _, f := range futures {
		if _, err := f.Wait(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRegisterValidation(t *testing.T) {
	nodes := startCluster(t, 1, nil)
	n := nodes[0]
	cases := []Service{
		{ID: ServiceOn(ChanPrio1, 0), Procs: []Handler{echo}},         // priority channel
		{ID: ServiceOn(chanReservedReply, 0), Procs: []Handler{echo}}, // reserved channel
		{ID: ServiceOn(12, 0), Procs: []Handler{echo}},                // past MaxChannels
		{ID: ServiceOn(ChanFirstService, 6), Procs: []Handler{echo}},  // past MaxSubservices
		{ID: ServiceOn(ChanFirstService, 0)},                          // no procedures
		{ID: ServiceOn(ChanFirstService, 0), Procs: []Handler{echo}, MinHandles: 5, MaxHandles: 2},
	}
	for i, s := range cases {
		if err := n.Register(s); !errors.Is(err, ErrBadService) {
			t.Errorf("case %d: got %v, want ErrBadService", i, err)
		}
	}
	mustRegister(t, n, Service{ID: ServiceOn(ChanCLMS, 0), Procs: []Handler{echo}})
	if err := n.Register(Service{ID: ServiceOn(ChanCLMS, 0), Procs: []Handler{echo}}); !errors.Is(err, ErrBadService) {
		t.Fatalf("duplicate: %v", err)
	}
}

// TestRegisterServiceNames: a name the metrics library would reject is
// refused with ErrBadService (it used to panic after installing the
// service), and so is a second service of a name already taken, which
// used to share the first one's gauges.
func TestRegisterServiceNames(t *testing.T) {
	n := startCluster(t, 1, nil)[0]
	for _, name := range []string{`a"b`, "a{b}", "a b", "a,b=c", `\\x`, strings.Repeat("n", 65), prioPoolName} {
		err := n.Register(Service{ID: ServiceOn(ChanFirstService, 1), Name: name, Procs: []Handler{echo}})
		if !errors.Is(err, ErrBadService) {
			t.Errorf("name %q: got %v, want ErrBadService", name, err)
		}
		if n.lookupService(ServiceOn(ChanFirstService, 1)) != nil {
			t.Fatalf("name %q: refused, yet installed", name)
		}
	}
	mustRegister(t, n, Service{ID: ServiceOn(ChanFirstService, 1), Name: "kv.v2/shard-1:a", Procs: []Handler{echo}})
	err := n.Register(Service{ID: ServiceOn(ChanFirstService, 2), Name: "kv.v2/shard-1:a", Procs: []Handler{echo}})
	if !errors.Is(err, ErrBadService) || !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("second service of one name: got %v, want ErrBadService naming the clash", err)
	}
	if n.lookupService(ServiceOn(ChanFirstService, 2)) != nil {
		t.Fatal("the duplicate name was installed")
	}
}

// TestConfigMapsCopied: New keeps its own copies of the maps in Config, so
// the caller changing its map afterwards changes nothing in the node (the
// loops used to read ChannelWindows from the caller's map).
func TestConfigMapsCopied(t *testing.T) {
	windows := map[Channel]int{ChanFirstService: 64 << 10}
	peers := map[NodeNum]string{2: "127.0.0.2:1"}
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.Insecure = 1, "test", true
	cfg.ChannelWindows, cfg.Peers = windows, peers
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	windows[ChanFirstService] = 1 << 20
	windows[ChanCLMS] = 1 << 20
	peers[3] = "127.0.0.3:1"
	if w := n.cfg.window(ChanFirstService); w != 64<<10 {
		t.Errorf("window of %s = %d after the caller's map changed, want %d", ChanFirstService, w, 64<<10)
	}
	if w := n.cfg.window(ChanCLMS); w != cfg.CreditWindow {
		t.Errorf("window of %s = %d, want the default %d", ChanCLMS, w, cfg.CreditWindow)
	}
	if _, ok := n.cfg.Peers[3]; ok {
		t.Error("Config.Peers follows the caller's map")
	}
}

// TestOpenModeIsExplicit: a Config with neither Security nor Insecure is
// refused with a message that says how to choose.
func TestOpenModeIsExplicit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster = 1, "test"
	_, err := New(testMode(cfg))
	if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "Insecure") {
		t.Fatalf("got %v, want ErrBadConfig naming Insecure", err)
	}
}

// TestConfigValidation: every bad value is refused with ErrBadConfig and a
// one-line message that names the field to fix. Zero means the default
// everywhere; a negative bound is never taken for "off".
func TestConfigValidation(t *testing.T) {
	base := DefaultConfig()
	base.Insecure = true
	base.Node, base.Cluster = 1, "c"
	nk, err := GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, field string
		tweak       func(*Config)
	}{
		{"no node", "Node", func(c *Config) { c.Node = 0 }},
		{"no cluster", "Cluster", func(c *Config) { c.Cluster = "" }},
		{"long cluster", "Cluster", func(c *Config) { c.Cluster = strings.Repeat("c", 256) }},
		{"bad listen addr", "ListenAddr", func(c *Config) { c.ListenAddr = "nonsense" }},
		{"node 0 peer", "Peers", func(c *Config) { c.Peers = map[NodeNum]string{0: "127.0.0.1:1"} }},
		{"bad peer addr", "Peers[2]", func(c *Config) { c.Peers = map[NodeNum]string{2: "nowhere"} }},
		{"few channels", "MaxChannels", func(c *Config) { c.MaxChannels = 8 }},
		{"many channels", "MaxChannels", func(c *Config) { c.MaxChannels = 300 }},
		{"negative loops", "EventLoops", func(c *Config) { c.EventLoops = -1 }},
		{"huge payload", "MaxPayload", func(c *Config) { c.MaxPayload = 2 << 30 }},
		{"open by default", "Insecure", func(c *Config) { c.Insecure = false }},
		{"open and secure", "Security", func(c *Config) { c.Security = &Security{Mode: SecurityAuthenticate} }},
		{"security mode", "Security.Mode", func(c *Config) { c.Insecure, c.Security = false, &Security{Mode: 9} }},
		{"no node key", "Security.NodeKey", func(c *Config) { c.Insecure, c.Security = false, &Security{Mode: SecurityEncrypt} }},
		{"no cluster key", "Security.ClusterKeys", func(c *Config) {
			c.Insecure, c.Security = false, &Security{Mode: SecurityEncrypt, NodeKey: nk}
		}},
		{"negative dial timeout", "DialTimeout", func(c *Config) { c.DialTimeout = -1 }},
		{"negative handshake timeout", "HandshakeTimeout", func(c *Config) { c.HandshakeTimeout = -1 }},
		{"negative write timeout", "WriteTimeout", func(c *Config) { c.WriteTimeout = -1 }},
		{"negative dial backoff", "DialBackoff", func(c *Config) { c.DialBackoff = -1 }},
		{"negative max dial backoff", "MaxDialBackoff", func(c *Config) { c.MaxDialBackoff = -1 }},
		{"backoff bound under backoff", "MaxDialBackoff", func(c *Config) { c.DialBackoff, c.MaxDialBackoff = 2e9, 1e9 }},
		{"negative hold-off", "ViolationHoldOff", func(c *Config) { c.ViolationHoldOff = -1 }},
		{"negative pending write", "MaxPendingWrite", func(c *Config) { c.MaxPendingWrite = -1 }},
		{"negative window", "CreditWindow", func(c *Config) { c.CreditWindow = -1 }},
		{"negative max window", "MaxCreditWindow", func(c *Config) { c.MaxCreditWindow = -1 }},
		{"negative unauth per source", "MaxUnauthPerSource", func(c *Config) { c.MaxUnauthPerSource = -1 }},
		{"negative pending handshakes", "MaxPendingHandshakes", func(c *Config) { c.MaxPendingHandshakes = -1 }},
		{"negative handshake rate", "MaxHandshakesPerSecond", func(c *Config) { c.MaxHandshakesPerSecond = -1 }},
		{"negative connections", "MaxConnections", func(c *Config) { c.MaxConnections = -1 }},
		{"negative inflight", "MaxInflightPerPeer", func(c *Config) { c.MaxInflightPerPeer = -1 }},
		{"negative inflight bytes", "MaxInflightBytesPerPeer", func(c *Config) { c.MaxInflightBytesPerPeer = -1 }},
		{"negative conns per channel", "MaxConnsPerChannel", func(c *Config) { c.MaxConnsPerChannel = -1 }},
		{"window of a priority channel", "ChannelWindows", func(c *Config) { c.ChannelWindows = map[Channel]int{ChanPrio1: 1 << 10} }},
		{"window past MaxChannels", "ChannelWindows", func(c *Config) { c.ChannelWindows = map[Channel]int{200: 1 << 10} }},
	}
	for _, tc := range cases {
		cfg := base
		tc.tweak(&cfg)
		n, err := New(cfg)
		if err == nil {
			_ = n.Close()
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		if msg := err.Error(); !errors.Is(err, ErrBadConfig) || !strings.Contains(msg, tc.field) || strings.Contains(msg, "\n") {
			t.Errorf("%s: got %q, want ErrBadConfig naming %s on one line", tc.name, msg, tc.field)
		}
	}
	n, err := New(base)
	if err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
	_ = n.Close()
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	nodes := startCluster(t, 1, nil)
	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.Node, cfg.Cluster, cfg.ListenAddr = 2, "test", nodes[0].Addr()
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Start(); err == nil {
		t.Fatal("second node started on a busy address")
	}
}

// TestStartAfterCloseRefused: Start after Close fails with ErrClosed, and
// a node closed before it ever started does not start listening then (it
// did: an accept loop and a port nothing would ever close; TestMain's
// goleak caught the loop).
func TestStartAfterCloseRefused(t *testing.T) {
	for _, startFirst := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.Node, cfg.Cluster, cfg.Insecure = 1, "test", true
		n, err := New(testMode(cfg))
		if err != nil {
			t.Fatal(err)
		}
		if startFirst {
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
		}
		_ = n.Close()
		if err := n.Start(); !errors.Is(err, ErrClosed) {
			t.Errorf("started first %v: Start after Close: %v, want ErrClosed", startFirst, err)
		}
		if !startFirst && n.Addr() != "" {
			t.Errorf("a node closed before Start listens on %s", n.Addr())
		}
		_ = n.Close()
	}
}

// TestCompressedBombRefused: real bombs — 64 MiB of zeros compressed to a
// few KiB with each codec — sent as requests to a node whose MaxPayload is
// 64 KiB, announcing the limit or a tiny size. Each is answered "cannot
// decode arguments" and counted, the handler never runs, and the node
// allocates nothing near the bomb's size doing so.
func TestCompressedBombRefused(t *testing.T) {
	const limit = 1 << 16
	nodes := startCluster(t, 2, func(c *Config) { c.MaxPayload = limit })
	var served atomic.Int32
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(context.Context, *Request, *Response) error {
		served.Add(1)
		return nil
	}}})
	c, err := nodes[0].outConn(ctxFor(t, 5*time.Second), nodes[0].peer(2), ChanFirstService)
	if err != nil {
		t.Fatal(err)
	}
	codec := framing.NewCodec(1 << 30)
	defer codec.Close()
	zeros := make([]byte, 64<<20)
	refused := uint64(0)
	for _, algo := range []framing.Compression{framing.CompressS2, framing.CompressZstd} {
		bomb, flag, err := codec.Compress(nil, zeros, algo)
		if err != nil || len(bomb) > limit {
			t.Fatalf("%s bomb: %d bytes, %v", algo, len(bomb), err)
		}
		for _, aux := range []uint32{limit, 100} { // over the limit, the header itself is refused: TestReceivedFrameOverMaxPayloadCloses
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			idx, _ := nodes[0].handles.acquire()
			xid := nodes[0].handles.arm(idx, 2, nil)
			if c.reads != nil {
				nodes[0].handles.slots[idx].sentOn = c // as startCall: the caller reads its reply
			}
			h := framing.Header{Type: framing.TypeRequest, Service: echoSvc, XID: xid, Flags: flag, Aux: aux}
			if err := c.send(ctxFor(t, 5*time.Second), &h, bomb); err != nil {
				t.Fatal(err)
			}
			_, err = nodes[0].waitCall(ctxFor(t, 5*time.Second), xid)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrCantDecodeArgs) {
				t.Fatalf("%s bomb of %d bytes announcing %d: got %v, want ErrCantDecodeArgs", algo, len(bomb), aux, err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
				t.Fatalf("%s bomb announcing %d: %d MiB allocated", algo, aux, grew>>20)
			}
			refused++
		}
	}
	if served.Load() != 0 {
		t.Fatal("the handler saw an undecodable payload")
	}
	if got := nodes[1].m.limitDecompress.Get(); got != refused {
		t.Fatalf("decompression limit counted %d times, want %d", got, refused)
	}
}

// TestInlineScratchTrimmed (issue 8 point 8): an inline connection does not
// keep the scratch of its largest compressed request (16 MiB each).
func TestInlineScratchTrimmed(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(_ context.Context, req *Request, resp *Response) error {
		resp.Body = append(resp.Body, byte(len(req.Args)>>20))
		return nil
	}}, Inline: true})
	m := Method{Service: echoSvc, Compression: framing.CompressS2}
	if got, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, m, make([]byte, 4<<20), nil); err != nil || len(got) != 1 || got[0] != 4 {
		t.Fatalf("call: %v %v", got, err)
	}
	p := nodes[1].peer(1)
	p.mu.Lock()
	var c *conn
	for k := range p.inbound {
		if k.channel == ChanFirstService {
			c = k
		}
	}
	p.mu.Unlock()
	// The scratch is the reader's (event loop or netpoller reader): read
	// it once the node has closed and every reader has returned.
	_ = nodes[1].Close()
	if k := cap(c.scratch); k > 1<<20 {
		t.Fatalf("inline connection keeps a %d MiB scratch", k>>20)
	}
}
