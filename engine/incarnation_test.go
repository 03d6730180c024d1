package engine

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// restartAs starts a new process of node old.Num() on old's address with
// incarnation inc, after closing old, knowing peer at its address.
func restartAs(t *testing.T, old *Node, inc uint64, peer *Node) *Node {
	t.Helper()
	addr := old.Addr()
	_ = old.Close()
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.EventLoops = old.Num(), "test", addr, 1
	cfg.Insecure, cfg.Incarnation = true, inc
	cfg.Peers = map[NodeNum]string{peer.Num(): peer.Addr()}
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func TestConfigIncarnation(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.Incarnation = 1000 + uint64(c.Node) })
	if got := nodes[1].Incarnation(); got != 1002 {
		t.Fatalf("Incarnation() = %d, want the configured 1002", got)
	}
	inc, err := nodes[0].ProbePeer(context.Background(), 2)
	if err != nil || inc != 1002 {
		t.Fatalf("ProbePeer = %d, %v; want 1002, nil", inc, err)
	}
}

// A probe learns the peer's incarnation without joining the link: the peer
// sees no link loss when the probe connection closes, and a closed peer's
// address refuses, which is the proof CLMS acts on.
func TestProbePeer(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	lost := make(chan NodeNum, 4)
	b.OnNodeDown(func(n NodeNum, _ error) { lost <- n })
	for range 3 {
		inc, err := a.ProbePeer(context.Background(), 2)
		if err != nil || inc != b.Incarnation() {
			t.Fatalf("ProbePeer = %#x, %v; want %#x", inc, err, b.Incarnation())
		}
	}
	if got := b.m.peerLosses.Get(); got != 0 {
		t.Fatalf("probes cost the probed node %d peer losses, want 0", got)
	}
	if got := b.m.handshakeRejects.Get(); got != 0 {
		t.Fatalf("probes counted as %d rejected handshakes, want 0", got)
	}
	_ = b.Close()
	_, err := a.ProbePeer(context.Background(), 2)
	if !errors.Is(err, ErrPeerRefused) {
		t.Fatalf("ProbePeer of a closed node: %v, want ErrPeerRefused", err)
	}
	if _, err := a.ProbePeer(context.Background(), 9); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("ProbePeer of an unknown node: %v, want ErrUnknownHost", err)
	}
	select {
	case n := <-lost:
		t.Fatalf("node 2 saw node %d lost from probes", n)
	default:
	}
}

// A probe to a stopped process (an address that accepts but never answers)
// is not proof: it ends with its context, without ErrPeerRefused.
func TestProbePeerUnanswered(t *testing.T) {
	nodes := startCluster(t, 1, nil)
	silent := listenSilently(t)
	if err := nodes[0].SetPeer(2, silent); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := nodes[0].ProbePeer(ctx, 2)
	if err == nil || errors.Is(err, ErrPeerRefused) {
		t.Fatalf("ProbePeer of a silent address: %v, want an error that is not ErrPeerRefused", err)
	}
}

// NodeDownIncarnation refuses that incarnation for good, both ways, while
// the node's next incarnation is let in and lifts the down state.
func TestNodeDownIncarnation(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.Incarnation = 10 * uint64(c.Node) })
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	if err := a.Register(Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Call(ctx, 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	a.NodeDownIncarnation(2, 20, nil)
	if _, err := a.Call(ctx, 2, Method{Service: echoSvc}, []byte("x"), nil); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call to a declared-down incarnation: %v, want ErrNodeDown", err)
	}
	// The old incarnation, still running, cannot reach a handler of a, and
	// is told why.
	if _, err := b.Call(ctx, 1, Method{Service: echoSvc}, []byte("x"), nil); !errors.Is(err, ErrHandshake) || !errors.Is(err, ErrDeclaredDown) {
		t.Fatalf("call from the refused incarnation: %v, want ErrHandshake and ErrDeclaredDown", err)
	}
	if _, err := b.ProbePeer(ctx, 1); !errors.Is(err, ErrDeclaredDown) {
		t.Fatalf("probe from the refused incarnation: %v, want ErrDeclaredDown", err)
	}
	if !a.IsDown(2) {
		t.Fatal("a hello from the refused incarnation lifted the down state")
	}
	// Even after NodeUp, a dial answered by the refused incarnation fails.
	a.NodeUp(2)
	if _, err := a.Call(ctx, 2, Method{Service: echoSvc}, []byte("x"), nil); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call answered by the refused incarnation after NodeUp: %v, want ErrNodeDown", err)
	}
	a.NodeDownIncarnation(2, 20, nil)

	// Its next incarnation is welcome: its hello lifts the down state.
	b2 := restartAs(t, b, 30, a)
	if err := b2.Register(Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Call(ctx, 1, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatalf("call from the next incarnation: %v", err)
	}
	if a.IsDown(2) {
		t.Fatal("the next incarnation's hello did not lift the down state")
	}
	if _, err := a.Call(ctx, 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatalf("call to the next incarnation: %v", err)
	}
	// Declaring the old one down again leaves the new link alone.
	a.NodeDownIncarnation(2, 20, nil)
	if a.IsDown(2) {
		t.Fatal("refusing an old incarnation took the linked new one down")
	}
	if _, err := a.Call(ctx, 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatalf("call to the next incarnation after refusing the old one again: %v", err)
	}
}

// A plain NodeDown is not lifted by a hello, whatever its incarnation.
func TestNodeDownNotLiftedByHello(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	nodes[0].NodeDown(2, nil)
	if err := nodes[0].Register(Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].Call(context.Background(), 1, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrHandshake) || !errors.Is(err, ErrDeclaredDown) {
		t.Fatalf("call from a node declared down with NodeDown: %v, want ErrHandshake and ErrDeclaredDown", err)
	}
	if !nodes[0].IsDown(2) {
		t.Fatal("NodeDown lifted by a hello")
	}
}

// listenSilently returns the address of a listener that accepts
// connections (the kernel completes them) and never reads or answers, as a
// stopped process does.
func listenSilently(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().String()
}
