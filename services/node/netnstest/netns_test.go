package netnstest_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/services/node/netnstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, enginetest.LeakOptions()...)
}

// slack is added to every bound the engine promises: the machine is a
// loaded 2-CPU one and these tests run under the race detector.
const slack = 3 * time.Second

var echo = engine.ServiceOn(engine.ChanFirstService, 1)

// pair is node 1 in the test's namespace calling node 2's echo in host 1's
// namespace (its listener made there with Host.Do).
type pair struct {
	nw     *netnstest.Net
	n1, n2 *engine.Node
}

func newPair(t *testing.T, dialTimeout, writeTimeout time.Duration) *pair {
	t.Helper()
	nw := netnstest.New(t, 1)
	h := nw.Hosts[0]
	cfg := func(num engine.NodeNum, listen string, peer engine.NodeNum, addr string) engine.Config {
		c := engine.DefaultConfig()
		c.Node, c.Cluster, c.ListenAddr, c.Insecure, c.Logger = num, "netns", listen, true, enginetest.Logger()
		c.Peers = map[engine.NodeNum]string{peer: addr}
		c.DialTimeout, c.WriteTimeout = dialTimeout, writeTimeout
		return c
	}
	n1, err := engine.New(cfg(1, nw.HostIP+":0", 2, h.IP+":7100"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n1.Close() })
	n2, err := engine.New(cfg(2, h.IP+":7100", 1, n1.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	err = n2.Register(engine.Service{ID: echo, Name: "echo", MaxHandles: 8, Procs: []engine.Handler{
		func(_ context.Context, req *engine.Request, resp *engine.Response) error {
			resp.Body = append(resp.Body, req.Args...)
			return nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	var startErr error
	if err := h.Do(func() { startErr = n2.Start() }); err != nil {
		t.Fatal(err)
	}
	if startErr != nil {
		t.Fatal(startErr)
	}
	t.Cleanup(func() { _ = n2.Close() })
	return &pair{nw: nw, n1: n1, n2: n2}
}

func (p *pair) call(ctx context.Context, payload []byte) error {
	out, err := p.n1.Call(ctx, 2, engine.Method{Service: echo, Proc: 0}, payload, nil)
	if err == nil && len(out) != len(payload) {
		err = fmt.Errorf("echo of %d bytes came back with %d", len(payload), len(out))
	}
	return err
}

// TestDialBlackhole: a dial whose SYNs vanish (the peer's link is down)
// ends at DialTimeout, as a timeout, never as the refusal that CLMS takes
// for proof that the peer's process is gone; after the heal calls work.
func TestDialBlackhole(t *testing.T) {
	const dialTimeout = time.Second
	p := newPair(t, dialTimeout, 0)
	ctx := context.Background()
	if err := p.call(ctx, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.n1.ProbePeer(ctx, 2); err != nil {
		t.Fatalf("probe before the cut: %v", err)
	}
	p.nw.Hosts[0].Cut()
	start := time.Now()
	_, err := p.n1.ProbePeer(ctx, 2)
	took := time.Since(start)
	if err == nil || errors.Is(err, engine.ErrPeerRefused) || errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("probe into a black hole: %v; want a timeout, which proves nothing", err)
	}
	if took > dialTimeout+slack {
		t.Fatalf("probe into a black hole took %v, DialTimeout is %v", took, dialTimeout)
	}
	// A call that must dial: the old link dropped (as CLMS would on
	// NODEDOWN), the node let back up.
	p.n1.NodeDown(2, errors.New("test: redial"))
	p.n1.NodeUp(2)
	start = time.Now()
	err = p.call(ctx, []byte("hello")) // no deadline of its own: the dial's bounds it
	took = time.Since(start)
	if !errors.Is(err, engine.ErrNodeDown) || errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("call dialling into a black hole: %v; want ErrNodeDown from a timed-out dial", err)
	}
	if took > dialTimeout+slack {
		t.Fatalf("call dialling into a black hole took %v, DialTimeout is %v", took, dialTimeout)
	}
	t.Logf("probe and dial into a black hole: %v (DialTimeout %v); %v", took, dialTimeout, err)
	p.nw.Hosts[0].Heal()
	netnstest.Eventually(t, 30*time.Second, "calls after the heal", func() (bool, string) {
		err := p.call(ctx, []byte("hello"))
		return err == nil, fmt.Sprint(err)
	})
}

// flushers lists this process's goroutines waiting for a full socket.
func flushers() []string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	var out []string
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, "engine.(*conn).routineFlush") {
			out = append(out, g)
		}
	}
	return out
}

// TestBlockedWriteBounded: calls of 8 MiB in flight when the peer's link
// goes down fill the socket, and the engine's writes can go no further.
// Each call still ends by its own deadline (the engine alone cannot tell
// a cut from a slow peer: CLMS's NODEDOWN is what fails them early, see
// tools/cinode's TestNetnsMemberCutMidCall); WriteTimeout ends every
// connection whose socket stalled (no goroutine is left waiting on one);
// after the heal a new call redials and works.
func TestBlockedWriteBounded(t *testing.T) {
	const writeTimeout = 2 * time.Second
	p := newPair(t, time.Second, writeTimeout)
	payload := make([]byte, 8<<20)
	const callers = 4
	const perCall = 3 * time.Second
	type outcome struct {
		late time.Duration // past the call's deadline
		err  error
	}
	var (
		mu       sync.Mutex
		ok       int
		cut      bool      // the link is down
		early    []outcome // failures before the cut: a loaded machine under -race can take 3 s for 16 MiB
		failures []outcome // after the cut
		wg       sync.WaitGroup
	)
	caller := func(stop <-chan struct{}) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), perCall)
			dl, _ := ctx.Deadline()
			err := p.call(ctx, payload)
			late := time.Since(dl)
			cancel()
			mu.Lock()
			after := cut
			switch {
			case err == nil:
				ok++
			case after:
				failures = append(failures, outcome{late, err})
			default:
				early = append(early, outcome{late, err})
			}
			mu.Unlock()
			if err != nil && after {
				return // one failed call per caller: the cut's
			}
		}
	}
	var stop chan struct{}
	start := func() {
		stop = make(chan struct{})
		for range callers {
			wg.Add(1)
			go caller(stop)
		}
	}
	end := func() {
		close(stop)
		wg.Wait()
	}
	// The premise: a socket full of what the cut link cannot carry, the
	// engine's flusher waiting on it. At the cut's instant every byte may
	// already be in the peer's buffers (the calls then wait for credit or
	// replies): then heal, wait out the calls, and cut again.
	h := p.nw.Hosts[0]
	full := false
	for attempt := 1; !full; attempt++ {
		if attempt > 5 {
			t.Fatalf("no socket full at any of %d cuts", attempt-1)
		}
		start()
		netnstest.Eventually(t, 30*time.Second, "bulk calls flowing", func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return ok >= 2*callers, fmt.Sprint(ok, " calls done; failed: ", early)
		})
		mu.Lock()
		cut, ok = true, 0
		mu.Unlock()
		h.Cut()
		for deadline := time.Now().Add(writeTimeout / 2); time.Now().Before(deadline) && !full; time.Sleep(10 * time.Millisecond) {
			full = len(flushers()) > 0
		}
		if !full {
			t.Logf("cut %d: no socket full; again", attempt)
			h.Heal()
			end()
			mu.Lock()
			cut, failures = false, nil
			mu.Unlock()
		}
	}
	for _, f := range early {
		t.Logf("before the cut: a call failed %v past its deadline: %v", f.late.Round(time.Millisecond), f.err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(perCall + writeTimeout + 2*slack):
		end()
		t.Fatalf("callers still waiting after the cut; flushers:\n%s", strings.Join(flushers(), "\n\n"))
	}
	close(stop)
	for _, f := range failures {
		if f.late > slack {
			t.Errorf("a call ended %v after its deadline: %v", f.late, f.err)
		}
		if !errors.Is(f.err, engine.ErrTimedOut) && !errors.Is(f.err, engine.ErrNodeDown) && !errors.Is(f.err, engine.ErrThrottled) {
			t.Errorf("a call failed with %v; want a timeout or node down", f.err)
		}
	}
	for _, f := range failures {
		t.Logf("after the cut: a call failed %v past its deadline: %v", f.late.Round(time.Millisecond), f.err)
	}
	// WriteTimeout ends the stalled connections.
	netnstest.Eventually(t, writeTimeout+2*slack, "no goroutine left on a full socket", func() (bool, string) {
		f := flushers()
		return len(f) == 0, strings.Join(f, "\n\n")
	})
	p.nw.Hosts[0].Heal()
	netnstest.Eventually(t, 30*time.Second, "calls after the heal", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := p.call(ctx, payload)
		return err == nil, fmt.Sprint(err)
	})
}

