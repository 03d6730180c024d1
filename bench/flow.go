package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clusterinfra/ci/engine"
)

// The flow benchmark measures issue 3's two performance targets between a
// client node and a server node:
//
//   - bulk: the client saturates a throttled service channel with large
//     one-way messages (engine.Node.Send), which the server's handles count;
//     its throughput is compared with one raw TCP stream between the same
//     two processes, the client writing and the server reading and
//     discarding;
//   - priority: 64-byte RPCs at priority 1 to an echo service, idle and
//     while the bulk transfer saturates the throttled channel.
//
// This file is the server side and the protocol both sides share;
// flow_client.go is the client, flow_run.go the rounds and the report.
//
// Every phase ends with a small request/response behind the data (a sync),
// so that the bytes counted are exact: for ICS a sync RPC on the bulk
// service's own channel that returns once the server's handles have
// counted every byte the client sent; for raw TCP a zero-length frame on
// the stream itself. Each sync also reports the server's CPU time, so a
// phase knows what it cost both processes.

// FlowConfig describes the two nodes of a flow run; client and server must
// be given the same one.
type FlowConfig struct {
	Pair // cluster "" is "bench-flow"
	// Window fixes the engine's CreditWindow (and MaxCreditWindow) on both
	// nodes, in bytes; 0 is the engine's default. The server's is the one
	// the bulk transfer spends: it grants the client its window on the bulk
	// channel.
	Window int
}

// window is the credit window the server grants, resolved.
func (c FlowConfig) window() int {
	if c.Window > 0 {
		return c.Window
	}
	return engine.DefaultConfig().CreditWindow
}

func (c FlowConfig) engineConfig(num engine.NodeNum, listen string) engine.Config {
	cfg := c.Pair.config(num, listen, "bench-flow")
	if c.Window > 0 {
		// A fixed window: the engine would otherwise widen it for a starved
		// sender, and experiments with a given window would not keep it.
		cfg.CreditWindow, cfg.MaxCreditWindow = c.Window, c.Window
	}
	return cfg
}

// The flow services, all on the first service channel, which is throttled.
// The priority probe travels on the priority-1 channel whatever its
// service's channel is: that is what priority means.
var (
	flowEcho    = engine.ServiceOn(engine.ChanFirstService, 1) // proc 0: echo (Reply)
	flowBulk    = engine.ServiceOn(engine.ChanFirstService, 2) // proc 0: one-way sink; proc 1: sync
	flowControl = engine.ServiceOn(engine.ChanFirstService, 3) // proc 0: info; proc 1: metrics
)

var (
	flowEchoMethod    = engine.Method{Service: flowEcho, Proc: 0}
	flowSinkMethod    = engine.Method{Service: flowBulk, Proc: 0}
	flowSyncMethod    = engine.Method{Service: flowBulk, Proc: 1}
	flowInfoMethod    = engine.Method{Service: flowControl, Proc: 0}
	flowMetricsMethod = engine.Method{Service: flowControl, Proc: 1}
)

// flowStat is a sync's answer: 8 bytes of payload bytes counted so far and
// 8 bytes of the server process's CPU time in nanoseconds, big-endian.
type flowStat struct {
	bytes int64
	cpu   time.Duration
}

const flowStatSize = 16

func (s flowStat) append(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(s.bytes))
	return binary.BigEndian.AppendUint64(dst, uint64(s.cpu))
}

