package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// Call makes a synchronous RPC to node to and appends the results to reply.
// It returns when the reply arrives, ctx ends (ErrTimedOut or ErrIntr), or
// the node is known down (ErrNodeDown) — never later than that.
//
// The priority comes from ctx (WithPriority, or escalation inside a handler).
func (n *Node) Call(ctx context.Context, to NodeNum, m Method, args, reply []byte) ([]byte, error) {
	if n.clientChain != nil {
		return n.intercepted(ctx, to, m, args, reply, false)
	}
	return n.call(ctx, to, m, args, reply)
}

// call is Call after the client interceptors.
func (n *Node) call(ctx context.Context, to NodeNum, m Method, args, reply []byte) ([]byte, error) {
	start := time.Now()
	xid, err := n.startCall(ctx, to, m, args, reply)
	if err != nil {
		n.observe(&m, to, start, err, false)
		return reply, err
	}
	res, err := n.waitCall(ctx, xid)
	if err != nil {
		n.observe(&m, to, start, err, false)
		return reply, err
	}
	n.observe(&m, to, start, nil, m.DeclaredErrors && len(res) > len(reply) && res[len(reply)] != 0)
	return res, nil
}

// Send sends a one-way message: no reply, no handle. A nil error means the
// message was handed to the connection, not that it was served. ctx bounds
// the sending only: its deadline does not travel to the handler, which has
// no caller waiting for it.
func (n *Node) Send(ctx context.Context, to NodeNum, m Method, args []byte) error {
	if n.clientChain != nil {
		_, err := n.intercepted(ctx, to, m, args, nil, true)
		return err
	}
	return n.send(ctx, to, m, args)
}

// send is Send after the client interceptors.
func (n *Node) send(ctx context.Context, to NodeNum, m Method, args []byte) error {
	p, c, prio, err := n.route(ctx, to, m)
	if err != nil {
		return err
	}
	n.m.framesOutByPrio[prio].Inc()
	h := framing.Header{Type: framing.TypeOneWay, Priority: prio, Service: m.Service, Proc: m.Proc, SvcVersion: m.Version}
	if err := n.sendArgs(ctx, c, &h, m, args); err != nil {
		if errors.Is(err, ErrThrottled) || errors.Is(err, ErrCantEncodeArgs) {
			return err
		}
		return fmt.Errorf("%w: node %d: %v", ErrNodeDown, p.num, err)
	}
	n.m.oneWaySent.Inc()
	return nil
}

// Future is an RPC in flight, from Go.
type Future struct {
	done  chan struct{}
	reply []byte
	err   error
}

// Done is closed when the call has finished.
func (f *Future) Done() <-chan struct{} { return f.done }

// Wait blocks until the call finishes and returns its results.
func (f *Future) Wait() ([]byte, error) {
	<-f.done
	return f.reply, f.err
}

// Go sends an RPC and returns without waiting for its reply; the Future
// reports its outcome. ctx bounds the call as for Call. Sending happens
// before Go returns, so Go waits, within ctx, for what sending needs: a
// dial to the peer, the channel's credit (a throttled channel whose
// window is spent), room in a full write queue, and with WaitForReady the
// peer itself. If ctx ends meanwhile, the Future is already done with
// that error. args may be reused once Go returns.
func (n *Node) Go(ctx context.Context, to NodeNum, m Method, args []byte) *Future {
	f := &Future{done: make(chan struct{})}
	if n.clientChain != nil {
		// The chain is synchronous: run it, whole, on a goroutine of its
		// own, with a copy of args, which the caller may reuse once Go
		// returns.
		args := append([]byte(nil), args...)
		wait := func() {
			f.reply, f.err = n.intercepted(ctx, to, m, args, nil, false)
			close(f.done)
		}
		if !n.goOwned(wait) {
			wait()
		}
		return f
	}
	start := time.Now()
	xid, err := n.startCall(ctx, to, m, args, nil)
	if err != nil {
		f.err = err
		n.observe(&m, to, start, err, false)
		close(f.done)
		return f
	}
	wait := func() {
		f.reply, f.err = n.waitCall(ctx, xid)
		n.observe(&m, to, start, f.err, f.err == nil && m.DeclaredErrors && len(f.reply) > 0 && f.reply[0] != 0)
		close(f.done)
	}
	if !n.goOwned(wait) {
		wait() // the node is closing: the call is failing right now
	}
	return f
}

