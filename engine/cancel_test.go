package engine

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// TestHandlerGetsCallerDeadline: the handler's ctx carries the caller's
// deadline — never before it (the time left is rounded up and counted
// from the request's arrival), and after it by no more than the time the
// request took to reach the handler plus one encoding step.
func TestHandlerGetsCallerDeadline(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	type seen struct {
		deadline time.Time
		ok       bool
		at       time.Time
	}
	got := make(chan seen, 1)
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{func(ctx context.Context, _ *Request, _ *Response) error {
		d, ok := ctx.Deadline()
		got <- seen{d, ok, time.Now()}
		return nil
	}}})
	// Warm the connection so that the dial is not part of the timing.
	if _, err := nodes[0].Call(context.Background(), 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s.ok {
		t.Fatalf("a caller without deadline gave the handler one: %v", s.deadline)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	if _, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
	}
	s := <-got
	if !s.ok {
		t.Fatal("handler ctx has no deadline")
	}
	if s.deadline.Before(want) || s.deadline.After(want.Add(s.at.Sub(t0)+time.Millisecond)) {
		t.Fatalf("handler deadline %v, caller's %v (handler ran %v after the call)", s.deadline, want, s.at.Sub(t0))
	}
}

// TestFarDeadlineNeverCutShort: a caller's deadline further away than the
// header can carry (about 11 days) is not sent clamped, which would end
// the handler, and drop its reply, days before the caller gives up; the
// handler's ctx then has no deadline and still ends with the caller.
func TestFarDeadlineNeverCutShort(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	got := make(chan time.Time, 1)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(ctx context.Context, _ *Request, _ *Response) error {
		d, ok := ctx.Deadline()
		got <- d
		if !ok {
			<-ctx.Done() // cancellable all the same: the caller's cancel ends it
		}
		return nil
	}}})
	for _, far := range []time.Duration{maxSentTimeout - time.Minute, maxSentTimeout + time.Hour, 30 * 24 * time.Hour} {
		ctx, cancel := context.WithTimeout(context.Background(), far)
		want, _ := ctx.Deadline()
		errc := make(chan error, 1)
		go func() {
			_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
			errc <- err
		}()
		if d := <-got; far <= maxSentTimeout && d.Before(want) || far > maxSentTimeout && !d.IsZero() {
			t.Errorf("caller's deadline in %v: the handler's is %v (caller's %v)", far, d, want)
		}
		if far > maxSentTimeout {
			cancel()
			if err := <-errc; !errors.Is(err, ErrIntr) {
				t.Errorf("cancelled: %v", err)
			}
		} else if err := <-errc; err != nil {
			t.Errorf("deadline in %v: %v", far, err)
		}
		cancel()
	}
}

// TestAbandonedCallCancelsHandler: a caller that cancels its call makes
// the server cancel the handler's ctx (context.Canceled, not a deadline:
// the cancel frame did it), and the handler's reply is not sent.
func TestAbandonedCallCancelsHandler(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	started := make(chan struct{})
	ended := make(chan error, 1)
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{func(ctx context.Context, _ *Request, resp *Response) error {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		resp.Body = append(resp.Body, "too late"...)
		return nil
	}}})
	ctx, cancel := context.WithCancel(context.Background())
	f := nodes[0].Go(ctx, 2, Method{Service: echoSvc}, nil)
	<-started
	cancel()
	if _, err := f.Wait(); !errors.Is(err, ErrIntr) {
		t.Fatalf("abandoned call: %v, want ErrIntr", err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx ended with %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler ctx never cancelled")
	}
	eventually(t, "reply dropped", func() bool { return nodes[1].m.cancelledReplies.Get() == 1 })
	if s, r, l := nodes[0].m.cancelsSent.Get(), nodes[1].m.cancelsReceived.Get(), nodes[0].m.lateReplies.Get(); s != 1 || r != 1 || l != 0 {
		t.Fatalf("cancels sent %d, received %d, late replies %d; want 1, 1, 0", s, r, l)
	}
}

