package engine

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// TestRequestContextStaleTimersAndCancels churns request contexts on one
// connection as fast as the machine allows: short-lived ones whose pooled
// deadline timers fire around the moment they are given back, and
// long-lived ones that pick those timers up again; cancels that arrive for
// requests already retired, and cancels for live ones. Exact oracles: no
// long-lived context (nor a child of it) ends before it is retired, every
// stale cancel finds nothing, every live one is counted once and ends its
// context with Canceled, and every child and AfterFunc ends with it.
func TestRequestContextStaleTimersAndCancels(t *testing.T) {
	n := startCluster(t, 1, nil)[0]
	c := &conn{n: n}
	const workers, rounds = 4, 300
	cancels := make(chan uint64, workers*rounds)
	var cancellerDone sync.WaitGroup
	cancellerDone.Add(1)
	go func() { // the loop's side: TypeCancel frames, some late
		defer cancellerDone.Done()
		for xid := range cancels {
			n.cancelRequest(c, xid)
		}
	}()
	var wrong atomic.Int64 // contexts that ended early or with the wrong error
	var liveCancels atomic.Int64
	report := func(format string, args ...any) {
		if wrong.Add(1) <= 5 {
			t.Errorf(format, args...)
		}
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range uint64(rounds) {
				base := uint64(w+1)<<32 | k<<2
				// Short-lived: a deadline of 0-30µs, a pooled timer armed by
				// Done, retired at about the time it fires.
				h := framing.Header{Type: framing.TypeRequest, XID: base, Flags: framing.FlagCancellable | framing.FlagDeadline, Status: framing.EncodeTimeout(time.Duration(rand.IntN(30)) * time.Microsecond)}
				short := n.requestContext(c, &h)
				sd := short.Done()
				if k%2 == 0 {
					<-sd // it ends by its timer (or by Err's clock)
					if err := short.Err(); err != context.DeadlineExceeded {
						report("short context ended with %v", err)
					}
				} // else retired at once, its timer firing about now
				n.requestDone(c, short)
				if err := short.Err(); err != context.DeadlineExceeded && err != context.Canceled {
					report("retired short context: %v", err)
				}
				cancels <- base // stale: retired already

				// Long-lived: picks up a recycled timer whose firing for
				// the short one may still be on its way.
				h = framing.Header{Type: framing.TypeRequest, XID: base + 1, Flags: framing.FlagCancellable | framing.FlagDeadline, Status: framing.EncodeTimeout(time.Hour)}
				long := n.requestContext(c, &h)
				done := long.Done()
				long.mu.Lock()
				tm := long.timer
				long.mu.Unlock()
				// What a firing for the timer's previous owner does when it
				// runs late (Stop cannot recall one already started): the
				// churn above makes such firings, this makes one for sure.
				tm.fire()
				child, cancelChild := context.WithCancel(long)
				afterRan := make(chan struct{})
				stop := context.AfterFunc(long, func() { close(afterRan) })
				for range 3 {
					runtime.Gosched()
				}
				select {
				case <-done:
					report("long context ended before its request: %v", long.Err())
				default:
				}
				if long.Err() != nil || child.Err() != nil {
					report("long context or its child ended early: %v, %v", long.Err(), child.Err())
				}
				live := k%4 == 0
				if live {
					cancels <- base + 1 // a cancel that finds its request
					<-done
				}
				if gone := n.requestDone(c, long); gone != live {
					report("request %x: caller gone %v, want %v", base+1, gone, live)
				}
				<-child.Done()
				<-afterRan
				if err := child.Err(); !errors.Is(err, context.Canceled) {
					report("child ended with %v", err)
				}
				if stop() {
					report("AfterFunc stopped after it ran")
				}
				cancelChild()
				if live {
					liveCancels.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(cancels)
	cancellerDone.Wait()
	if got, want := int64(n.m.cancelsReceived.Get()), liveCancels.Load(); got != want {
		t.Errorf("%d cancels found a request, want %d (the live ones)", got, want)
	}
	if len(c.cancels) != 0 {
		t.Errorf("%d requests still registered", len(c.cancels))
	}
	n.rcMu.Lock()
	defer n.rcMu.Unlock()
	if n.rcWatched != nil {
		t.Error("a retired context is still in the node's watched list")
	}
}

// TestCancelStressOverTheWire: callers on two goroutines mix calls with a
// long deadline (must succeed, their handler's ctx never ends early), a
// deadline too short for the handler (which waits on ctx.Done: the
// server's pooled timer or the caller's cancel ends it) and calls
// cancelled while running. Each handler leaves a goroutine that watches
// ctx after it returned, which must find it ended.
func TestCancelStressOverTheWire(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	var early, afterReturn, runs atomic.Int64
	var watchers sync.WaitGroup
	var started [2]chan struct{} // per caller: which of its calls' handler runs
	for i := range started {
		started[i] = make(chan struct{}, 1)
	}
	mustRegister(t, nodes[1], Service{ID: echoSvc, MinHandles: 2, MaxHandles: 16, Procs: []Handler{
		func(ctx context.Context, req *Request, resp *Response) error { // long deadline: must not end
			runs.Add(1)
			d := ctx.Done()
			for range 3 {
				runtime.Gosched()
			}
			select {
			case <-d:
				early.Add(1)
			default:
			}
			watchers.Add(1)
			go func() { // outlives the handler: ctx ends when it returns
				defer watchers.Done()
				<-ctx.Done()
				if ctx.Err() == nil {
					afterReturn.Add(1)
				}
			}()
			resp.Body = append(resp.Body, req.Args...)
			return nil
		},
		func(ctx context.Context, _ *Request, _ *Response) error { // waits to be timed out (or cancelled)
			runs.Add(1)
			<-ctx.Done()
			if err := ctx.Err(); err != context.Canceled && err != context.DeadlineExceeded {
				afterReturn.Add(1)
			}
			return ctx.Err()
		},
		func(ctx context.Context, req *Request, _ *Response) error { // waits to be cancelled
			runs.Add(1)
			started[req.Args[0]] <- struct{}{}
			<-ctx.Done()
			if ctx.Err() != context.Canceled {
				afterReturn.Add(1)
			}
			return ctx.Err()
		},
	}})
	// Warm the connections: the short deadlines must not cover a dial.
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("w"), nil); err != nil {
		t.Fatal(err)
	}
	const callers, rounds = len(started), 150
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for caller := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range rounds {
				switch k % 3 {
				case 0:
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					got, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, []byte{byte(k)}, nil)
					cancel()
					if err != nil || len(got) != 1 || got[0] != byte(k) {
						errs <- errors.Join(errors.New("long call"), err)
						return
					}
				case 1:
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(100+rand.IntN(400))*time.Microsecond)
					_, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 1}, nil, nil)
					cancel()
					if !errors.Is(err, ErrTimedOut) {
						errs <- errors.Join(errors.New("short call"), err)
						return
					}
				case 2:
					ctx, cancel := context.WithCancel(context.Background())
					f := nodes[0].Go(ctx, 2, Method{Service: echoSvc, Proc: 2}, []byte{byte(caller)})
					<-started[caller]
					cancel()
					if _, err := f.Wait(); !errors.Is(err, ErrIntr) {
						errs <- errors.Join(errors.New("cancelled call"), err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	watchers.Wait()
	if e, a := early.Load(), afterReturn.Load(); e != 0 || a != 0 {
		t.Fatalf("of %d handler runs: %d saw their ctx end early, %d saw it wrong after return", runs.Load(), e, a)
	}
	// Every handler has returned once the server's contexts are all
	// retired: none may stay in the watched list.
	eventually(t, "every request context retired", func() bool {
		nodes[1].rcMu.Lock()
		defer nodes[1].rcMu.Unlock()
		return nodes[1].rcWatched == nil
	})
}

// TestCloseEndsWatchedRequestContexts: Close ends the request contexts
// somebody waits on even when no connection holds them (a one-way message
// with a deadline is not registered for cancels), and one first watched
// after Close has ended already.
func TestCloseEndsWatchedRequestContexts(t *testing.T) {
	n := startCluster(t, 1, nil)[0]
	c := &conn{n: n}
	h := framing.Header{Type: framing.TypeOneWay, Flags: framing.FlagDeadline, Status: framing.EncodeTimeout(time.Hour)}
	watched := make([]*reqCtx, 3)
	for i := range watched {
		watched[i] = n.requestContext(c, &h)
		watched[i].Done()
	}
	unwatched := n.requestContext(c, &h)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for i, rc := range watched {
		select {
		case <-rc.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("watched context %d not ended by Close", i)
		}
		if err := rc.Err(); err != context.Canceled {
			t.Fatalf("watched context %d ended with %v, want Canceled", i, err)
		}
	}
	select {
	case <-unwatched.Done():
	default:
		t.Fatal("a context first watched after Close is still open")
	}
	if err := unwatched.Err(); err != context.Canceled {
		t.Fatalf("context watched after Close: %v, want Canceled", err)
	}
	if n.rcWatched != nil {
		t.Fatal("Close left contexts in the watched list")
	}
}