func parseFlowStat(b []byte) (flowStat, error) {
	if len(b) != flowStatSize {
		return flowStat{}, fmt.Errorf("%w: sync reply of %d bytes, want %d", ErrBadReply, len(b), flowStatSize)
	}
	return flowStat{bytes: int64(binary.BigEndian.Uint64(b)), cpu: time.Duration(binary.BigEndian.Uint64(b[8:]))}, nil
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// flowSyncTimeout bounds how long a sync waits for bytes that should already
// be on their way: only a lost message (a bug) makes it expire.
const flowSyncTimeout = 30 * time.Second

// ErrFlowCount means the server did not count what the client sent.
var ErrFlowCount = errors.New("bench: flow byte count mismatch")

// byteCounter counts the bulk bytes the server's handles have finished and
// lets one sync at a time wait for a total.
type byteCounter struct {
	n       atomic.Int64
	waiting atomic.Bool // a sync is waiting: adders must look at target

	mu      sync.Mutex
	target  int64         // guarded by mu
	reached chan struct{} // closed once n >= target; guarded by mu
}

func (c *byteCounter) add(k int64) {
	v := c.n.Add(k)
	if !c.waiting.Load() {
		return
	}
	c.mu.Lock()
	if c.reached != nil && v >= c.target {
		close(c.reached)
		c.reached = nil
		c.waiting.Store(false)
	}
	c.mu.Unlock()
}

// wait returns once want bytes have been counted, ctx ends or the timeout
// passes. The adder raises n before it reads waiting and wait sets waiting
// before it reads n, so one of them sees the other (both are sequentially
// consistent atomics) and no wake-up is lost.
func (c *byteCounter) wait(ctx context.Context, want int64) (int64, error) {
	c.mu.Lock()
	ch := make(chan struct{})
	c.target, c.reached = want, ch
	c.waiting.Store(true)
	if v := c.n.Load(); v >= want {
		c.reached = nil
		c.waiting.Store(false)
		c.mu.Unlock()
		return v, nil
	}
	c.mu.Unlock()
	t := time.NewTimer(flowSyncTimeout)
	defer t.Stop()
	select {
	case <-ch:
		return c.n.Load(), nil
	case <-ctx.Done():
		return c.n.Load(), ctx.Err()
	case <-t.C:
		return c.n.Load(), fmt.Errorf("%w: server counted %d bytes, client sent %d, after %v", ErrFlowCount, c.n.Load(), want, flowSyncTimeout)
	}
}

// flowRawReadBuffer is the raw server's read buffer: a few messages per
// read system call, as a program written for throughput would read.
const flowRawReadBuffer = 256 << 10

// FlowServer is the server side: a node with the flow services and a raw
// TCP listener.
type FlowServer struct {
	node *engine.Node
	raw  *tcpServer
	bulk byteCounter
}

// StartFlowServer starts the server node on listen ("127.0.0.1:0" picks a
// port), knowing the client node at clientAddr, and a raw TCP listener on
// the same host. The client learns the raw address from the node.
func StartFlowServer(cfg FlowConfig, listen, clientAddr string) (*FlowServer, error) {
	server, client := cfg.nodes()
	ecfg := cfg.engineConfig(server, listen)
	ecfg.Peers = map[engine.NodeNum]string{client: clientAddr}
	host, _, err := net.SplitHostPort(ecfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("bench: flow server: %w", err)
	}
	n, err := engine.New(ecfg)
	if err != nil {
		return nil, fmt.Errorf("bench: flow server: %w", err)
	}
	s := &FlowServer{node: n}
	if err := s.register(); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	if s.raw, err = startTCP(net.JoinHostPort(host, "0"), serveFlowRaw); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	if err := n.Start(); err != nil {
		return nil, errors.Join(err, s.raw.stop(), n.Close())
	}
	return s, nil
}

func (s *FlowServer) register() error {
	bulk := engine.Service{
		ID:   flowBulk,
		Name: "flow-bulk",
		Procs: []engine.Handler{
			func(_ context.Context, req *engine.Request, _ *engine.Response) error {
				s.bulk.add(int64(len(req.Args)))
				return nil
			},
			func(ctx context.Context, req *engine.Request, resp *engine.Response) error {
				if len(req.Args) != 8 {
					return engine.ErrCantDecodeArgs
				}
				got, err := s.bulk.wait(ctx, int64(binary.BigEndian.Uint64(req.Args)))
				if err != nil {
					return err
				}
				resp.Body = flowStat{bytes: got, cpu: processCPU()}.append(resp.Body)
				return nil
			},
		},
		// Server handles, not inline: the bulk transfer is measured on the
		// path whose credit comes back only when a handle has finished.
		MinHandles: 4, // a window's worth of 64 KiB messages at once
		MaxHandles: 16,
	}
	echo := engine.Service{
		ID:   flowEcho,
		Name: "flow-echo",
		Procs: []engine.Handler{func(_ context.Context, req *engine.Request, resp *engine.Response) error {
			var err error
			resp.Body, err = Reply(resp.Body, req.Args)
			return err
		}},
		// Also on handles: priority requests get the node's priority handles.
		MinHandles: 1,
		MaxHandles: 8,
	}
	control := engine.Service{
		ID:   flowControl,
		Name: "flow-control",
		Procs: []engine.Handler{
			func(_ context.Context, _ *engine.Request, resp *engine.Response) error {
				resp.Body = append(resp.Body, s.RawAddr()...)
				return nil
			},
			func(_ context.Context, _ *engine.Request, resp *engine.Response) error {
				var b bytes.Buffer
				s.node.Metrics().WritePrometheus(&b)
				resp.Body = append(resp.Body, b.Bytes()...)
				return nil
			},
		},
		Inline: true, // rare and quick
	}
	return errors.Join(s.node.Register(bulk), s.node.Register(echo), s.node.Register(control))
}

// Addr is the server node's ICS address.
func (s *FlowServer) Addr() string { return s.node.Addr() }

// RawAddr is the raw TCP listener's address.
func (s *FlowServer) RawAddr() string { return s.raw.addr() }

// Close stops the raw listener and the node and waits for their goroutines.
func (s *FlowServer) Close() error {
	return errors.Join(s.raw.stop(), s.node.Close())
}

// serveFlowRaw reads one raw stream: frames of a 4-byte big-endian length
// and that many bytes, which it discards and counts. A zero length is a
// sync: it answers with a flowStat.
func serveFlowRaw(conn net.Conn) {
	r := bufio.NewReaderSize(conn, flowRawReadBuffer)
	var (
		hdr   [4]byte
		total int64
		out   []byte
	)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			out = flowStat{bytes: total, cpu: processCPU()}.append(out[:0])
			if _, err := conn.Write(out); err != nil {
				return
			}
			continue
		}
		if n > MaxMessage {
			return // not our client
		}
		if _, err := r.Discard(int(n)); err != nil {
			return
		}
		total += int64(n)
	}
}
