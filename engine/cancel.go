package engine

import (
	"context"
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
// nothing of this: it runs with the handle's reused context, as before.

// reqCtx is the context of one cancellable or deadline-bearing request.
// It is never reused, so a handler may hand it to goroutines, timers and
// context.AfterFunc children that outlive it without racing a later
// request; it is cancelled when the handler returns.
type reqCtx struct {
	context.Context // WithTimeout or WithCancel of the node's ctx: Close cancels it too
	cancel          context.CancelFunc
	prio            any // a priorityValue with inHandlerBit; boxing a byte never allocates
	xid             uint64
	registered      bool        // in its connection's cancels, so a TypeCancel can find it
	peerCancelled   atomic.Bool // a TypeCancel came: the caller has gone, so no reply
}

func (c *reqCtx) Value(key any) any {
	if _, ok := key.(priorityKey); ok {
		return c.prio
	}
	return c.Context.Value(key)
}

// requestContext builds the context for request h on c, or returns nil
// when h can be neither cancelled nor timed out (the common path: no
// allocation). Called on the event loop, before the request is queued,
// so that a cancel arriving while it waits for a handle finds it.
func (n *Node) requestContext(c *conn, h *framing.Header) *reqCtx {
	if h.Flags&(framing.FlagDeadline|framing.FlagCancellable) == 0 {
		return nil
	}
	rc := &reqCtx{prio: priorityValue(h.Priority) | inHandlerBit, xid: h.XID}
	if h.Flags&framing.FlagDeadline != 0 {
		rc.Context, rc.cancel = context.WithTimeout(n.ctx, framing.DecodeTimeout(h.Status))
	} else {
		rc.Context, rc.cancel = context.WithCancel(n.ctx)
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
	rc.cancel()
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
	rc.peerCancelled.Store(true)
	rc.cancel()
	n.m.cancelsReceived.Inc()
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
		rc.cancel()
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

// markRequest sets the flags and the time left that let the server bound
// and cancel a request sent with ctx. It reports whether the request is
// cancellable: then the caller sends a TypeCancel if it gives up.
func markRequest(ctx context.Context, h *framing.Header) bool {
	if ctx.Done() == nil {
		return false // context.Background and the like: the common path
	}
	if dl, ok := ctx.Deadline(); ok {
		h.Flags |= framing.FlagDeadline
		h.Status = framing.EncodeTimeout(time.Until(dl))
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
