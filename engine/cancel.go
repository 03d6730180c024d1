package engine

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// Deadlines and cancellation (issue 9 point 1).
//
// A caller whose ctx can end marks its request FlagCancellable, and one
// whose ctx has a deadline sends its time left (FlagDeadline, the header's
// status field). Such a request's handler runs with a reqCtx built for it
// alone, with that deadline; when the caller gives up (deadline, cancel) it
// sends a TypeCancel for the xid on the connection the request went on,
// and the server cancels the reqCtx and drops the reply. A request from a
// ctx that cannot end (context.Background) has neither flag and costs
// nothing of this: it runs with the node's shared per-priority context.
//
// What a reqCtx costs: one allocation, itself (docs/ARCHITECTURE.md,
// "Handler contexts", says why it cannot be pooled). Everything else is
// lazy: its done channel is made only when somebody calls Done, a timer
// (from a pool) is armed only then, and only a ctx somebody watches is
// linked where Close can find it. A handler that never looks at ctx.Done
// (the common case) gets its deadline checked by Err, against the clock.

// reqCtx is the context of one cancellable or deadline-bearing request.
// It is never reused, so a handler may hand it to goroutines, timers and
// context.AfterFunc children that outlive it without racing a later
// request; it is cancelled when the handler returns.
//
// It implements the context package's afterFuncer interface (AfterFunc),
// so that context.WithCancel, WithTimeout and AfterFunc on it register a
// callback here instead of starting a goroutine per child.
type reqCtx struct {
	n             *Node
	deadline      time.Time // zero: none
	xid           uint64
	prio          priorityValue // with inHandlerBit; boxing a byte never allocates
	registered    bool          // in its connection's cancels, so a TypeCancel can find it
	peerCancelled atomic.Bool   // a TypeCancel came: the caller has gone, so no reply

	mu      sync.Mutex
	err     error          // set once, by cancel
	done    chan struct{}  // made by Done; closedChan if it ended first
	watched bool           // linked in the node's watched list (Close cancels it)
	timer   *deadlineTimer // armed while watched, if there is a deadline
	funcs   []afterFunc    // AfterFunc callbacks not yet run or stopped
	nextID  uint64

	prev, next *reqCtx // the node's watched list; guarded by Node.rcMu
}

type afterFunc struct {
	id uint64
	f  func()
}

// closedChan is the done channel of a reqCtx that ended before anybody
// asked for one.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *reqCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

func (c *reqCtx) Value(key any) any {
	if _, ok := key.(priorityKey); ok {
		return c.prio
	}
	return c.n.ctx.Value(key)
}

// Err reports why the context ended. The deadline is checked here against
// the clock, so that no timer is needed while nobody waits on Done; once
// Err has said DeadlineExceeded (or Canceled), it always does.
func (c *reqCtx) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	switch {
	case c.n.ctx.Err() != nil:
		c.cancel(context.Canceled)
	case c.expired():
		c.cancel(context.DeadlineExceeded)
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err // whoever cancelled first decided it
}

// expired reports whether the deadline has passed.
func (c *reqCtx) expired() bool {
	return !c.deadline.IsZero() && !time.Now().Before(c.deadline)
}

// Done makes the done channel on first use, and from then on the context
// is watched: a timer ends it at the deadline, Close ends it too.
func (c *reqCtx) Done() <-chan struct{} {
	c.mu.Lock()
	if c.done == nil {
		if c.err != nil {
			c.done = closedChan
		} else {
			c.done = make(chan struct{})
		}
	}
	d := c.done
	ok := c.watchLocked()
	c.mu.Unlock()
	if !ok {
		c.cancelNow()
	}
	return d
}

// AfterFunc is the context package's afterFuncer: f runs in its own
// goroutine when c ends (at once if it has), unless stop is called first.
func (c *reqCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	ok := c.watchLocked()
	c.nextID++
	id := c.nextID
	c.funcs = append(c.funcs, afterFunc{id, f})
	c.mu.Unlock()
	if !ok {
		c.cancelNow()
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range c.funcs {
			if c.funcs[i].id == id {
				c.funcs = slices.Delete(c.funcs, i, i+1)
				return true
			}
		}
		return false // already run, or stopped before
	}
}

// watchLocked links c where Close finds it and arms its deadline timer, once;
// false means c must end now (the node closed, or the deadline passed).
// Called with c.mu held, on a context that has not ended.
func (c *reqCtx) watchLocked() bool {
	if c.watched || c.err != nil {
		return true
	}
	if c.expired() || !c.n.watch(c) {
		return false
	}
	c.watched = true
	if !c.deadline.IsZero() {
		c.timer = armTimer(c, time.Until(c.deadline))
	}
	return true
}

