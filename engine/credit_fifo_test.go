package engine

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// Unit tests of the dialler's credit queue (sendCredit): who is served,
// in what order, and that credit is neither lost nor spent twice. They
// drive sendCredit directly, so each grant's effect is known exactly; the
// only waiting is on conditions (a waiter queued, a result arrived).

const frameCostTest = 100 // one frame's cost in these tests

// newCreditForTest is a dialler's credit after its first grant of n.
func newCreditForTest(n int64) (*sendCredit, *conn) {
	set := metrics.NewSet()
	s := &sendCredit{waits: set.NewCounter("waits"), throttled: set.NewCounter("throttled")}
	s.grant(n)
	return s, &conn{channel: ChanFirstService, peer: &peer{num: 2}}
}

type acquired struct {
	i      int
	waited bool
	err    error
}

// acquireAsync starts sender i and waits until it is queued (the queue is
// then want long), so arrival order is the order of the calls.
func acquireAsync(t *testing.T, s *sendCredit, c *conn, ctx context.Context, i int, cost int64, want int, out chan<- acquired) {
	t.Helper()
	go func() {
		waited, err := s.acquire(ctx, cost, c)
		out <- acquired{i, waited, err}
	}()
	waitQueued(s, want)
}

// queueSenders queues n senders of one frame's cost each, in order.
func queueSenders(t *testing.T, s *sendCredit, c *conn, n int) chan acquired {
	t.Helper()
	out := make(chan acquired, n)
	for i := range n {
		acquireAsync(t, s, c, context.Background(), i, frameCostTest, i+1, out)
	}
	return out
}

func waitQueued(s *sendCredit, n int) {
	for queuedLen(s) != n {
		runtime.Gosched()
	}
}

func queuedLen(s *sendCredit) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queued
}

func expectAvail(t *testing.T, s *sendCredit, want int64) {
	t.Helper()
	if got := s.avail.Load(); got != want {
		t.Fatalf("credit available: %d, want %d", got, want)
	}
}

func expectServed(t *testing.T, out <-chan acquired, want int) {
	t.Helper()
	r := <-out
	if r.err != nil || r.i != want || !r.waited {
		t.Fatalf("served sender %d (waited %v, err %v), want sender %d, waited, no error", r.i, r.waited, r.err, want)
	}
}

// TestCreditServedInArrivalOrder: N senders wait; grants of one frame's
// cost each serve them one at a time, in the order they came.
func TestCreditServedInArrivalOrder(t *testing.T) {
	const n = 16
	s, c := newCreditForTest(0)
	out := queueSenders(t, s, c, n)
	for i := range n {
		s.grant(frameCostTest)
		expectServed(t, out, i)
		expectAvail(t, s, 0)
		if q := queuedLen(s); q != n-1-i {
			t.Fatalf("after grant %d: %d waiting, want %d", i+1, q, n-1-i)
		}
	}
}

// TestCreditGrantServesWhileCreditLasts: one grant serves as many from
// the head as it covers, and the last of them may take more than is left
// (a frame may go while any credit is left), driving credit negative; the
// rest keep waiting, still in order.
func TestCreditGrantServesWhileCreditLasts(t *testing.T) {
	s, c := newCreditForTest(0)
	out := make(chan acquired, 5)
	costs := []int64{frameCostTest, frameCostTest, 10 * frameCostTest, frameCostTest, frameCostTest}
	for i, cost := range costs {
		acquireAsync(t, s, c, context.Background(), i, cost, i+1, out)
	}
	s.grant(2*frameCostTest + 1) // covers 0 and 1, and 1 byte of 2's cost
	served := map[int]bool{}
	for range 3 {
		r := <-out
		if r.err != nil {
			t.Fatalf("sender %d: %v", r.i, r.err)
		}
		served[r.i] = true
	}
	if !served[0] || !served[1] || !served[2] {
		t.Fatalf("served %v, want the first three", served)
	}
	expectAvail(t, s, 1-10*frameCostTest)
	if q := queuedLen(s); q != 2 {
		t.Fatalf("%d waiting, want 2", q)
	}
	s.grant(10*frameCostTest - 1) // back to 0: still nothing left to send on
	expectAvail(t, s, 0)
	if q := queuedLen(s); q != 2 {
		t.Fatalf("a grant leaving no credit served someone: %d waiting, want 2", q)
	}
	s.grant(1)
	expectServed(t, out, 3)
	s.grant(frameCostTest)
	expectServed(t, out, 4)
	expectAvail(t, s, 1-frameCostTest)
}

