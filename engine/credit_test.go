package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

var throttledSvc = ServiceOn(ChanFirstService, 1)

// TestEscalationPreventsDeadlock is the deadlock CI's documentation
// describes. Node 2 has filled its window towards node 1's service with
// messages node 1 cannot serve yet. Node 1 calls node 2, whose handler calls
// back into node 1's same service. Escalated to priority 1, the nested call
// skips the full channel and node 1's busy handles, and everything
// completes; without escalation it waits for credit that only the outer
// call's completion would free: stuck until the deadline.
func TestEscalationPreventsDeadlock(t *testing.T) {
	for _, escalate := range []bool{true, false} {
		t.Run(fmt.Sprintf("escalation=%v", escalate), func(t *testing.T) {
			nodes := startCluster(t, 2, func(c *Config) {
				c.ChannelWindows = map[Channel]int{ChanFirstService: 4096}
				c.DisableEscalation = !escalate
			})
			a, b := nodes[0], nodes[1]
			gate := make(chan struct{})
			var openGate sync.Once
			t.Cleanup(func() { openGate.Do(func() { close(gate) }) })
			nested := make(chan error, 1)
			seenPrio := make(chan uint8, 1)
			procs := []Handler{
				0: func(ctx context.Context, _ *Request, _ *Response) error { // hold
					select {
					case <-gate:
					case <-ctx.Done():
					}
					return nil
				},
				1: func(ctx context.Context, req *Request, resp *Response) error { // call back
					_, err := b.Call(ctx, req.From, Method{Service: throttledSvc, Proc: 2}, []byte("nested"), nil)
					nested <- err
					return err
				},
				2: func(ctx context.Context, req *Request, resp *Response) error { // echo, noting the priority
					select {
					case seenPrio <- PriorityFrom(ctx):
					default:
					}
					resp.Body = append(resp.Body, req.Args...)
					return nil
				},
			}
			mustRegister(t, a, Service{ID: throttledSvc, Procs: procs, MaxHandles: 1})
			mustRegister(t, b, Service{ID: throttledSvc, Procs: procs, MaxHandles: 4})
			// Connect every channel the test uses first: the short deadlines
			// below are about credit, and must not also cover a dial.
			for _, c := range []struct {
				from *Node
				to   NodeNum
				prio uint8
			}{{b, 1, 0}, {a, 2, 0}, {b, 1, 1}} {
				if _, err := c.from.Call(WithPriority(ctxFor(t, 10*time.Second), c.prio), c.to, Method{Service: throttledSvc, Proc: 2}, nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			for len(seenPrio) > 0 {
				<-seenPrio
			}

			// Fill node 2's window towards node 1: the first hold takes node 1's
			// only handle, the rest wait with their credit unreturned.
			sent := 0
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				err := b.Send(ctx, 1, Method{Service: throttledSvc, Proc: 0}, make([]byte, 1000))
				cancel()
				if errors.Is(err, ErrThrottled) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if sent++; sent > 100 {
					t.Fatal("window never filled")
				}
			}

			// With escalation the call succeeds, so a generous deadline costs
			// nothing; without, the test waits it out.
			wait := 10 * time.Second
			if !escalate {
				wait = time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			got, err := a.Call(ctx, 2, Method{Service: throttledSvc, Proc: 1}, nil, nil)
			if escalate {
				if err != nil {
					t.Fatalf("with escalation the call failed: %v", err)
				}
				if e := <-nested; e != nil {
					t.Fatalf("nested call: %v", e)
				}
				if p := <-seenPrio; p != 1 {
					t.Fatalf("nested call served at priority %d, want 1", p)
				}
				_ = got
				return
			}
			if !errors.Is(err, ErrTimedOut) {
				t.Fatalf("without escalation: got %v, want the deadline (ErrTimedOut)", err)
			}
			// The caller gave up, so its handler's ctx ends (its deadline,
			// which is the caller's, or the caller's cancel frame, whichever
			// is first), and with it the nested call still waiting for
			// credit: nothing stays stuck behind a caller that has gone.
			select {
			case e := <-nested:
				if !errors.Is(e, ErrThrottled) || (!errors.Is(e, context.Canceled) && !errors.Is(e, context.DeadlineExceeded)) {
					t.Fatalf("nested call: %v, want ErrThrottled from the cancelled handler ctx", e)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("nested call still stuck after its caller gave up")
			}
			openGate.Do(func() { close(gate) })
		})
	}
}

// TestBoundedReceiveMemory: a fast sender, a slow handler. The receiver
// never holds more than its window plus one frame, the sender waits for
// credit, and once the handler speeds up every message arrives, in order.
func TestBoundedReceiveMemory(t *testing.T) {
	const window = 16 << 10
	const msgSize = 1000
	const total = 200
	nodes := startCluster(t, 2, func(c *Config) { c.ChannelWindows = map[Channel]int{ChanFirstService: window} })
	gate := make(chan struct{})
	var mu sync.Mutex
	var order []int
	mustRegister(t, nodes[1], Service{ID: throttledSvc, MaxHandles: 1, Procs: []Handler{func(_ context.Context, req *Request, _ *Response) error {
		<-gate
		mu.Lock()
		order = append(order, int(req.Args[0])|int(req.Args[1])<<8)
		mu.Unlock()
		return nil
	}}})
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; i < total; i++ {
			msg := make([]byte, msgSize)
			msg[0], msg[1] = byte(i), byte(i>>8)
			if err := nodes[0].Send(context.Background(), 2, Method{Service: throttledSvc}, msg); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	held := func() int64 {
		var h int64
		p := nodes[1].peer(1)
		p.mu.Lock()
		for c := range p.inbound {
			if c.recv != nil {
				h += c.recv.held.Load()
			}
		}
		p.mu.Unlock()
		return h
	}
	// The sender blocks once the window is spent.
	eventually(t, "sender waiting for credit", func() bool {
		return metricValue(t, nodes[0], "ci_ics_credit_waits_total", "node=1", "peer=2", "channel="+ChanFirstService.String()) > 0
	})
	limit := int64(window + framing.HeaderSize + msgSize)
	for i := 0; i < 20; i++ { // sample while the sender pushes against the window
		if h := held(); h > limit {
			t.Fatalf("receiver holds %d bytes, more than window+frame %d", h, limit)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-sendErr:
		t.Fatalf("sender finished (%v) although the handler is stalled", err)
	default:
	}
	close(gate)
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	eventually(t, "all messages served", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == total })
	for i, v := range order {
		if v != i {
			t.Fatalf("message %d served as %d-th: order lost", v, i)
		}
	}
	eventually(t, "credit all returned", func() bool { return held() == 0 })
}

// TestFrameLargerThanWindow: a frame bigger than the whole window still goes
// through (sent while any credit is left), and the credit recovers after.
func TestFrameLargerThanWindow(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.ChannelWindows = map[Channel]int{ChanFirstService: 4096} })
	mustRegister(t, nodes[1], Service{ID: throttledSvc, Procs: []Handler{echo}})
	big := bytes.Repeat([]byte("x"), 100_000)
	for i := 0; i < 3; i++ {
		got, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: throttledSvc}, big, nil)
		if err != nil || len(got) != len(big) {
			t.Fatalf("call %d: %d bytes, %v", i, len(got), err)
		}
	}
	c := nodes[0].peer(2).out[ChanFirstService].Load()
	eventually(t, "credit recovered", func() bool { return c.credit.avail.Load() > 4096-4096/creditReturnFraction })
}

