package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The node-down tests run the peer in a child process (this test binary,
// re-executed) so that it can be killed with SIGKILL like a crashed node.
const helperEnv = "CI_ENGINE_HELPER_NODE"

var slowSvc = ServiceOn(ChanFirstService, 2)

// runHelperNode is the child: node 2, listening on the address in
// CI_HELPER_LISTEN, knowing node 1 at CI_HELPER_PEER. It serves echo and a
// slow procedure that announces itself on stdout and never answers. It
// prints "addr <address>" and runs until stdin closes.
func runHelperNode() int {
	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.Node, cfg.Cluster = 2, "test"
	cfg.ListenAddr = os.Getenv("CI_HELPER_LISTEN")
	cfg.Peers = map[NodeNum]string{1: os.Getenv("CI_HELPER_PEER")}
	cfg.MaxConnections, _ = strconv.Atoi(os.Getenv("CI_HELPER_MAXCONNS"))
	n, err := New(testMode(cfg))
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	var out sync.Mutex
	say := func(s string) { out.Lock(); fmt.Println(s); out.Unlock() }
	_ = n.Register(Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	_ = n.Register(Service{ID: slowSvc, Procs: []Handler{func(ctx context.Context, req *Request, _ *Response) error {
		say("serving " + string(req.Args))
		<-ctx.Done()
		return ctx.Err()
	}}, MaxHandles: 16})
	say("addr " + n.Addr())
	go func() {
		<-n.Done()
		if err := n.Err(); err != nil {
			say("fatal " + err.Error())
		}
	}()
	// Each line on stdin asks for the limit counters; EOF ends the node.
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		say(fmt.Sprintf("limits descriptors=%d connections=%d", n.m.limitDescriptors.Get(), n.m.limitConnections.Get()))
	}
	_ = n.Close()
	return 0
}

// child is a running helper node.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	addr  string
}

func startChild(t *testing.T, listen, peerAddr string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "CI_HELPER_LISTEN="+listen, "CI_HELPER_PEER="+peerAddr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(c.kill)
	first := c.expect(t, "addr ")
	c.addr = strings.TrimPrefix(first, "addr ")
	return c
}

// expect waits for the child's next line and checks its prefix.
func (c *child) expect(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok || !strings.HasPrefix(l, prefix) {
			t.Fatalf("child said %q (open %v), want %q...", l, ok, prefix)
		}
		return l
	case <-time.After(20 * time.Second):
		t.Fatalf("child did not say %q", prefix)
	}
	return ""
}

func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
		for range c.lines {
		}
	}
}

func TestPeerKilledMidRPC(t *testing.T) {
	nodes := startCluster(t, 1, nil)
	n := nodes[0]
	ch := startChild(t, "127.0.0.2:0", n.Addr())
	if err := n.SetPeer(2, ch.addr); err != nil {
		t.Fatal(err)
	}
	downs := make(chan NodeNum, 4)
	n.OnNodeDown(func(num NodeNum, err error) {
		if !errors.Is(err, ErrNodeDown) {
			t.Errorf("callback error %v", err)
		}
		downs <- num
	})
	if got, err := n.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("hi"), nil); err != nil || string(got) != "hi" {
		t.Fatalf("warm-up call: %q %v", got, err)
	}

	// Three calls that the child will never answer, with a long deadline,
	// and one with none (with netpoller reads, its caller reads the
	// connection itself: callread.go).
	const calls = 4
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make(chan error, calls)
	for i := 0; i < calls; i++ {
		go func() {
			cctx := ctx
			if i == 0 {
				cctx = context.Background()
			}
			_, err := n.Call(cctx, 2, Method{Service: slowSvc}, []byte(strconv.Itoa(i)), nil)
			errs <- err
		}()
	}
	for i := 0; i < calls; i++ {
		ch.expect(t, "serving ")
	}
	ch.kill()

	for i := 0; i < calls; i++ {
		err := <-errs
		if !errors.Is(err, ErrNodeDown) {
			t.Fatalf("outstanding call ended with %v, want ErrNodeDown", err)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("calls ended only at their deadline")
	}
	select {
	case num := <-downs:
		if num != 2 {
			t.Fatalf("node-down callback for %d", num)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("node-down callback did not run")
	}
	// A new call fails fast: the dial is refused, no deadline is waited for.
	if _, err := n.Call(ctx, 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call to dead node: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("call to a dead node waited for its deadline")
	}

	// The node comes back as a new process, a new incarnation: calls work again.
	ch2 := startChild(t, "127.0.0.2:0", n.Addr())
	if err := n.SetPeer(2, ch2.addr); err != nil {
		t.Fatal(err)
	}
	if got, err := n.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("again"), nil); err != nil || string(got) != "again" {
		t.Fatalf("call after restart: %q %v", got, err)
	}
	if n.handles.inUse.Load() != 0 {
		t.Fatalf("%d client handles leaked", n.handles.inUse.Load())
	}
}