// GoFunc is Go with a callback, run on its own goroutine when the call
// ends. Like Go, it returns once the request is sent. The node owns that
// goroutine: Close waits for a running callback to return, so a callback
// must not wait for anything that happens only after Close.
func (n *Node) GoFunc(ctx context.Context, to NodeNum, m Method, args []byte, done func(reply []byte, err error)) {
	f := n.Go(ctx, to, m, args)
	if !n.goOwned(func() { done(f.Wait()) }) {
		go done(f.Wait()) // closing: f is already done, so this ends at once
	}
}

// route picks the connection a call to m at ctx's priority travels on.
// With WaitForReady, it waits for a peer that is not ready yet.
func (n *Node) route(ctx context.Context, to NodeNum, m Method) (*peer, *conn, uint8, error) {
	for {
		p, c, prio, err := n.routeOnce(ctx, to, m)
		if err == nil || p == nil || !notReady(err) || !waitsForReady(ctx) {
			return p, c, prio, err
		}
		if err := n.awaitReady(ctx, p, err); err != nil {
			return nil, nil, 0, err
		}
	}
}

// routeOnce is route's one attempt. p is set whenever the peer is known.
func (n *Node) routeOnce(ctx context.Context, to NodeNum, m Method) (*peer, *conn, uint8, error) {
	if n.closed.Load() {
		return nil, nil, 0, ErrClosed
	}
	if ctx.Err() != nil {
		return nil, nil, 0, ctxError(ctx) // do not send what nobody will wait for
	}
	p := n.peer(to)
	if p == nil {
		return nil, nil, 0, fmt.Errorf("%w: node %d is not a configured peer of node %d", ErrUnknownHost, to, n.cfg.Node)
	}
	if p.down.Load() {
		return p, nil, 0, fmt.Errorf("%w: node %d", ErrNodeDown, to)
	}
	if p.draining.Load() {
		// The peer said so (TypeDraining): its answer, as a RemoteError
		// like the one it sends a request that still arrives. A handler
		// returning it then fails as itself (ErrFailed), instead of
		// telling its own caller that this node shuts down.
		return p, nil, 0, &RemoteError{Code: StatusShuttingDown, Message: fmt.Sprintf("node %d is draining", to)}
	}
	prio := n.outgoingPriority(ctx)
	ch := Channel(m.Service.Channel())
	if prio > 0 {
		ch = ChanPrio1 + Channel(prio-1)
	} else if !ch.IsServiceChannel() || int(ch) >= n.cfg.MaxChannels {
		return nil, nil, 0, fmt.Errorf("%w: service %s is not on a service channel", ErrProgUnavail, m.Service)
	}
	c, err := n.outConn(ctx, p, ch)
	if err != nil {
		return p, nil, 0, err
	}
	return p, c, prio, nil
}

// outgoingPriority is CI's escalation: a call made from inside a handler
// goes out one priority above the request being served (at most 4), so the
// nested call cannot wait behind a throttled channel.
func (n *Node) outgoingPriority(ctx context.Context) uint8 {
	v, _ := ctx.Value(priorityKey{}).(priorityValue)
	p := v.prio()
	if v.inHandler() && !n.cfg.DisableEscalation && p < framing.MaxPriority {
		p++
	}
	return p
}

