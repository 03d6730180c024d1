package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Callers that cannot be cancelled read their own replies (callread.go);
// these force netpoller reads, where that happens.

// TestCallerReadsOwnReply: calls one after another are read by their
// callers, not handed over by a reader goroutine, whether their context
// can end or not.
func TestCallerReadsOwnReply(t *testing.T) {
	nodes := netpollCluster(t, 2, nil)
	// The watcher then never reads on its own between these calls, however
	// slow the machine.
	nodes[0].callerIdle = time.Hour
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handed []int // calls whose replies the watcher read
	for i := range 300 {
		want := fmt.Sprint("call ", i)
		ctx := [...]context.Context{context.Background(), ctxFor(t, 10*time.Second), cancellable}[i%3]
		before := selfReads(nodes[0])
		got, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, []byte(want), nil)
		if err != nil || string(got) != want {
			t.Fatalf("call %d: %q %v", i, got, err)
		}
		if selfReads(nodes[0]) == before {
			handed = append(handed, i)
		}
	}
	// All but the connection's first, whose wait for the first credit
	// grant made the watcher read. (A reply the watcher reads before its
	// caller comes to read makes it step back as an arrival would: counting
	// only arrivals, the next call was handed its reply too.)
	if len(handed) > 1 || len(handed) == 1 && handed[0] != 0 {
		t.Fatalf("calls %v were handed their replies, want at most the first", handed)
	}
}

// selfReads is how many replies n's callers to node 2 on ChanFirstService
// read themselves.
func selfReads(n *Node) uint64 {
	if c := n.peer(2).out[ChanFirstService].Load(); c != nil {
		return c.reads.selfReads.Load()
	}
	return 0
}

// TestReadingCallerCancelled: a caller reading its connection for a reply
// that does not come returns when its context is cancelled (between read
// slices) or reaches its deadline, gives the call up (the server's handler
// sees the cancel), and the connection serves the next call.
func TestReadingCallerCancelled(t *testing.T) {
	nodes := netpollCluster(t, 2, nil)
	nodes[0].callerIdle = time.Hour
	cancelled := make(chan struct{}, 4)
	mustRegister(t, nodes[1], Service{ID: slowSvc, Procs: []Handler{func(ctx context.Context, _ *Request, _ *Response) error {
		<-ctx.Done()
		cancelled <- struct{}{}
		return ctx.Err()
	}}})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	echoOnce := func() {
		t.Helper()
		if got, err := nodes[0].Call(context.Background(), 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil || string(got) != "x" {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	echoOnce() // the watcher steps back: the calls below read

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := nodes[0].Call(ctx, 2, Method{Service: slowSvc}, nil, nil)
		errc <- err
	}()
	eventually(t, "the caller reading", func() bool { return nodes[0].peer(2).out[ChanFirstService].Load().reads.waiting.Load() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, ErrIntr) {
		t.Fatalf("cancelled call: %v, want ErrIntr", err)
	}
	<-cancelled // its TypeCancel reached the handler

	dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer dcancel()
	if _, err := nodes[0].Call(dctx, 2, Method{Service: slowSvc}, nil, nil); !errors.Is(err, ErrTimedOut) {
		t.Fatalf("call past its deadline: %v, want ErrTimedOut", err)
	}
	<-cancelled
	echoOnce()
	if n := nodes[0].handles.inUse.Load(); n != 0 {
		t.Fatalf("%d client handles leaked", n)
	}
}

// TestCallerReadersShareAConnection: many callers on one connection take
// turns reading it, and every call completes: callers whose context cannot
// end, callers with a deadline (who read in slices), and senders out of
// credit on the same throttled channel (whose grants someone must read),
// all at once, with replies of every size.
func TestCallerReadersShareAConnection(t *testing.T) {
	nodes := netpollCluster(t, 2, func(c *Config) {
		c.ChannelWindows = map[Channel]int{ChanFirstService: 16 << 10}
		c.MaxCreditWindow = 16 << 10
	})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				args := make([]byte, (w*131+i*17)%(12<<10))
				args = append(args, fmt.Sprint(w, "/", i)...)
				var err error
				var got []byte
				switch w % 3 {
				case 0, 1:
					got, err = nodes[0].Call(context.Background(), 2, Method{Service: echoSvc}, args, nil)
				case 2:
					got, err = nodes[0].Call(ctxFor(t, 20*time.Second), 2, Method{Service: echoSvc}, args, nil)
				}
				if err == nil && string(got) != string(args) {
					err = fmt.Errorf("worker %d call %d: wrong reply", w, i)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 4 { // one-way senders, out of credit most of the time
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if err := nodes[0].Send(ctxFor(t, 20*time.Second), 2, Method{Service: echoSvc}, make([]byte, 8<<10)); err != nil {
					errs <- fmt.Errorf("send: %w", err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("callers sharing a connection did not all finish: a reply or a grant went unread")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := nodes[0].handles.inUse.Load(); n != 0 {
		t.Fatalf("%d client handles leaked", n)
	}
}

// TestCallerReaderSeesLinkEnd: a caller reading its connection for a
// reply that will never come returns ErrNodeDown as soon as the link ends
// (the peer closes), without a deadline.
func TestCallerReaderSeesLinkEnd(t *testing.T) {
	nodes := netpollCluster(t, 2, nil)
	started, release := make(chan struct{}, 4), make(chan struct{})
	t.Cleanup(func() { close(release) })
	mustRegister(t, nodes[1], Service{ID: slowSvc, Procs: []Handler{func(context.Context, *Request, *Response) error {
		started <- struct{}{}
		<-release // never answers while the test runs
		return nil
	}}})
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := nodes[0].Call(context.Background(), 2, Method{Service: slowSvc}, nil, nil)
			errs <- err
		}()
	}
	<-started
	<-started
	go func() { _ = nodes[1].Close() }() // it may wait for its handlers

	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrNodeDown) {
				t.Fatalf("call ended with %v, want ErrNodeDown", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a caller reading its connection never saw the link end")
		}
	}
}

// TestIdleDialledConnectionSeesPeerClose: with no caller waiting, the
// connection's watcher reads it, so a peer that closes an idle link is
// noticed without a call.
func TestIdleDialledConnectionSeesPeerClose(t *testing.T) {
	nodes := netpollCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	if _, err := nodes[0].Call(context.Background(), 2, Method{Service: echoSvc}, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	losses := nodes[0].m.peerLosses.Get()
	if err := nodes[1].Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the idle link's end to be seen", func() bool { return nodes[0].m.peerLosses.Get() > losses })
}