// TestHandlerIgnoringCancelReplyDropped: a handler that never looks at its
// ctx finishes after its caller gave up at its deadline; its reply is
// dropped on the server and counted, and the caller's next call is served.
func TestHandlerIgnoringCancelReplyDropped(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	started, release := make(chan struct{}, 1), make(chan struct{})
	var hctx atomic.Pointer[context.Context]
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{
		func(ctx context.Context, _ *Request, resp *Response) error {
			hctx.Store(&ctx)
			started <- struct{}{}
			<-release
			resp.Body = append(resp.Body, "late"...)
			return nil
		},
		echo,
	}})
	// Warm the connection: the deadline below must not cover a first dial.
	if _, err := nodes[0].Call(context.Background(), 2, Method{Service: echoSvc, Proc: 1}, nil, nil); err != nil {
		t.Fatal(err)
	}
	f := nodes[0].Go(ctxFor(t, 200*time.Millisecond), 2, Method{Service: echoSvc}, nil)
	<-started
	if _, err := f.Wait(); !errors.Is(err, ErrTimedOut) {
		t.Fatalf("got %v, want ErrTimedOut", err)
	}
	// The handler's own context (built for this request) has ended: it may
	// be watched after the handler returns, no reuse can race it.
	<-(*hctx.Load()).Done()
	eventually(t, "cancel received", func() bool { return nodes[1].m.cancelsReceived.Get() == 1 })
	close(release)
	eventually(t, "late reply dropped", func() bool { return nodes[1].m.cancelledReplies.Get() == 1 })
	if got, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc, Proc: 1}, []byte("next"), nil); err != nil || string(got) != "next" {
		t.Fatalf("next call: %q, %v", got, err)
	}
	if l := nodes[0].m.lateReplies.Get(); l != 0 {
		t.Fatalf("%d late replies reached the caller", l)
	}
}

// TestCancelledWhileQueuedNeverRuns: a request cancelled while it waits for
// a server handle is retired without running its handler.
func TestCancelledWhileQueuedNeverRuns(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	started, release := make(chan struct{}, 2), make(chan struct{})
	var runs atomic.Int32
	mustRegister(t, nodes[1], Service{ID: echoSvc, MinHandles: 1, MaxHandles: 1, Procs: []Handler{func(context.Context, *Request, *Response) error {
		runs.Add(1)
		started <- struct{}{}
		<-release
		return nil
	}}})
	first := nodes[0].Go(context.Background(), 2, Method{Service: echoSvc}, nil)
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	second := nodes[0].Go(ctx, 2, Method{Service: echoSvc}, nil)
	eventually(t, "second request queued", func() bool { return nodes[1].lookupService(echoSvc).pool.queued.Load() == 1 })
	cancel()
	if _, err := second.Wait(); !errors.Is(err, ErrIntr) {
		t.Fatalf("second: %v", err)
	}
	eventually(t, "cancel received", func() bool { return nodes[1].m.cancelsReceived.Get() == 1 })
	close(release)
	if _, err := first.Wait(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "queued request retired", func() bool { return nodes[1].m.cancelledReplies.Get() == 1 })
	if r := runs.Load(); r != 1 {
		t.Fatalf("handler ran %d times, want 1", r)
	}
}

// TestCancelAndDrainingFramesFromAPeerThatIgnoresTheProtocol: cancels for
// xids the node never saw are ignored however many come (they find
// nothing, hold nothing, and the connection keeps serving), and a
// draining frame sent the wrong way (dialler to acceptor) ends the
// connection as a bad frame.
func TestCancelAndDrainingFramesFromAPeerThatIgnoresTheProtocol(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	var served atomic.Int32
	mustRegister(t, nodes[1], Service{ID: echoSvc, Inline: true, Procs: []Handler{func(context.Context, *Request, *Response) error {
		served.Add(1)
		return nil
	}}})
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, nil, nil); err != nil {
		t.Fatal(err)
	}
	served.Store(0)

	c := rawMember(t, nodes[1], 1, ChanFirstService)
	var frames []byte
	for xid := uint64(1); xid <= 10000; xid++ {
		h := framing.Header{Type: framing.TypeCancel, XID: xid * 7919}
		frames = framing.AppendHeader(frames, &h)
	}
	ow := framing.Header{Type: framing.TypeOneWay, Service: echoSvc}
	frames = framing.AppendHeader(frames, &ow)
	if _, err := c.Write(frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the one-way after the cancels served", func() bool { return served.Load() == 1 })
	if got := nodes[1].m.cancelsReceived.Get(); got != 0 {
		t.Fatalf("%d cancels found a request", got)
	}

	bad := nodes[1].m.badFrames.Get()
	d := framing.Header{Type: framing.TypeDraining}
	if _, err := c.Write(framing.AppendHeader(nil, &d)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("connection not ended: %v", err)
	}
	if got := nodes[1].m.badFrames.Get() - bad; got != 1 {
		t.Fatalf("%d bad frames counted, want 1", got)
	}
	if nodes[0].peer(2).draining.Load() || nodes[1].draining.Load() {
		t.Fatal("a misdirected draining frame made someone draining")
	}
}

// TestOneWayCarriesNoDeadline: a one-way message's ctx bounds its sending
// only; its handler gets no deadline from it.
func TestOneWayCarriesNoDeadline(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	got := make(chan bool, 1)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{func(ctx context.Context, _ *Request, _ *Response) error {
		_, ok := ctx.Deadline()
		got <- ok
		return nil
	}}})
	if err := nodes[0].Send(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil); err != nil {
		t.Fatal(err)
	}
	if <-got {
		t.Fatal("one-way handler got the sender's deadline")
	}
}
