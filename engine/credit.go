package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/framing"
)

// Flow control (CI's throttling, which CI itself left unfinished).
//
// On a throttled channel the acceptor grants the dialler a window of bytes
// (a TypeCredit frame right after the handshake). The dialler spends a
// frame's cost (frameCost: its wire size, or its decompressed size when
// larger) from its credit before sending it and, when the credit
// is used up, waits for more, honouring its context. The acceptor returns
// credit only when a server handle has finished with a frame, so a slow
// service holds its senders back, and the bytes waiting for handles on one
// connection never exceed the window plus one frame: a frame may be sent
// while any credit is left, even one larger than the whole window, which
// then drives the credit negative until it is returned. The acceptor
// enforces it (spend): a frame sent with no credit left ends the
// connection.
//
// State is per connection, so a reconnect starts from a fresh grant and
// nothing granted on a dead connection is ever counted twice.

// sendCredit is the dialler's side.
//
// Waits are first come, first served. A sender that finds no credit
// queues, and a grant serves the queue from its head while credit lasts
// (the head may take more than is left, driving it negative, like any
// sender). The invariant that keeps newcomers from barging without a lock
// on the fast path: while anyone is queued, avail is at most 0. Credit
// only ever rises under mu, in addLocked, which in one compare-and-swap
// adds it and takes the cost of every waiter it serves; so a sender that
// sees avail > 0 knows nobody is waiting and spends it with a CAS, and
// one that sees avail <= 0 takes the lock and queues behind the others.
// Before, a grant woke every waiter at once and they raced each other and
// every newcomer for it, so the unlucky ones waited through many grants
// (the p99 of issue 10's throughput runs).
type sendCredit struct {
	avail  atomic.Int64 // bytes that may still be sent; sending is allowed while > 0, and it is <= 0 while anyone waits
	primed atomic.Bool  // the first grant arrived; waiting before it says nothing of the window

	mu         sync.Mutex
	head, tail *creditWaiter // senders waiting, in arrival order; guarded by mu
	queued     int           // length of the queue; guarded by mu
	free       *creditWaiter // waiters to reuse, so waiting allocates nothing once warm; guarded by mu
	closed     bool          // guarded by mu

	waits     *metrics.Counter // sends that had to wait for credit
	throttled *metrics.Counter // sends that gave up waiting (ErrThrottled)
}

// creditWaiter is one sender waiting for credit. Its fields are guarded by
// the sendCredit's mu, except that the waiter may read state once it has
// received from ready (the send happens after the write, under mu).
type creditWaiter struct {
	cost       int64
	state      waiterState
	ready      chan struct{} // capacity 1: one token when state leaves waiterQueued
	prev, next *creditWaiter
}

type waiterState uint8

const (
	waiterQueued  waiterState = iota
	waiterGranted             // its cost is taken from avail; it may send
	waiterClosed              // the connection closed; it fails
)

// acquire spends cost bytes, waiting while no credit is left or others
// wait before it. ctx nil means the caller cannot wait (an event loop): it
// spends regardless, and never queues. It reports whether it had to wait,
// which the frame then tells the receiver.
func (s *sendCredit) acquire(ctx context.Context, cost int64, c *conn) (waited bool, err error) {
	if ctx == nil {
		s.avail.Add(-cost)
		return false, nil
	}
	if s.trySpend(cost) {
		return false, nil
	}
	w, primed, err := s.enqueue(cost)
	if w == nil {
		return false, err
	}
	if primed {
		waited = true
		s.waits.Inc()
	}
	if c.reads != nil {
		// The grant comes on c: someone must be reading it.
		c.reads.awaitOther()
		defer c.reads.doneOther()
	}
	select {
	case <-w.ready:
		st := w.state
		s.release(w)
		if st == waiterClosed {
			return waited, errConnClosed
		}
		return waited, nil
	case <-ctx.Done():
		s.leave(w)
		s.throttled.Inc()
		return waited, fmt.Errorf("%w: no credit on %s to node %d: %w", ErrThrottled, c.channel, c.peer.num, ctx.Err())
	}
}

// trySpend is the fast path: credit left means nobody waits (the
// invariant above), so spending it barges past no one.
func (s *sendCredit) trySpend(cost int64) bool {
	for {
		cur := s.avail.Load()
		if cur <= 0 {
			return false
		}
		if s.avail.CompareAndSwap(cur, cur-cost) {
			return true
		}
	}
}