// TestCreditsAcrossReconnect: a new connection starts from a fresh grant;
// nothing granted on the old one is counted again or lost.
func TestCreditsAcrossReconnect(t *testing.T) {
	const window = 8192
	nodes := startCluster(t, 2, func(c *Config) { c.ChannelWindows = map[Channel]int{ChanFirstService: window} })
	mustRegister(t, nodes[1], Service{ID: throttledSvc, Procs: []Handler{echo}, MaxHandles: 2})
	call := func() {
		t.Helper()
		for i := 0; i < 50; i++ {
			if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: throttledSvc}, make([]byte, 500), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	call()
	old := nodes[0].peer(2).out[ChanFirstService].Load()
	nodes[0].NodeDown(2, errors.New("test"))
	oldCredit := old.credit.avail.Load()
	nodes[0].NodeUp(2)
	eventually(t, "node 2 sees the old link gone", func() bool {
		p := nodes[1].peer(1)
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.inbound {
			if c.channel == ChanFirstService {
				return false
			}
		}
		return true
	})
	eventually(t, "calls work again", func() bool {
		_, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: throttledSvc}, []byte("x"), nil)
		return err == nil
	})
	call()
	c := nodes[0].peer(2).out[ChanFirstService].Load()
	if c == old {
		t.Fatal("no new connection after the link went down")
	}
	// Idle again, every byte of the window is accounted for exactly once:
	// spendable by the sender, or finished but not yet returned (returns go
	// in quarter-window steps).
	p := nodes[1].peer(1)
	account := func() (avail, held, pending, granted int64) {
		p.mu.Lock()
		defer p.mu.Unlock()
		for rc := range p.inbound {
			if rc.channel == ChanFirstService {
				held += rc.recv.held.Load()
				pending += rc.recv.pending.Load()
				granted += rc.recv.window.Load()
			}
		}
		return c.credit.avail.Load(), held, pending, granted
	}
	// The oracle is the receiver's current window, not the configured one:
	// on a loaded machine the first calls on the new connection can find
	// the sender starved for a moment and the window widened, which is
	// allowed; what must hold is that every byte of whatever window is in
	// force is accounted for once.
	eventually(t, "window accounted for", func() bool {
		avail, held, pending, granted := account()
		return held == 0 && granted >= window && avail+pending == granted
	})
	if avail, _, pending, granted := account(); pending >= granted/creditReturnFraction || avail <= 0 {
		t.Fatalf("idle sender has %d credit with %d unreturned", avail, pending)
	}
	if got := old.credit.avail.Load(); got != oldCredit {
		t.Fatalf("old connection's credit went from %d to %d after it closed", oldCredit, got)
	}
}

