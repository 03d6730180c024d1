package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterinfra/ci/engine"
)

// The demo cluster's services. Every node, node 1 included, serves both.
var (
	// demoEchoSvc answers with its arguments, inline on the event loop.
	demoEchoSvc = engine.ServiceOn(engine.ChanFirstService, 1)
	// demoWorkSvc does work on server handles: see the demoProc constants.
	demoWorkSvc = engine.ServiceOn(engine.ChanFirstService, 2)

	demoEcho = engine.Method{Service: demoEchoSvc}
	demoWork = engine.Method{Service: demoWorkSvc, Proc: demoProcWork}
	demoSlow = engine.Method{Service: demoWorkSvc, Proc: demoProcSlow}
	demoMesh = engine.Method{Service: demoWorkSvc, Proc: demoProcMesh}
)

// Procedures of demoWorkSvc.
const (
	demoProcWork = 0 // the args' SHA-256, rehashed demoWorkRounds times: a little CPU work
	demoProcSlow = 1 // sleeps for the milliseconds given in decimal as args, then answers
	demoProcMesh = 2 // calls echo on every peer this node knows; answers a demoMeshResult
)

// demoWorkRounds makes a work call cost some microseconds of CPU.
const demoWorkRounds = 64

// demoWorkResult is what the work procedure answers for args; the caller
// checks replies against it.
func demoWorkResult(args []byte) [sha256.Size]byte {
	sum := sha256.Sum256(args)
	for range demoWorkRounds - 1 {
		sum = sha256.Sum256(sum[:])
	}
	return sum
}

// demoMeshResult is the mesh procedure's answer.
type demoMeshResult struct {
	OK     []engine.NodeNum `json:"ok"`
	Failed []string         `json:"failed,omitempty"`
}

// demoMeshFrom calls echo on every peer n knows, one after the other.
func demoMeshFrom(ctx context.Context, n *engine.Node) demoMeshResult {
	var res demoMeshResult
	peers := n.Peers()
	nums := make([]engine.NodeNum, 0, len(peers))
	for num := range peers {
		nums = append(nums, num)
	}
	slices.Sort(nums)
	for _, num := range nums {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := n.Call(cctx, num, demoEcho, []byte("mesh"), nil)
		cancel()
		switch {
		case err != nil:
			res.Failed = append(res.Failed, fmt.Sprintf("node %d -> node %d: %v", n.Num(), num, err))
		case string(got) != "mesh":
			res.Failed = append(res.Failed, fmt.Sprintf("node %d -> node %d: echo answered %q", n.Num(), num, got))
		default:
			res.OK = append(res.OK, num)
		}
	}
	return res
}

// registerDemoServices registers echo and work on n. onSlow, if not nil,
// is called as each slow call starts, so that whoever kills the node knows
// calls are in flight.
func registerDemoServices(n *engine.Node, onSlow func()) error {
	echo := func(_ context.Context, req *engine.Request, resp *engine.Response) error {
		resp.Body = append(resp.Body, req.Args...)
		return nil
	}
	work := func(_ context.Context, req *engine.Request, resp *engine.Response) error {
		sum := demoWorkResult(req.Args)
		resp.Body = append(resp.Body, sum[:]...)
		return nil
	}
	slow := func(ctx context.Context, req *engine.Request, resp *engine.Response) error {
		ms, err := strconv.Atoi(string(req.Args))
		if err != nil || ms < 0 || ms > 60_000 {
			return fmt.Errorf("%w: want 0..60000 milliseconds, got %q", engine.ErrCantDecodeArgs, req.Args)
		}
		if onSlow != nil {
			onSlow()
		}
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done(): // the node is closing
			return ctx.Err()
		}
		resp.Body = append(resp.Body, "slept"...)
		return nil
	}
	mesh := func(ctx context.Context, _ *engine.Request, resp *engine.Response) error {
		b, err := json.Marshal(demoMeshFrom(ctx, n))
		resp.Body = append(resp.Body, b...)
		return err
	}
	err := n.Register(engine.Service{ID: demoEchoSvc, Name: "echo", Inline: true,
		Procs: []engine.Handler{echo}})
	if err != nil {
		return err
	}
	return n.Register(engine.Service{ID: demoWorkSvc, Name: "work",
		Procs:      []engine.Handler{demoProcWork: work, demoProcSlow: slow, demoProcMesh: mesh},
		MinHandles: 4,  // warm for the first calls
		MaxHandles: 64, // room for the demo's 16 callers plus its slow calls
	})
}

// nodeCmd is one member of the demo cluster in a process of its own.
type nodeCmd struct {
	Num     uint32   `required:"" placeholder:"N" help:"This node's number (2 or more: the demo itself is node 1)." env:"CI_NODE"`
	Listen  string   `default:"127.0.0.1:0" help:"Address to listen on; port 0 picks one." env:"CI_LISTEN"`
	Cluster string   `default:"demo" help:"Cluster name, the same on every node." env:"CI_CLUSTER"`
	Peers   []string `sep:"," placeholder:"NUM=HOST:PORT" help:"Members known at start, comma-separated NUM=HOST:PORT." env:"CI_NODE_PEERS"`
}