// TestSweepsLeftovers: what a test process that died without its cleanups
// (a -timeout panic) left behind, named with its pid, goes at the next New.
func TestSweepsLeftovers(t *testing.T) {
	// A pid that ran and is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	dead := cmd.Process.Pid
	ns := fmt.Sprintf("cins%d-1-1", dead)
	link := fmt.Sprintf("civ%dx1x1", dead)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot make a namespace here: %v: %s", err, out) // New skips the same way below
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "link", "add", link, "type", "veth", "peer", "name", link+"p").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", link).Run() })
	netnstest.New(t, 1)
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), ns) {
		t.Errorf("namespace %s of dead pid %d left: %s", ns, dead, out)
	}
	if err := exec.Command("ip", "link", "show", link).Run(); err == nil {
		t.Errorf("link %s of dead pid %d left", link, dead)
	}
}

// TestBlockBlocks: Block partitions a host while its link stays up, and
// Unblock ends the partition. (Setting the bridge port to "blocking"
// instead was silently ignored with STP off, and partitioned nothing.)
func TestBlockBlocks(t *testing.T) {
	p := newPair(t, 500*time.Millisecond, 0)
	h := p.nw.Hosts[0]
	ctx := context.Background()
	h.Block()
	if _, err := p.n1.ProbePeer(ctx, 2); err == nil {
		t.Fatal("a probe went through a blocked port")
	}
	if out, err := exec.Command("ip", "-n", h.NS, "link", "show", "eth0").Output(); err != nil || !strings.Contains(string(out), "LOWER_UP") {
		t.Fatalf("the blocked host's link is not up: %v %s", err, out)
	}
	h.Unblock()
	netnstest.Eventually(t, 10*time.Second, "a probe after Unblock", func() (bool, string) {
		_, err := p.n1.ProbePeer(ctx, 2)
		return err == nil, fmt.Sprint(err)
	})
}