func TestPriorityRouting(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	prios := make(chan uint8, 10)
	mustRegister(t, nodes[1], Service{ID: throttledSvc, Procs: []Handler{func(ctx context.Context, req *Request, resp *Response) error {
		prios <- req.Priority
		if PriorityFrom(ctx) != req.Priority {
			t.Errorf("ctx priority %d, request %d", PriorityFrom(ctx), req.Priority)
		}
		return nil
	}}})
	for _, p := range []uint8{0, 1, 3, 4, 9} {
		ctx := WithPriority(ctxFor(t, 5*time.Second), p)
		if _, err := nodes[0].Call(ctx, 2, Method{Service: throttledSvc}, nil, nil); err != nil {
			t.Fatal(err)
		}
		want := min(p, framing.MaxPriority)
		if got := <-prios; got != want {
			t.Fatalf("sent at %d, served at %d", want, got)
		}
		if want > 0 && nodes[0].peer(2).out[ChanPrio1+Channel(want-1)].Load() == nil {
			t.Fatalf("priority %d did not use its priority channel", want)
		}
	}
	for ch := range nodes[1].peer(1).out {
		if nodes[1].peer(1).out[ch].Load() != nil {
			t.Fatalf("node 2 dialled %s to reply: replies travel back on their request's connection", Channel(ch))
		}
	}
}

// TestWindowWidensForStarvedSender: a stream the window holds back (fast
// handler, credit running out) widens the window up to MaxCreditWindow; a
// stalled handler never widens it (TestBoundedReceiveMemory).
func TestWindowWidensForStarvedSender(t *testing.T) {
	const window, maxWindow = 16 << 10, 128 << 10
	nodes := startCluster(t, 2, func(c *Config) {
		c.ChannelWindows = map[Channel]int{ChanFirstService: window}
		c.MaxCreditWindow = maxWindow
	})
	mustRegister(t, nodes[1], Service{ID: throttledSvc, MaxHandles: 4, Procs: []Handler{func(context.Context, *Request, *Response) error { return nil }}})
	msg := make([]byte, 8<<10)
	var widest int64
	for i := 0; i < 2000 && widest < maxWindow; i++ {
		if err := nodes[0].Send(ctxFor(t, 10*time.Second), 2, Method{Service: throttledSvc}, msg); err != nil {
			t.Fatal(err)
		}
		p := nodes[1].peer(1)
		p.mu.Lock()
		for c := range p.inbound {
			if c.recv != nil {
				widest = max(widest, c.recv.window.Load())
			}
		}
		p.mu.Unlock()
	}
	if widest <= window {
		t.Fatalf("window stayed at %d under a starved stream", widest)
	}
	if widest > maxWindow {
		t.Fatalf("window widened to %d, past MaxCreditWindow %d", widest, maxWindow)
	}
}