// TestCreditNoBarging: a sender that arrives while another waits queues
// behind it, and is served only after it, even when the grant that serves
// the first came after the newcomer arrived.
func TestCreditNoBarging(t *testing.T) {
	s, c := newCreditForTest(0)
	out := make(chan acquired, 3)
	acquireAsync(t, s, c, context.Background(), 0, frameCostTest, 1, out)
	acquireAsync(t, s, c, context.Background(), 1, frameCostTest, 2, out)
	s.grant(frameCostTest)
	expectServed(t, out, 0)
	if q := queuedLen(s); q != 1 {
		t.Fatalf("%d waiting, want the newcomer", q)
	}
	// Credit left after serving everyone is for whoever comes; with
	// someone waiting there is none (the newcomer below must queue).
	s.grant(frameCostTest + frameCostTest/2)
	expectServed(t, out, 1)
	expectAvail(t, s, frameCostTest/2)
	if _, err := s.acquire(context.Background(), frameCostTest, c); err != nil {
		t.Fatal(err) // credit left and nobody waiting: the fast path
	}
	expectAvail(t, s, -frameCostTest/2)
	acquireAsync(t, s, c, context.Background(), 2, frameCostTest, 1, out)
	s.grant(frameCostTest)
	expectServed(t, out, 2)
}

// TestCreditCancelInQueue: a waiter in the middle of the queue, and one
// at its head, give up; those behind them are still served in order, and
// no credit goes to the ones that left.
func TestCreditCancelInQueue(t *testing.T) {
	s, c := newCreditForTest(0)
	out := make(chan acquired, 4)
	ctxs := make([]context.CancelFunc, 4)
	for i := range 4 {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		acquireAsync(t, s, c, ctx, i, frameCostTest, i+1, out)
	}
	defer func() {
		for _, cancel := range ctxs {
			cancel()
		}
	}()
	expectThrottled := func(i int) {
		t.Helper()
		ctxs[i]()
		r := <-out
		if r.i != i || !errors.Is(r.err, ErrThrottled) || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("sender %d: %v, want sender %d throttled by its cancel", r.i, r.err, i)
		}
	}
	expectThrottled(1) // the middle
	waitQueued(s, 3)
	expectThrottled(0) // the head
	waitQueued(s, 2)
	expectAvail(t, s, 0)
	s.grant(frameCostTest)
	expectServed(t, out, 2)
	s.grant(frameCostTest)
	expectServed(t, out, 3)
	expectAvail(t, s, 0)
	if s.throttled.Get() != 2 {
		t.Fatalf("throttled counter %d, want 2", s.throttled.Get())
	}
}

// TestCreditCancelAsGranted: the head's ctx ends just as a grant serves
// it (the grant took its cost, and the waiter takes the ctx.Done branch).
// It leaves, and the credit it was handed goes on to the next in line:
// not lost (the next is served) and not spent twice (avail is exact).
func TestCreditCancelAsGranted(t *testing.T) {
	s, c := newCreditForTest(0)
	head, _, err := s.enqueue(frameCostTest) // the head, driven by hand
	if err != nil || head == nil {
		t.Fatalf("enqueue: %v, %v", head, err)
	}
	out := make(chan acquired, 1)
	acquireAsync(t, s, c, context.Background(), 1, frameCostTest, 2, out)
	s.grant(frameCostTest)
	if head.state != waiterGranted || queuedLen(s) != 1 {
		t.Fatalf("grant did not serve the head: state %d, %d waiting", head.state, queuedLen(s))
	}
	expectAvail(t, s, 0)
	s.leave(head) // what acquire does when ctx.Done wins the select
	expectServed(t, out, 1)
	expectAvail(t, s, 0)
	for w := s.free; w != nil; w = w.next {
		if len(w.ready) != 0 {
			t.Fatal("a recycled waiter kept its grant's token")
		}
	}
	// A waiter that leaves with no one behind it gives the credit back.
	head, _, _ = s.enqueue(frameCostTest)
	s.grant(frameCostTest / 2)
	expectAvail(t, s, frameCostTest/2-frameCostTest)
	s.leave(head)
	expectAvail(t, s, frameCostTest/2)
}

