//go:build !race

// The race detector allocates: allocation tests run without it (make test
// runs them in a second, plain pass).

package engine

import (
	"context"
	"testing"
	"time"
)

// TestCallAllocs counts the allocations of one RPC, caller and server
// together (testing.AllocsPerRun counts the whole process), through a
// server handle and inline. A call from a ctx that cannot end allocates
// nothing. One from a ctx with a deadline, or one that can be cancelled,
// allocates exactly one object: the server's context for that request,
// which cannot be pooled (docs/ARCHITECTURE.md, "Handler contexts"). It
// was 5 (WithTimeout, its timer and cancel func, and a wrapper).
func TestCallAllocs(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, MinHandles: 1, MaxHandles: 4})
	inlineSvc := ServiceOn(ChanFirstService, 2)
	mustRegister(t, nodes[1], Service{ID: inlineSvc, Procs: []Handler{echo}, Inline: true})

	deadline, cancelDeadline := context.WithTimeout(context.Background(), time.Hour)
	defer cancelDeadline()
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	args, reply := make([]byte, 64), make([]byte, 0, 64)
	for _, svc := range []struct {
		name string
		id   ServiceID
	}{{"handles", echoSvc}, {"inline", inlineSvc}} {
		for _, tc := range []struct {
			name string
			ctx  context.Context
			want float64
		}{
			{"background", context.Background(), 0},
			{"deadline", deadline, 1},
			{"cancellable", cancellable, 1},
		} {
			m := Method{Service: svc.id}
			call := func() {
				if _, err := nodes[0].Call(tc.ctx, 2, m, args, reply[:0]); err != nil {
					t.Fatal(err)
				}
			}
			for range 100 {
				call() // dial, grow buffers and maps, fill the pools
			}
			if got := testing.AllocsPerRun(2000, call); got != tc.want {
				t.Errorf("%s/%s: %v allocations per call, want %v", svc.name, tc.name, got, tc.want)
			}
		}
	}
}

// TestPingAllocs: Ping, the info service's echo, allocates nothing at
// priority 0 or 1 from a ctx that cannot end, as any call does.
func TestPingAllocs(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	args, reply := make([]byte, 64), make([]byte, 0, 64)
	for _, prio := range []uint8{0, 1} {
		ctx := WithPriority(context.Background(), prio)
		ping := func() {
			if _, err := nodes[0].Ping(ctx, 2, args, reply[:0]); err != nil {
				t.Fatal(err)
			}
		}
		for range 100 {
			ping()
		}
		if got := testing.AllocsPerRun(2000, ping); got != 0 {
			t.Errorf("priority %d: %v allocations per ping, want 0", prio, got)
		}
	}
}

// TestHandlerWaitingOnDoneAllocs: a handler that watches ctx.Done (as a
// nested call does) adds one allocation, its done channel; the deadline
// timer comes from a pool.
func TestHandlerWaitingOnDoneAllocs(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, MinHandles: 1, MaxHandles: 4, Procs: []Handler{func(ctx context.Context, req *Request, resp *Response) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp.Body = append(resp.Body, req.Args...)
		return nil
	}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	args, reply := make([]byte, 64), make([]byte, 0, 64)
	call := func() {
		if _, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, args, reply[:0]); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		call()
	}
	if got := testing.AllocsPerRun(2000, call); got != 2 {
		t.Errorf("%v allocations per call, want 2 (the context and its done channel)", got)
	}
}

// TestCreditWaitAllocs: a sender that waits for credit, is queued and
// served by a grant allocates nothing once its connection has waited
// before (waiters are recycled), so a throttled channel under load stays
// allocation-free too.
func TestCreditWaitAllocs(t *testing.T) {
	s, c := newCreditForTest(0)
	start, done := make(chan struct{}), make(chan error)
	go func() {
		for range start {
			_, err := s.acquire(context.Background(), frameCostTest, c)
			done <- err
		}
	}()
	defer close(start)
	wait := func() {
		start <- struct{}{}
		waitQueued(s, 1)
		s.grant(frameCostTest)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	wait() // warm: the first wait makes the waiter
	if n := testing.AllocsPerRun(100, wait); n != 0 {
		t.Fatalf("a wait for credit allocates %v objects, want 0", n)
	}
}