func (n *Node) startCall(ctx context.Context, to NodeNum, m Method, args, reply []byte) (uint64, error) {
	p, c, prio, err := n.route(ctx, to, m)
	if err != nil {
		return 0, err
	}
	idx, ok := n.handles.acquire()
	if !ok {
		return 0, fmt.Errorf("%w: all %d client handles busy", ErrTooManyCalls, n.cfg.MaxOutstandingCalls)
	}
	xid := n.handles.arm(idx, p.num, reply)
	// A link ending right now fails waiting calls first, then closes its
	// connections. Armed before this check, the call is either seen by that
	// failing (link still current here) or sees the new generation here; it
	// never goes out on a dying connection to wait for its deadline.
	// Close fails waiting calls once, the same way: a call armed after that
	// sees closed here.
	if closed := n.closed.Load(); closed || c.linkGen != p.linkGen.Load() {
		if !n.handles.abandon(xid) {
			return xid, nil // already failed by the link's end; the caller collects it
		}
		if closed {
			return 0, ErrClosed
		}
		return 0, fmt.Errorf("%w: node %d: link lost", ErrNodeDown, p.num)
	}
	n.m.framesOutByPrio[prio].Inc()
	h := framing.Header{Type: framing.TypeRequest, Priority: prio, Service: m.Service, Proc: m.Proc, XID: xid, SvcVersion: m.Version}
	s := &n.handles.slots[idx]
	if markRequest(ctx, &h) {
		s.cancelConn, s.prio = c, prio // for waitCall's TypeCancel if the caller gives up
	}
	if c.reads != nil {
		s.sentOn = c // its reply comes back on c, which the caller may read itself
	}
	if err := n.sendArgs(ctx, c, &h, m, args); err != nil {
		if n.handles.abandon(xid) {
			if errors.Is(err, ErrThrottled) || errors.Is(err, ErrCantEncodeArgs) {
				return 0, err
			}
			return 0, fmt.Errorf("%w: node %d: %v", ErrNodeDown, p.num, err)
		}
		// A reply or the link's end already claimed the call (the request
		// may have gone out before a later write failed): the caller
		// collects that outcome like any other.
		return xid, nil
	}
	return xid, nil
}

// sendArgs compresses args if m asks for it, then sends the frame.
func (n *Node) sendArgs(ctx context.Context, c *conn, h *framing.Header, m Method, args []byte) error {
	if len(args) > n.cfg.MaxPayload {
		// The receiver would drop the connection over it; refuse here instead.
		return fmt.Errorf("%w: %d bytes of arguments over MaxPayload %d", ErrCantEncodeArgs, len(args), n.cfg.MaxPayload)
	}
	if m.Compression == framing.CompressNone || len(args) <= m.CompressAbove {
		return c.send(ctx, h, args)
	}
	zbuf := n.bufs.Get().(*[]byte)
	defer n.putBuf(zbuf)
	out, flag, err := n.codec.Compress((*zbuf)[:0], args, m.Compression)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCantEncodeArgs, err)
	}
	*zbuf = out
	if flag == 0 {
		return c.send(ctx, h, args)
	}
	h.Flags |= flag
	h.Aux = uint32(len(args))
	return c.send(ctx, h, out)
}

// waitCall waits for the call xid to finish and frees its handle. With
// netpoller reads the caller reads its reply itself (callread.go).
func (n *Node) waitCall(ctx context.Context, xid uint64) ([]byte, error) {
	s := &n.handles.slots[xidSlot(xid)]
	if c := s.sentOn; c != nil {
		n.readForReply(ctx, c, s)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		c, prio := s.cancelConn, s.prio // before abandon: the slot may be reused at once
		if n.handles.abandon(xid) {
			if c != nil {
				n.sendCancel(c, xid, prio)
			}
			return nil, ctxError(ctx)
		}
		<-s.done // a reply or node-down claimed it first; take that outcome
	}
	reply, err := s.reply, s.err
	n.handles.release(xid)
	return reply, err
}

// observe counts a finished call in the client's series: its procedure's
// and its peer's. declared: the call succeeded with a declared error.
func (n *Node) observe(m *Method, to NodeNum, start time.Time, err error, declared bool) {
	code := -1
	switch {
	case err != nil:
		code = errorCode(err)
	case declared:
		code = codeFailed
	}
	n.m.client.get(m).observe(time.Since(start).Seconds(), code)
	if p := n.peer(to); p != nil {
		p.m.calls.Inc()
		if code >= 0 {
			p.m.errs.inc(code)
		}
	}
}

// ctxError turns a finished context into ErrTimedOut or ErrIntr, keeping the
// context's own error visible to errors.Is.
func ctxError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrTimedOut, ctx.Err())
	}
	return fmt.Errorf("%w: %w", ErrIntr, ctx.Err())
}