// cancelNow ends c with the reason the clock or the node gives.
func (c *reqCtx) cancelNow() {
	if c.expired() {
		c.cancel(context.DeadlineExceeded)
	} else {
		c.cancel(context.Canceled)
	}
}

// cancel ends c with err, once: closes its done channel, starts its
// AfterFunc callbacks, and gives back its timer and its place in the
// node's watched list.
func (c *reqCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done == nil {
		c.done = closedChan
	} else {
		close(c.done)
	}
	funcs, t := c.funcs, c.timer
	c.funcs, c.timer = nil, nil
	if c.watched {
		// Unlinked before c.mu is let go (c.mu before rcMu, as in
		// watchLocked): whoever sees c ended also finds it gone from the
		// list. Unlinked after, a deadline timer's cancel could still be
		// on its way to the list when the handler's requestDone had
		// returned (a stress test saw one left there).
		c.n.unwatch(c)
	}
	c.mu.Unlock()
	for _, a := range funcs {
		go a.f()
	}
	if t != nil {
		t.release()
	}
}

// expire is the deadline timer's: it ends c only if c's deadline has
// really passed. A timer fires late, or after its owner ended, never early;
// but checking the clock here, rather than trusting the firing, is what
// makes a stale firing harmless whatever it finds.
func (c *reqCtx) expire() {
	if c.expired() {
		c.cancel(context.DeadlineExceeded)
	}
}

// deadlineTimer is a reusable timer for watched reqCtxs: pooled, so that a
// handler that waits on ctx.Done does not make a timer per request.
type deadlineTimer struct {
	t  *time.Timer
	mu sync.Mutex
	c  *reqCtx // the context it is armed for; nil while in the pool
}

var deadlineTimers sync.Pool // of *deadlineTimer, stopped and ownerless

func armTimer(c *reqCtx, after time.Duration) *deadlineTimer {
	d, _ := deadlineTimers.Get().(*deadlineTimer)
	if d == nil {
		d = new(deadlineTimer)
		d.t = time.AfterFunc(math.MaxInt64, d.fire)
	}
	d.mu.Lock()
	d.c = c
	d.mu.Unlock()
	d.t.Reset(after)
	return d
}

// fire may run for an earlier owner, after release and even after a later
// armTimer (Stop cannot recall a firing already started): it finds the
// current owner, or none, and expire checks that owner's own deadline.
func (d *deadlineTimer) fire() {
	d.mu.Lock()
	c := d.c
	d.mu.Unlock()
	if c != nil {
		c.expire()
	}
}

func (d *deadlineTimer) release() {
	d.t.Stop()
	d.mu.Lock()
	d.c = nil
	d.mu.Unlock()
	deadlineTimers.Put(d)
}

// watch links c into the node's list of watched contexts, which Close
// cancels; false once Close has done so.
func (n *Node) watch(c *reqCtx) bool {
	n.rcMu.Lock()
	defer n.rcMu.Unlock()
	if n.rcClosed {
		return false
	}
	c.next = n.rcWatched
	if c.next != nil {
		c.next.prev = c
	}
	n.rcWatched = c
	return true
}

