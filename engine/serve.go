package engine

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/clusterinfra/ci/framing"
)

// serveFrame handles a request or one-way message on the connection's
// reader (netpoller goroutine or event loop): it checks the service,
// procedure and version, then either runs an inline handler right here on
// the frame's bytes or hands a copy to a server handle.
func (n *Node) serveFrame(c *conn, f *framing.Frame) {
	p := c.peer
	cost := frameCost(&f.Header, len(f.Payload))
	n.m.framesInByPrio[f.Priority].Inc()
	if !c.admit(cost, &f.Header) {
		// A peer that floods (priority channels are never throttled) is
		// answered "busy" instead of queueing without bound.
		n.m.refused.inc(statusCode(StatusBusy))
		if f.Type == framing.TypeRequest {
			n.sendReply(nil, c, &f.Header, nil, StatusBusy, []byte("too many requests in flight from this node"))
		}
		c.finished(cost)
		return
	}
	svc := n.lookupService(f.Service)
	var status Status
	switch {
	case svc == nil:
		status = StatusProgUnavail
	case f.SvcVersion != 0 && svc.Version != 0 && f.SvcVersion != svc.Version:
		status = StatusProgVersMismatch
	case int(f.Proc) >= len(svc.Procs) || svc.Procs[f.Proc] == nil:
		status = StatusProcUnavail
	}
	if status != StatusOK {
		n.log.Debug("refusing request", "peer", p.num, "service", f.Service, "proc", f.Proc, "status", status.Err())
		n.m.refused.inc(statusCode(status))
		if f.Type == framing.TypeRequest {
			msg := fmt.Sprintf("service %s proc %d version %d on node %d", f.Service, f.Proc, f.SvcVersion, n.cfg.Node)
			n.sendReply(nil, c, &f.Header, nil, status, []byte(msg))
		}
		c.finished(cost)
		return
	}

	if !n.admitServing() {
		n.m.drainingRefused.Inc()
		n.m.refused.inc(statusCode(StatusShuttingDown))
		if f.Type == framing.TypeRequest {
			n.sendReply(nil, c, &f.Header, nil, StatusShuttingDown, []byte("node is shutting down"))
		}
		c.finished(cost)
		return
	}
	start := time.Now()
	rc := n.requestContext(c, &f.Header)
	if n.skipExpired(c, rc) {
		c.finished(cost)
		return
	}
	if svc.Inline {
		args := f.Payload
		if f.Flags.Compressed() {
			var err error
			c.scratch, err = n.codec.Decompress(c.scratch[:0], &f.Header, f.Payload)
			if err != nil {
				if rc != nil {
					n.requestDone(c, rc)
				}
				n.replyDecodeError(nil, c, &f.Header, err)
				c.finished(cost)
				return
			}
			args = c.scratch
		}
		n.serve(nil, svc, &f.Header, p, c, args, &c.st, start, rc)
		c.scratch = trimBuffer(c.scratch) // one large request must not pin its size per connection
		c.finished(cost)
		return
	}

	// The payload aliases the reader's buffer: copy it once for the handle.
	// A compressed one is copied as it is and decompressed by the handle:
	// decompression is the one costly step here (a real bomb makes 16 MiB
	// of a few hundred bytes), and the loop serves every other connection.
	bp := n.bufs.Get().(*[]byte)
	*bp = append((*bp)[:0], f.Payload...)
	// The credit for this frame goes back when the handle is done with it:
	// while handles are busy, the sender feels it.
	j := job{svc: svc, from: p, hdr: f.Header, buf: bp, conn: c, cost: cost, start: start, rc: rc}
	if f.Priority > 0 {
		// Priority requests have handles of their own, so they never queue
		// behind a service whose handles are all busy.
		n.prioPool.dispatch(&j)
		return
	}
	svc.pool.dispatch(&j)
}

// runJob is a server handle serving one request.
func (n *Node) runJob(w *handle, j *job) {
	if n.skipExpired(j.conn, j.rc) {
		// Cancelled, or past its deadline, while it waited for a handle.
		n.putBuf(j.buf)
		j.conn.finished(j.cost)
		return
	}
	if j.hdr.Flags.Compressed() {
		zp := n.bufs.Get().(*[]byte)
		var err error
		*zp, err = n.codec.Decompress((*zp)[:0], &j.hdr, *j.buf)
		n.putBuf(j.buf)
		j.buf = zp
		if err != nil {
			n.putBuf(zp)
			if j.rc != nil {
				n.requestDone(j.conn, j.rc)
			}
			n.replyDecodeError(n.ctx, j.conn, &j.hdr, err)
			j.conn.finished(j.cost)
			return
		}
	}
	n.serve(n.ctx, j.svc, &j.hdr, j.from, j.conn, *j.buf, &w.st, j.start, j.rc)
	// Only now: the handler may have replied with the arguments themselves.
	n.putBuf(j.buf)
	j.conn.finished(j.cost)
}

