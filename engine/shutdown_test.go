package engine

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// TestShutdownDrains: Shutdown lets the running handler finish and its
// reply reach the caller, peers learn it and fail new calls fast with
// ErrShuttingDown (its own status), and the node then closes.
func TestShutdownDrains(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	started, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{
		func(_ context.Context, req *Request, resp *Response) error {
			close(started)
			<-release
			resp.Body = append(resp.Body, "finished"...)
			return nil
		},
		echo,
	}})
	ctx := ctxFor(t, 20*time.Second)
	running := nodes[0].Go(ctx, 2, Method{Service: echoSvc}, nil)
	<-started
	shut := make(chan error, 1)
	go func() { shut <- nodes[1].Shutdown(ctx) }()

	// Node 1 hears of it and fails new calls at once, without sending.
	eventually(t, "node 1 sees node 2 draining", func() bool {
		_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 1}, nil, nil)
		return errors.Is(err, ErrShuttingDown)
	})
	_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 1}, nil, nil)
	oneSentinel(t, err, ErrShuttingDown, StatusShuttingDown)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a handler running", err)
	default:
	}

	close(release)
	if got, err := running.Wait(); err != nil || string(got) != "finished" {
		t.Fatalf("running call: %q, %v", got, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	<-nodes[1].Done()
}

// TestNestedCallToDrainingPeerFails: a handler whose nested call failed
// because that call's peer drains, and that returns the error, fails as
// itself (ErrFailed, the nested text): its caller must not read that the
// handler's own node shuts down. The draining notice is the peer's
// answer, a RemoteError, like its refusal of a request that still comes.
func TestNestedCallToDrainingPeerFails(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	started, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[2], Service{ID: echoSvc, Procs: []Handler{
		func(context.Context, *Request, *Response) error { close(started); <-release; return nil },
		echo,
	}})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{
		func(ctx context.Context, _ *Request, _ *Response) error {
			_, err := nodes[1].Call(ctx, 3, Method{Service: echoSvc, Proc: 1}, nil, nil)
			return err
		},
	}})
	ctx := ctxFor(t, 20*time.Second)
	running := nodes[1].Go(ctx, 3, Method{Service: echoSvc}, nil) // keeps node 3 draining
	<-started
	shut := make(chan error, 1)
	go func() { shut <- nodes[2].Shutdown(ctx) }()
	eventually(t, "node 2 sees node 3 draining", func() bool {
		_, err := nodes[1].Call(ctx, 3, Method{Service: echoSvc, Proc: 1}, nil, nil)
		return errors.Is(err, ErrShuttingDown)
	})
	_, err := nodes[1].Call(ctx, 3, Method{Service: echoSvc, Proc: 1}, nil, nil)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Errorf("draining notice: %v, want a *RemoteError", err)
	}
	oneSentinel(t, err, ErrShuttingDown, StatusShuttingDown)

	_, err = nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
	oneSentinel(t, err, ErrFailed, StatusFailed)

	close(release)
	if _, err := running.Wait(); err != nil {
		t.Fatalf("running call: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestShutdownRefusesLateRequests: a request that reaches a draining node
// (its peer had not heard yet) is refused with ErrShuttingDown.
func TestShutdownRefusesLateRequests(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	started, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{
		func(context.Context, *Request, *Response) error { close(started); <-release; return nil },
		echo,
	}})
	ctx := ctxFor(t, 20*time.Second)
	running := nodes[0].Go(ctx, 2, Method{Service: echoSvc}, nil)
	<-started
	// Drain without telling: as if the TypeDraining frame were still on
	// its way when node 1's request left.
	nodes[1].draining.Store(true)
	_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 1}, nil, nil)
	oneSentinel(t, err, ErrShuttingDown, StatusShuttingDown)
	if got := nodes[1].m.drainingRefused.Get(); got != 1 {
		t.Fatalf("draining refusals %d, want 1", got)
	}
	close(release)
	if _, err := running.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownDeadline: if ctx ends before the handlers do, Shutdown closes
// at once and returns ctx's error; the running call fails. (Close, like
// Close always, still waits for the handler goroutine itself to return.)
func TestShutdownDeadline(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	started, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{
		func(context.Context, *Request, *Response) error { close(started); <-release; return nil },
	}})
	running := nodes[0].Go(ctxFor(t, 20*time.Second), 2, Method{Service: echoSvc}, nil)
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	shut := make(chan error, 1)
	go func() { shut <- nodes[1].Shutdown(ctx) }()
	eventually(t, "draining", func() bool { return nodes[1].draining.Load() })
	cancel()
	// The connections close without waiting for the handler: its caller
	// fails now.
	if _, err := running.Wait(); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("running call: %v, want ErrNodeDown", err)
	}
	close(release)
	if err := <-shut; !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	<-nodes[1].Done()
}

// TestDrainingPeerRepliesBeforeLinkEnds: a peer that shuts down writes its
// last replies, then closes every connection. Each connection's replies
// come before its end, but the caller reads its connections on different
// goroutines, in no order: one connection's end must not fail a call whose
// reply is still on another. Here the first connection's end is seen
// first, for certain, and the second's reply still completes its call; the
// last connection's end then ends the link.
func TestDrainingPeerRepliesBeforeLinkEnds(t *testing.T) {
	target := startCluster(t, 1, nil)[0]
	m := newFakeMember(t, target, 2, nil)
	addFakeMember(t, 2, m.listen("127.0.0.2", false), target)
	first := target.Go(WithPriority(ctxFor(t, 20*time.Second), 1), 2, Method{Service: echoSvc}, []byte("first"))
	a := <-m.acceptedConns()
	// Unthrottled too: the fake member grants no credit.
	second := target.Go(WithPriority(ctxFor(t, 20*time.Second), 2), 2, Method{Service: echoSvc}, []byte("second"))
	b := <-m.acceptedConns()
	if Channel(a.ack.Channel) != ChanPrio1 || Channel(b.ack.Channel) != ChanPrio2 {
		t.Fatalf("dialled %d then %d", a.ack.Channel, b.ack.Channel)
	}
	answer := func(c *fakeConn) {
		t.Helper()
		h, body, err := c.readUntil(framing.TypeRequest)
		if err != nil {
			t.Fatal(err)
		}
		rh := framing.Header{Type: framing.TypeReply, Priority: h.Priority, Service: h.Service, Proc: h.Proc, XID: h.XID}
		if err := c.writeFrame(rh, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.writeFrame(framing.Header{Type: framing.TypeDraining}, nil); err != nil {
		t.Fatal(err)
	}
	p := target.peer(2)
	eventually(t, "the draining notice", func() bool { return p.draining.Load() })
	losses := target.m.peerLosses.Get()
	answer(a)
	_ = a.Close()
	if got, err := first.Wait(); err != nil || string(got) != "first" {
		t.Fatalf("first call: %q, %v", got, err)
	}
	eventually(t, "the first connection's end", func() bool { return p.out[ChanPrio1].Load() == nil })
	if got := target.m.peerLosses.Get(); got != losses {
		t.Fatal("the first connection's end ended the link before the other's replies")
	}
	answer(b)
	if got, err := second.Wait(); err != nil || string(got) != "second" {
		t.Fatalf("second call: %q, %v", got, err)
	}
	_ = b.Close()
	eventually(t, "the last connection's end to end the link", func() bool { return target.m.peerLosses.Get() > losses })
}