// enqueue queues a sender at the tail, or spends at once if credit came
// back meanwhile (then there is no queue either). It returns a nil waiter
// when it spent (err nil) or the connection is closed (errConnClosed), and
// whether the first grant had come (waiting before it says nothing of the
// window).
func (s *sendCredit) enqueue(cost int64) (_ *creditWaiter, primed bool, _ error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false, errConnClosed
	}
	if s.trySpend(cost) {
		return nil, false, nil
	}
	// avail <= 0 with mu held: it can only fall until we unlock, so the
	// next grant finds us queued.
	w := s.free
	if w != nil {
		s.free = w.next
	} else {
		w = &creditWaiter{ready: make(chan struct{}, 1)}
	}
	*w = creditWaiter{cost: cost, ready: w.ready, prev: s.tail}
	if s.tail != nil {
		s.tail.next = w
	} else {
		s.head = w
	}
	s.tail = w
	s.queued++
	return w, s.primed.Load(), nil
}

// leave is a waiter whose ctx ended. Still queued, it just leaves (credit
// is <= 0, so the ones behind it were not going to be served before the
// next grant anyway). Already granted (the grant and the ctx ended
// together), it had its cost taken: that goes back and serves the next in
// line, so nothing is lost or stranded: the caller gave up either way.
func (s *sendCredit) leave(w *creditWaiter) {
	s.mu.Lock()
	switch w.state {
	case waiterQueued:
		s.unlinkLocked(w)
	case waiterGranted:
		<-w.ready // the token sent with the grant
		s.addLocked(w.cost)
	case waiterClosed:
		<-w.ready
	}
	s.freeLocked(w)
	s.mu.Unlock()
}

// release recycles a waiter that was woken.
func (s *sendCredit) release(w *creditWaiter) {
	s.mu.Lock()
	s.freeLocked(w)
	s.mu.Unlock()
}

func (s *sendCredit) freeLocked(w *creditWaiter) {
	*w = creditWaiter{ready: w.ready, next: s.free}
	s.free = w
}

func (s *sendCredit) unlinkLocked(w *creditWaiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		s.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		s.tail = w.prev
	}
	w.prev, w.next = nil, nil
	s.queued--
}

// addLocked adds n bytes of credit and serves waiters from the head while
// any is left, in one CAS so that avail is never seen > 0 with anyone
// queued. Senders spending on the fast path or from event loops may move
// avail meanwhile; the CAS then fails and it counts again.
func (s *sendCredit) addLocked(n int64) {
	for {
		cur := s.avail.Load()
		next, k := cur+n, 0
		for w := s.head; w != nil && next > 0; w = w.next {
			next -= w.cost
			k++
		}
		if !s.avail.CompareAndSwap(cur, next) {
			continue
		}
		for ; k > 0; k-- {
			w := s.head
			s.unlinkLocked(w)
			w.state = waiterGranted
			w.ready <- struct{}{}
		}
		return
	}
}

// grant adds credit from a TypeCredit frame (or gives back what a send
// that never went out had taken) and serves the waiting senders in order.
func (s *sendCredit) grant(n int64) {
	s.mu.Lock()
	s.primed.Store(true)
	s.addLocked(n)
	s.mu.Unlock()
}

// close fails every waiting sender, and every later one that finds no
// credit.
func (s *sendCredit) close() {
	s.mu.Lock()
	s.closed = true
	for s.head != nil {
		w := s.head
		s.unlinkLocked(w)
		w.state = waiterClosed
		w.ready <- struct{}{}
	}
	s.mu.Unlock()
}

// recvCredit is the acceptor's side.
//
// The window starts at the configured size and widens, up to maxWindow,
// when it is what holds a transfer back: a sender that had to wait for
// credit says so in its next frame (framing.FlagStarved), and if the
// handlers had finished most of the window by then, the next grant
// doubles it. A slow handler never widens it, so the bound on what waits
// for handles stays what was granted.
type recvCredit struct {
	window    atomic.Int64 // current window
	maxWindow int64
	grow      atomic.Bool  // a starved sender found the handlers keeping up
	held      atomic.Int64 // bytes received and not yet finished by a handler
	pending   atomic.Int64 // finished bytes not yet returned to the sender
	granted   atomic.Int64 // total granted on this connection
	received  atomic.Int64 // total received on this connection, against granted (spend)
}