// TestCreditCloseFailsWaiters: closing the connection fails every waiter
// with errConnClosed, and a later sender that finds no credit too.
func TestCreditCloseFailsWaiters(t *testing.T) {
	const n = 8
	s, c := newCreditForTest(0)
	out := queueSenders(t, s, c, n)
	s.close()
	for range n {
		if r := <-out; !errors.Is(r.err, errConnClosed) {
			t.Fatalf("sender %d: %v, want errConnClosed", r.i, r.err)
		}
	}
	if q := queuedLen(s); q != 0 {
		t.Fatalf("%d still queued after close", q)
	}
	if _, err := s.acquire(context.Background(), frameCostTest, c); !errors.Is(err, errConnClosed) {
		t.Fatalf("acquire after close: %v, want errConnClosed", err)
	}
	expectAvail(t, s, 0)
}

// TestCreditEventLoopNeverWaits: a caller that cannot wait (ctx nil)
// spends even with others queued and no credit left, and never queues.
func TestCreditEventLoopNeverWaits(t *testing.T) {
	s, c := newCreditForTest(0)
	out := make(chan acquired, 1)
	acquireAsync(t, s, c, context.Background(), 0, frameCostTest, 1, out)
	if waited, err := s.acquire(nil, frameCostTest, c); err != nil || waited { //nolint:staticcheck // nil is the event loop's ctx
		t.Fatalf("event loop acquire: waited %v, err %v", waited, err)
	}
	expectAvail(t, s, -frameCostTest)
	if q := queuedLen(s); q != 1 {
		t.Fatalf("%d waiting, want 1", q)
	}
	s.grant(frameCostTest + 1)
	expectServed(t, out, 0)
	expectAvail(t, s, 1-frameCostTest)
}

// TestCreditAccountingUnderChurn: many senders of random costs, a third
// of which give up at random moments, event-loop spends and grants all
// race. Whatever the interleaving, the credit left is exactly what was
// granted less what the senders that succeeded spent: nothing handed to a
// sender that left is lost or spent twice, and no sender is stranded.
func TestCreditAccountingUnderChurn(t *testing.T) {
	const senders = 200
	s, c := newCreditForTest(0)
	var granted, spent atomic.Int64
	var done atomic.Int32
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	for i := range senders {
		cost := 1 + rng.Int64N(3*frameCostTest)
		ctx, cancel := context.WithCancel(context.Background())
		giveUp := i%3 == 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer done.Add(1)
			defer cancel()
			if i%10 == 0 {
				s.acquire(nil, cost, c) //nolint:errcheck,staticcheck // never fails
				spent.Add(cost)
				return
			}
			if giveUp {
				go cancel() // a cancel racing the grants
			}
			_, err := s.acquire(ctx, cost, c)
			switch {
			case err == nil:
				spent.Add(cost)
			case !giveUp || !errors.Is(err, ErrThrottled):
				t.Errorf("sender %d: %v", i, err)
			}
		}()
	}
	for done.Load() < senders {
		n := 1 + rng.Int64N(2*frameCostTest)
		granted.Add(n)
		s.grant(n)
		runtime.Gosched()
	}
	wg.Wait()
	expectAvail(t, s, granted.Load()-spent.Load())
	if q := queuedLen(s); q != 0 {
		t.Fatalf("%d still queued", q)
	}
}

// BenchmarkCreditAcquireFast is the path every send on a throttled
// channel takes while credit lasts: nobody waits, so a CAS, from all Ps.
func BenchmarkCreditAcquireFast(b *testing.B) {
	s, c := newCreditForTest(1 << 62)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.acquire(ctx, frameCostTest, c); err != nil {
				b.Fatal(err)
			}
		}
	})
}