func TestDeclaredDownFailsFastUntilUp(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	release := make(chan struct{})
	defer close(release)
	mustRegister(t, nodes[1], Service{ID: slowSvc, Procs: []Handler{func(context.Context, *Request, *Response) error {
		<-release
		return nil
	}}, MaxHandles: 4})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := nodes[0].Go(ctx, 2, Method{Service: slowSvc}, nil)
	eventually(t, "call in flight", func() bool { return nodes[0].handles.inUse.Load() == 1 })

	nodes[0].NodeDown(2, errors.New("CLMS says so"))
	if _, err := f.Wait(); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("outstanding call: %v", err)
	}
	if _, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call while declared down: %v", err)
	}
	if err := nodes[0].Send(ctx, 2, Method{Service: echoSvc}, nil); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("message while declared down: %v", err)
	}
	if !nodes[0].IsDown(2) {
		t.Fatal("IsDown false")
	}
	nodes[0].NodeUp(2)
	// The reconnect is a new link: node 2 may still be tearing down the old
	// one, so allow a call or two to see the teardown.
	eventually(t, "calls work after NodeUp", func() bool {
		got, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, []byte("up"), nil)
		return err == nil && string(got) == "up"
	})
}

func TestCloseFailsOutstandingCalls(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	release := make(chan struct{})
	defer close(release)
	mustRegister(t, nodes[1], Service{ID: slowSvc, Procs: []Handler{func(context.Context, *Request, *Response) error {
		<-release
		return nil
	}}, MaxHandles: 4})
	f := nodes[0].Go(context.Background(), 2, Method{Service: slowSvc}, nil)
	eventually(t, "call in flight", func() bool { return nodes[0].handles.inUse.Load() == 1 })
	if err := nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Wait(); !errors.Is(err, ErrClosed) {
		t.Fatalf("outstanding call after Close: %v", err)
	}
	if _, err := nodes[0].Call(context.Background(), 2, Method{Service: slowSvc}, nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	if err := nodes[0].Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestDeclaredDownPeerCannotReachHandlers: after NodeDown(1) on node 2,
// node 1 (which declared nothing) redials; node 2 must refuse it, so no
// handler runs for a node CLMS declared dead and node 1's call fails at
// once instead of waiting for a reply that could never be sent.
func TestDeclaredDownPeerCannotReachHandlers(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	var served atomic.Int32
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(context.Context, *Request, *Response) error {
		served.Add(1)
		return nil
	}}})
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
	}
	nodes[1].NodeDown(1, errors.New("CLMS says so"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	eventually(t, "node 1 sees the link gone", func() bool {
		_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
		return err != nil
	})
	for i := 0; i < 5; i++ {
		if _, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrHandshake) && !errors.Is(err, ErrNodeDown) {
			t.Fatalf("call from a declared-down node: %v", err)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("calls waited for their deadline")
	}
	if served.Load() != 1 {
		t.Fatalf("handler ran %d times, want only the call before NodeDown", served.Load())
	}
}