// serveState is what serving a request reuses: a server handle owns one,
// and so does each connection for its inline handlers. req and resp are
// fields, not locals, because the handler is called through a func value
// and they would escape: two allocations per request.
type serveState struct {
	req  Request
	resp Response
	own  []byte // the reply buffer, kept from request to request
}

// serve runs the handler for request h from p, which arrived on c at
// start, and sends its reply, unless its caller cancelled it. ctx is nil
// on c's reader (see sendReply). rc is the request's own context if it
// can be cancelled or has a deadline (cancel.go); otherwise the handler
// gets the shared, immutable per-priority one.
//
// Ownership, as the Handler documentation promises: args stays valid until
// the reply has been sent; resp.Body starts as own[:0], and whatever slice
// the handler leaves there is only read, until the reply is sent. Only own
// (and what append grew it into) is ever written to or kept: a handler
// that answers with req.Args or a shared slice gives the engine nothing.
func (n *Node) serve(ctx context.Context, svc *service, h *framing.Header, p *peer, c *conn, args []byte, st *serveState, start time.Time, rc *reqCtx) {
	st.req = Request{From: p.num, Service: h.Service, Proc: h.Proc, Priority: h.Priority, OneWay: h.Type == framing.TypeOneWay, Args: args}
	st.resp.Body = st.own[:0]
	hctx := n.handlerContext(h.Priority)
	if rc != nil {
		hctx = rc
	}
	err := n.runHandler(hctx, svc, &st.req, &st.resp, start)
	code := svc.outcome(err, st.resp.Body)
	if rc != nil && n.requestDone(c, rc) {
		n.m.cancelledReplies.Inc() // the caller has gone: a reply would only be dropped there
	} else if h.Type == framing.TypeRequest {
		body := st.resp.Body
		if err != nil {
			// Never into resp.Body: it may be the handler's own slice.
			st.own = append(st.own[:0], err.Error()...)
			body = st.own
		}
		n.sendReply(ctx, c, h, svc, statusFor(err), body)
	}
	svc.metrics[h.Proc].observe(time.Since(start).Seconds(), code)
	st.own = keepBuffer(st.own, st.resp.Body)
	st.req.Args, st.resp.Body = nil, nil // the handler's slices are not ours to keep
}

// keepBuffer picks the reply buffer to reuse after a handler left body in
// resp.Body. body is reused only if it is own's memory (the handler
// appended within its capacity). Anything else may belong to the handler:
// then own is kept, or replaced with a fresh buffer of body's size if the
// handler needed more room than own had, so that a handler appending the
// same size every time allocates only the first time.
func keepBuffer(own, body []byte) []byte {
	if cap(body) > 0 && cap(own) > 0 && unsafe.SliceData(body[:cap(body)]) == unsafe.SliceData(own[:cap(own)]) {
		return trimBuffer(body)
	}
	if len(body) > cap(own) && len(body) <= maxKeptBuffer {
		return make([]byte, 0, len(body))
	}
	return trimBuffer(own)
}

// maxKeptBuffer bounds the reply buffer a handle keeps between requests.
const maxKeptBuffer = 1 << 20

// handlerContext is the context handlers of requests at prio run with. One
// per priority, built once and never changed, so a handler may hand it to
// goroutines that outlive it (Go, GoFunc) without racing the next request.
func (n *Node) handlerContext(prio uint8) context.Context {
	return &n.hctx[prio]
}

// replyDecodeError answers a request whose arguments did not decompress;
// ctx as for sendReply.
func (n *Node) replyDecodeError(ctx context.Context, c *conn, h *framing.Header, err error) {
	n.countDecodeLimit(err)
	n.m.refused.inc(statusCode(StatusCantDecodeArgs))
	n.log.Warn("cannot decompress request", "peer", c.peer.num, "service", h.Service, "err", err)
	if h.Type == framing.TypeRequest {
		n.sendReply(ctx, c, h, nil, StatusCantDecodeArgs, []byte(err.Error()))
	}
}

// outcome is the code a handler's result counts under (-1: success): its
// error's status, or a declared error in a body that starts with a status
// byte (Service.DeclaredErrors).
func (s *service) outcome(err error, body []byte) int {
	switch {
	case err != nil:
		return statusCode(statusOf(err))
	case s.DeclaredErrors && len(body) > 0 && body[0] != 0:
		return codeFailed
	}
	return -1
}

func statusFor(err error) Status {
	if err == nil {
		return StatusOK
	}
	return statusOf(err)
}