func newRecvCredit(window, maxWindow int) *recvCredit {
	r := &recvCredit{maxWindow: int64(max(window, maxWindow))}
	r.window.Store(int64(window))
	return r
}

// creditReturnFraction: credit goes back once a quarter of the window is
// finished, so a stream of small RPCs costs one credit frame per hundreds of
// requests, and a blocked sender (whose whole window is then finished)
// always gets it back.
const creditReturnFraction = 4

// admit accounts a request or message that arrived: its bytes against the
// connection's window, and the request against the peer's bounds on
// requests in flight, in number and in bytes (cost is frameCost). A false return means a
// bound was hit; the caller refuses the request and must still call
// finished.
func (c *conn) admit(cost int, h *framing.Header) bool {
	if r := c.recv; r != nil {
		held := r.held.Add(int64(cost)) - int64(cost)
		if h.Flags&framing.FlagStarved != 0 && held < r.window.Load()/2 {
			r.grow.Store(true)
		}
	}
	p := c.peer
	count := p.inflight.Add(1) <= int64(c.n.cfg.MaxInflightPerPeer)
	if !count {
		c.n.m.limitInflight.Inc()
	}
	bytes := p.inflightBytes.Add(int64(cost)) <= int64(c.n.cfg.MaxInflightBytesPerPeer)
	if count && !bytes {
		c.n.m.limitInflightBytes.Inc()
	}
	return count && bytes
}

// frameCost is what a frame costs in credit and in the bounds on bytes in
// flight, on both sides: its wire size, or for a compressed frame its
// decompressed size when that is larger — what the receiver will hold.
// Counting the wire size alone would let a window of 256 KiB admit
// gigabytes of decompression work (compression bombs).
func frameCost(h *framing.Header, payload int) int {
	if h.Flags.Compressed() {
		return framing.HeaderSize + max(payload, int(h.Aux))
	}
	return framing.HeaderSize + payload
}

// finished returns a frame's credit once its handler is done with it, and
// its place in the peer's bounds. Called from server handles and event
// loops alike, once per admit.
func (c *conn) finished(cost int) {
	c.peer.inflight.Add(-1)
	c.peer.inflightBytes.Add(-int64(cost))
	c.n.doneServing() // a draining node looks at the counts again
	r := c.recv
	if r == nil {
		return
	}
	r.held.Add(-int64(cost))
	w := r.window.Load()
	if r.pending.Add(int64(cost)) < w/creditReturnFraction {
		return
	}
	amt := r.pending.Swap(0)
	if amt <= 0 {
		return
	}
	if r.grow.Swap(false) && w < r.maxWindow {
		wider := min(2*w, r.maxWindow)
		if r.window.CompareAndSwap(w, wider) {
			amt += wider - w
		}
	}
	c.sendGrant(amt)
}

var errCreditExceeded = errors.New("sender exceeded the credit it was granted")

// spend checks a request or message against the credit granted on c: a
// sender may send while it has any credit left, so a frame that arrives
// when everything received already covers everything granted was sent
// with none. That is a protocol violation, not a slow reader's problem:
// the connection ends (and the overflow it would have caused never forms).
func (c *conn) spend(cost int) error {
	r := c.recv
	if r == nil {
		return nil
	}
	if r.received.Add(int64(cost))-int64(cost) >= r.granted.Load() {
		c.n.m.limitCredit.Inc()
		return fmt.Errorf("%w: %d bytes granted on %s", errCreditExceeded, r.granted.Load(), c.channel)
	}
	return nil
}

// sendGrant writes a credit frame; it never waits, as credit frames are
// themselves exempt from flow control.
func (c *conn) sendGrant(amt int64) {
	for amt > 0 {
		chunk := min(amt, 1<<31)
		h := framing.Header{Type: framing.TypeCredit, Aux: uint32(chunk)}
		// Counted before it goes out: the sender may spend it before send
		// returns here, and spend must already know.
		c.recv.granted.Add(chunk)
		if err := c.send(nil, &h, nil); err != nil {
			return // the connection is gone, and its credit with it
		}
		amt -= chunk
	}
}