func (*nodeCmd) Help() string {
	return `One node of the demo cluster: an ICS node serving echo (proc 0 of
service svc0.1), and work (svc0.2: proc 0 SHA-256 work, proc 1 sleep for the
milliseconds given, proc 2 call echo on every peer).

It speaks JSON lines. On stdout: {"event":"ready","node":N,"addr":...,"pid":...}
once it serves, then {"event":"nodedown","peer":P,"at_ns":...,"cause":...} when
it loses a peer and {"event":"slow"} when a slow call starts. On stdin it
reads {"peer":P,"addr":"HOST:PORT"} (SetPeer; answered by {"event":"peer",...})
and exits when stdin is closed, or on SIGTERM/SIGINT. "cibench demo" runs
three of these for you.

Examples:
  cibench node --num=2 --listen=127.0.0.2:0 --peers=1=127.0.0.1:7400
  echo '{"peer":3,"addr":"127.0.0.3:7400"}' | cibench node --num=2 --peers=1=127.0.0.1:7400`
}

// demoPeerLine is what the parent writes to a node's stdin.
type demoPeerLine struct {
	Peer engine.NodeNum `json:"peer"`
	Addr string         `json:"addr"`
}

// demoEvent is one line a node writes to stdout.
type demoEvent struct {
	Event       string         `json:"event"` // ready, peer, nodedown, slow
	Node        engine.NodeNum `json:"node"`
	Addr        string         `json:"addr,omitempty"`
	PID         int            `json:"pid,omitempty"`
	Incarnation string         `json:"incarnation,omitempty"`
	Peer        engine.NodeNum `json:"peer,omitempty"`
	AtNS        int64          `json:"at_ns,omitempty"` // wall clock: the parent compares it with its own
	Cause       string         `json:"cause,omitempty"`
	Err         string         `json:"err,omitempty"`
}

// parseDemoPeers reads NUM=HOST:PORT entries.
func parseDemoPeers(entries []string) (map[engine.NodeNum]string, error) {
	peers := make(map[engine.NodeNum]string, len(entries))
	for _, e := range entries {
		num, addr, ok := strings.Cut(e, "=")
		n, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil || n == 0 || addr == "" {
			return nil, usagef("--peers: %q is not NUM=HOST:PORT", e)
		}
		peers[engine.NodeNum(n)] = addr
	}
	return peers, nil
}

func formatDemoPeers(peers map[engine.NodeNum]string) string {
	var parts []string
	for num, addr := range peers {
		parts = append(parts, fmt.Sprintf("%d=%s", num, addr))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// lineWriter writes JSON lines from many goroutines.
type lineWriter struct {
	mu  sync.Mutex // guards enc
	enc *json.Encoder
}

func (w *lineWriter) write(v any) {
	w.mu.Lock()
	_ = w.enc.Encode(v) // the parent gone is noticed on stdin
	w.mu.Unlock()
}

func (c *nodeCmd) Run(g *globals) error {
	if c.Num < 2 {
		return usagef("--num must be 2 or more (node 1 is the demo's own)")
	}
	peers, err := parseDemoPeers(c.Peers)
	if err != nil {
		return err
	}
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Peers = engine.NodeNum(c.Num), c.Cluster, c.Listen, peers
	cfg.Insecure = true // the demo runs on loopback
	n, err := engine.New(cfg)
	if err != nil {
		return usageError{err}
	}
	out := &lineWriter{enc: json.NewEncoder(g.stdout)}
	n.OnNodeDown(func(peer engine.NodeNum, err error) {
		out.write(demoEvent{Event: "nodedown", Node: n.Num(), Peer: peer, AtNS: time.Now().UnixNano(), Cause: err.Error()})
	})
	err = registerDemoServices(n, func() { out.write(demoEvent{Event: "slow", Node: n.Num()}) })
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		return errors.Join(err, n.Close())
	}
	out.write(demoEvent{Event: "ready", Node: n.Num(), Addr: n.Addr(), PID: os.Getpid(),
		Incarnation: fmt.Sprintf("%016x", n.Incarnation())})

	// The parent holds our stdin: EOF means it is done or gone, so a killed
	// parent never leaves nodes behind.
	stdinClosed := make(chan struct{})
	go func() {
		defer close(stdinClosed)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			var l demoPeerLine
			ack := demoEvent{Event: "peer", Node: n.Num()}
			err := json.Unmarshal(sc.Bytes(), &l)
			if err == nil {
				err = n.SetPeer(l.Peer, l.Addr)
			}
			ack.Peer, ack.Addr = l.Peer, l.Addr
			if err != nil {
				ack.Err = err.Error()
			}
			out.write(ack)
		}
		_, _ = io.Copy(io.Discard, os.Stdin) // a line too long for the scanner: wait for EOF all the same
	}()
	select {
	case <-stdinClosed:
	case <-g.ctx.Done():
	}
	return n.Close()
}