// sendReply answers request h, which arrived on c, on c itself: a reply
// travels back on its request's own connection (protocol version 3), which
// in the other direction carries nothing but credit grants and draining
// notices, so a reply never waits behind a request nor for a dial, and is
// never throttled. ctx is nil on the connection's reader (event loop or
// netpoller goroutine), where the reply is corked: written with the rest
// of that read's replies, in one system call.
//
// A reply can only reach the run of the peer that sent the request: the
// connection belongs to one incarnation at each end. Once c's link has
// ended (the connection dropped, the peer restarted, it was declared
// down), its caller has already been failed; the reply is dropped and
// counted. So is every reply once Close has begun: Close is the immediate
// stop, and a handler it cancelled answers with what its ended ctx made of
// its work ("context canceled"), which its caller must not take for the
// handler's result: the connection's close tells it ErrNodeDown instead
// (Shutdown is the way to let running handlers reply).
func (n *Node) sendReply(ctx context.Context, c *conn, h *framing.Header, svc *service, status Status, body []byte) {
	p, gen := c.peer, c.linkGen
	if p.linkGen.Load() != gen || c.superseded.Load() || n.closed.Load() {
		n.m.staleReplies.Inc()
		return
	}
	if len(body) > n.cfg.MaxPayload {
		n.log.Warn("reply over MaxPayload", "peer", p.num, "service", h.Service, "proc", h.Proc, "bytes", len(body))
		status, body = StatusSystemError, []byte(fmt.Sprintf("reply of %d bytes over MaxPayload %d", len(body), n.cfg.MaxPayload))
	}
	rh := framing.Header{Type: framing.TypeReply, Priority: h.Priority, Service: h.Service, Proc: h.Proc, XID: h.XID, Status: uint16(status)}
	var zbuf *[]byte
	if svc != nil && status == StatusOK && svc.Compression != framing.CompressNone && len(body) > svc.CompressAbove {
		zbuf = n.bufs.Get().(*[]byte)
		out, flag, err := n.codec.Compress((*zbuf)[:0], body, svc.Compression)
		if err == nil && flag != 0 {
			*zbuf = out
			rh.Flags, rh.Aux, body = flag, uint32(len(body)), out
		}
	}
	defer func() {
		if zbuf != nil {
			n.putBuf(zbuf)
		}
	}()
	var err error
	if ctx == nil {
		err = c.sendCorked(c, &rh, body)
	} else {
		err = c.send(ctx, &rh, body)
	}
	if err != nil && !c.superseded.Load() {
		n.replyLost(p, gen, err)
	}
}

// replyLost ends the link a reply could not reach: its caller must learn
// at once (its request connection drops, ErrNodeDown) instead of waiting
// for a deadline it may not have. Only the link the request came on: a
// newer one is not this reply's business, and one link ends once however
// many of its replies are lost.
func (n *Node) replyLost(p *peer, gen uint64, err error) {
	n.log.Debug("reply lost", "peer", p.num, "err", err)
	if !n.closed.Load() && !errors.Is(err, ErrClosed) {
		n.peerLost(p, gen, fmt.Errorf("reply undeliverable: %w", err))
	}
}

// completeReply hands a reply to the call waiting for it, on the reply
// connection's reader.
func (n *Node) completeReply(c *conn, f *framing.Frame) {
	s := n.handles.begin(f.XID, c.peer.num)
	if s == nil {
		n.m.lateReplies.Inc() // its caller gave up, or the node went down meanwhile
		return
	}
	if c.reads != nil {
		// A reply the watcher reads may be for a caller that has sent but
		// not yet come to read: it comes next (every call sent on a
		// dialled netpoller connection waits in readForReply), and its
		// leaving re-arms the idle timer, so the watcher steps back
		// (watchLoop) as if that caller had arrived.
		c.reads.arrived.Add(1)
	}
	switch st := Status(f.Status); {
	case st != StatusOK:
		s.err = remoteStatus(st, f.Payload)
	case f.Flags.Compressed():
		var err error
		s.reply, err = n.codec.Decompress(s.reply, &f.Header, f.Payload)
		if err != nil {
			n.countDecodeLimit(err)
			s.err = fmt.Errorf("%w: %v", ErrCantDecodeRes, err)
		}
	default:
		s.reply = append(s.reply, f.Payload...)
	}
	n.handles.finish(s)
}

func (n *Node) putBuf(bp *[]byte) {
	if cap(*bp) > 1<<20 {
		return // let an occasional huge buffer go rather than pin it in the pool
	}
	*bp = (*bp)[:0]
	n.bufs.Put(bp)
}

// trimBuffer drops a per-handle buffer that one large reply blew up.
func trimBuffer(b []byte) []byte {
	if cap(b) > 1<<20 {
		return nil
	}
	return b[:0]
}

// countDecodeLimit counts a payload refused for announcing a decompressed
// size over MaxPayload (or for decoding to another size than announced).
func (n *Node) countDecodeLimit(err error) {
	if errors.Is(err, framing.ErrFrameTooLarge) || errors.Is(err, framing.ErrDecompress) {
		n.m.limitDecompress.Inc()
	}
}