// unwatch unlinks c, if it is still linked (prev nil and not the head:
// cancelWatched took it already).
func (n *Node) unwatch(c *reqCtx) {
	n.rcMu.Lock()
	defer n.rcMu.Unlock()
	if c.prev != nil {
		c.prev.next = c.next
	} else if n.rcWatched == c {
		n.rcWatched = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
}

// cancelWatched ends every watched request context when the node closes;
// an unwatched one sees the node's ctx in its next Err or Done.
func (n *Node) cancelWatched() {
	n.rcMu.Lock()
	n.rcClosed = true
	n.rcMu.Unlock()
	for {
		// Unlinked here, not left to cancel: one that another goroutine is
		// cancelling right now would otherwise stay at the head meanwhile.
		n.rcMu.Lock()
		c := n.rcWatched
		if c != nil {
			n.rcWatched = c.next
			if c.next != nil {
				c.next.prev = nil
			}
			c.next = nil
		}
		n.rcMu.Unlock()
		if c == nil {
			return
		}
		c.cancel(context.Canceled) // its unwatch finds it unlinked: a no-op
	}
}

// requestContext builds the context for request h on c, or returns nil
// when h can be neither cancelled nor timed out (the common path: no
// allocation). Called on the event loop, before the request is queued,
// so that a cancel arriving while it waits for a handle finds it.
func (n *Node) requestContext(c *conn, h *framing.Header) *reqCtx {
	if h.Flags&(framing.FlagDeadline|framing.FlagCancellable) == 0 {
		return nil
	}
	rc := &reqCtx{n: n, prio: priorityValue(h.Priority) | inHandlerBit, xid: h.XID}
	if h.Flags&framing.FlagDeadline != 0 {
		rc.deadline = time.Now().Add(framing.DecodeTimeout(h.Status))
	}
	if h.Type == framing.TypeRequest && h.Flags&framing.FlagCancellable != 0 {
		rc.registered = true
		c.cmu.Lock()
		if c.cancels == nil {
			c.cancels = make(map[uint64]*reqCtx)
		}
		// A peer that reuses an xid while the first is running only loses
		// the means to cancel the first; its context still ends below.
		c.cancels[h.XID] = rc
		c.cmu.Unlock()
	}
	return rc
}

// requestDone retires rc when its handler has returned (or was skipped)
// and reports whether its caller has gone, so that no reply is sent: it
// sent a cancel, or the deadline passed. The server's deadline is never
// before the caller's, so past it the caller has given up (or is about
// to, and will report ErrTimedOut): a reply saying the handler's ctx
// expired would only race the caller's own deadline.
func (n *Node) requestDone(c *conn, rc *reqCtx) (gone bool) {
	if rc.registered {
		c.cmu.Lock()
		if c.cancels[rc.xid] == rc {
			delete(c.cancels, rc.xid)
		}
		c.cmu.Unlock()
	}
	expired := rc.Err() == context.DeadlineExceeded
	rc.cancel(context.Canceled)
	return rc.peerCancelled.Load() || expired
}

// cancelRequest acts on a TypeCancel from c's peer: the request xid it
// sent on c, if still queued or running, has its context cancelled.
// Unknown xids (finished, never cancellable, or made up) are ignored.
func (n *Node) cancelRequest(c *conn, xid uint64) {
	c.cmu.Lock()
	rc := c.cancels[xid]
	delete(c.cancels, xid)
	c.cmu.Unlock()
	if rc == nil {
		return
	}
	// Counted before the handler can see it: what the cancel causes (the
	// handler returning, its reply dropped and counted) comes after, in
	// the metrics too.
	n.m.cancelsReceived.Inc()
	rc.peerCancelled.Store(true)
	rc.cancel(context.Canceled)
}

// cancelAll cancels the context of every request still registered on c,
// which closed: their callers have failed with ErrNodeDown. Their replies
// are then dropped as stale, since their link has ended (sendReply).
func (c *conn) cancelAll() {
	c.cmu.Lock()
	m := c.cancels
	c.cancels = nil
	c.cmu.Unlock()
	for _, rc := range m {
		rc.cancel(context.Canceled)
	}
}

// skipExpired retires a request whose context ended before a handler
// could run it: its caller has given up (the server's deadline is never
// before the caller's), so running it would only spend a handle.
func (n *Node) skipExpired(c *conn, rc *reqCtx) bool {
	if rc == nil || rc.Err() == nil {
		return false
	}
	n.requestDone(c, rc)
	n.m.cancelledReplies.Inc()
	return true
}

// maxSentTimeout is the longest time left a request's header carries.
var maxSentTimeout = framing.DecodeTimeout(^uint16(0))

// markRequest sets the flags and the time left that let the server bound
// and cancel a request sent with ctx. It reports whether the request is
// cancellable: then the caller sends a TypeCancel if it gives up.
func markRequest(ctx context.Context, h *framing.Header) bool {
	if ctx.Done() == nil {
		return false // context.Background and the like: the common path
	}
	if dl, ok := ctx.Deadline(); ok {
		// A deadline past what the header can say (about 11 days) is sent
		// as none: clamped, the server's would come first, and end the
		// handler and drop its reply while the caller still waits. The
		// caller's cancel frame ends it instead.
		if left := time.Until(dl); left <= maxSentTimeout {
			h.Flags |= framing.FlagDeadline
			h.Status = framing.EncodeTimeout(left)
		}
	}
	if h.Type == framing.TypeRequest {
		h.Flags |= framing.FlagCancellable
		return true
	}
	return false
}

// sendCancel tells the server that the caller of xid, sent on c at prio,
// gave up. Best effort and never waiting: it needs no credit, and if c is
// gone or its queue is full the handler still has its deadline.
func (n *Node) sendCancel(c *conn, xid uint64, prio uint8) {
	h := framing.Header{Type: framing.TypeCancel, Priority: prio, XID: xid}
	if c.send(nil, &h, nil) == nil {
		n.m.cancelsSent.Inc()
	}
}
