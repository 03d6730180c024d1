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
type sendCredit struct {
	avail  atomic.Int64 // bytes that may still be sent; sending is allowed while > 0
	primed atomic.Bool  // the first grant arrived; waiting before it says nothing of the window

	mu     sync.Mutex
	wake   chan struct{} // closed when credit arrives or the connection closes; guarded by mu
	closed bool          // guarded by mu

	waits     *metrics.Counter // sends that had to wait for credit
	throttled *metrics.Counter // sends that gave up waiting (ErrThrottled)
}

// acquire spends cost bytes, waiting while no credit is left. ctx nil
// means the caller cannot wait (an event loop): it spends regardless. It
// reports whether it had to wait, which the frame then tells the receiver.
func (s *sendCredit) acquire(ctx context.Context, cost int64, c *conn) (waited bool, err error) {
	for {
		cur := s.avail.Load()
		if cur > 0 || ctx == nil {
			if s.avail.CompareAndSwap(cur, cur-cost) {
				return waited, nil
			}
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return waited, errConnClosed
		}
		if s.avail.Load() > 0 {
			s.mu.Unlock()
			continue
		}
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		wake := s.wake
		s.mu.Unlock()
		if !waited && s.primed.Load() {
			waited = true
			s.waits.Inc()
		}
		select {
		case <-wake:
		case <-ctx.Done():
			s.throttled.Inc()
			return waited, fmt.Errorf("%w: no credit on %s to node %d: %w", ErrThrottled, c.channel, c.peer.num, ctx.Err())
		}
	}
}

// grant adds credit from a TypeCredit frame and wakes the waiting senders.
func (s *sendCredit) grant(n int64) {
	s.avail.Add(n)
	s.primed.Store(true)
	s.mu.Lock()
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
	s.mu.Unlock()
}

// close wakes every waiting sender for good.
func (s *sendCredit) close() {
	s.mu.Lock()
	s.closed = true
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
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
