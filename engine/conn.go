package engine

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

var errConnClosed = errors.New("ics: connection closed")

// errQueueFull is an event loop's send refused over MaxPendingWrite.
var errQueueFull = fmt.Errorf("%w: write queue full", ErrCantSend)

// errWriteStalled ends a connection whose peer read nothing for WriteTimeout.
var errWriteStalled = errors.New("peer read nothing for WriteTimeout")

// conn is one ICS channel connection. A node dials its own connection to
// each peer for each channel it sends on (outbound) and accepts the peer's
// (inbound): requests, one-way messages and replies travel from dialler to
// acceptor, flow-control grants travel back. Dialling only one's own side
// means two nodes never race to dial the same connection.
type conn struct {
	n        *Node
	outbound bool

	// Set before the connection is shared: at dial for outbound, at the
	// handshake (on the loop) for inbound, which publishes c to other
	// goroutines only after setting them.
	peer    *peer
	channel Channel
	linkGen uint64
	met     connMetrics
	enrol   atomic.Int32 // a dialled connection's hand-over to a loop: enrolPending, then attached or abandoned
	nc      net.Conn     // with ReadNetpoller, the socket its reader reads; set before c is shared, closed to end the reader

	// Loop side: touched only by the goroutine that reads the connection,
	// its event loop or its netpoller reader (Config.ReadMode).
	gc      gnet.Conn
	ready   bool // handshake done
	need    int  // bytes the frame at the head of the buffer needs
	dec     framing.Decoder
	st      serveState // what inline handlers' requests reuse
	scratch []byte     // decompressed arguments of inline handlers

	// cancels finds the running or queued cancellable requests that came
	// on this accepted connection by xid, for TypeCancel (cancel.go).
	cmu     sync.Mutex
	cancels map[uint64]*reqCtx

	// Write side. Frames are written straight from the sending goroutine:
	// the first sender to find the connection idle becomes the flusher and
	// writes with one writev everything queued meanwhile by others. Only
	// when the socket is full does a goroutine wait for POLLOUT.
	wmu      sync.Mutex
	fd       int // our dup of the socket, so gnet closing its fd never lets us write to a reused number; -1 once closed
	batch    framing.Batch
	iov      []unix.Iovec // flusher's scratch
	flushing bool
	written  uint64 // bytes written since the start, for the write deadline
	wclosed  bool
	dead     atomic.Bool   // wclosed, readable without wmu: the loop checks it per frame
	drained  chan struct{} // closed when the queue falls under MaxPendingWrite
	// corked: the flusher is a reader that queued its replies here without
	// writing, and writes them all once its batch of requests is served
	// (uncork). Others queue behind it as behind any flusher.
	corked bool

	// Read side again: the connections whose writes this connection's
	// reader has corked during the frames it is handling; uncorkAll
	// writes them at the end of the batch. Only that reader touches it.
	corks  [2]*conn
	ncorks int

	// superseded: an accepted connection that a newer one of its channel
	// replaced (supersede); it has left the link.
	superseded atomic.Bool

	// reads is the read side of a dialled netpoller connection, which the
	// callers waiting on it read themselves (callread.go); nil otherwise.
	reads *callerReads

	// Flow control on throttled channels: the dialler spends credit, the
	// acceptor returns it. At most one of them is set.
	credit *sendCredit
	recv   *recvCredit

	// Security. session is an acceptor's handshake waiting for the
	// dialler's confirmation. With SecurityEncrypt, tx seals every frame
	// (under wmu, so nonces follow the byte order) and rx opens records on
	// the loop into plain, where frames are then parsed.
	incarnation uint64 // the dialler's, from its hello
	source      string // remote IP of an accepted connection, for MaxUnauthPerSource
	remote      string // its address, for logs off the loop (gnet's is the loop's)
	// In n.pending while the handshake runs (guarded by n.pendingMu):
	// since when, and whether it still counts against its source address.
	pendingElem  *list.Element
	pendingSince time.Time
	bySource     bool
	session      atomic.Pointer[session] // set by a handshake worker before its answer goes out
	tx, rx       *recordCipher
	plain        []byte
	plainOff     int
	sealBuf      []byte // guarded by wmu
}

func (n *Node) newConn(outbound bool, p *peer, ch Channel) *conn {
	c := &conn{n: n, outbound: outbound, peer: p, channel: ch, fd: -1}
	c.dec.MaxPayload = uint32(n.cfg.MaxPayload)
	if !outbound {
		// Until the handshake is done only a hello or a confirmation may
		// come, and nothing larger is buffered for a stranger.
		c.dec.MaxPayload = maxHelloFrame
	}
	if p != nil {
		c.met = n.m.forConn(n.cfg.Node, p.num, ch)
	}
	return c
}

// The states of conn.enrol: a dial that stops waiting for the loop marks
// the connection abandoned, and OnOpen closes it instead of attaching.
const (
	enrolPending int32 = iota
	enrolAttached
	enrolAbandoned
)

var errAbandoned = errors.New("dial gave up before the loop took the connection")

// attach binds c to its gnet connection, on the loop, in OnOpen.
func (c *conn) attach(gc gnet.Conn) error {
	c.gc = gc
	if c.outbound && !c.enrol.CompareAndSwap(enrolPending, enrolAttached) {
		return errAbandoned
	}
	fd, err := gc.Dup()
	if err != nil {
		return fmt.Errorf("dup: %w", err)
	}
	c.setWriteFD(fd)
	return nil
}

// setWriteFD gives the write side its own descriptor of the socket.
func (c *conn) setWriteFD(fd int) {
	c.wmu.Lock()
	c.fd = fd
	c.wmu.Unlock()
}

// close asks what reads the connection to close it: its event loop, and
// OnClose follows, or its netpoller reader, whose Read then fails.
func (c *conn) close() {
	c.markClosed()
	c.endReader()
}

// endReader closes the reading side's socket, which ends the connection.
// A dialled netpoller connection may have nobody in Read: its watcher is
// told to look.
func (c *conn) endReader() {
	if c.gc != nil {
		_ = c.gc.Close()
	} else if c.nc != nil {
		_ = c.nc.Close()
	}
	if c.reads != nil {
		c.reads.kick()
	}
}

// markClosed stops the write side. The shutdown makes the peer see the
// close now, even while a flusher still holds our descriptor.
func (c *conn) markClosed() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return
	}
	c.wclosed = true
	c.dead.Store(true)
	if c.credit != nil {
		c.credit.close()
	}
	if c.fd >= 0 {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
		if !c.flushing {
			_ = unix.Close(c.fd)
			c.fd = -1
		}
	}
	if !c.outbound {
		c.cancelAll()
	}
	if c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
	if !c.flushing {
		// A flusher in a system call is using the batch's buffers; it
		// drops them itself when it sees the connection closed.
		c.batch.Reset()
	}
}

// send writes one frame. ctx, when not nil, lets the caller wait while the
// connection's queue is over MaxPendingWrite; event loops pass nil and never
// wait. A nil error means the frame is written or queued behind a flusher.
func (c *conn) send(ctx context.Context, h *framing.Header, payload []byte) error {
	if c.credit != nil && h.Type != framing.TypeCredit && h.Type != framing.TypeCancel {
		cost := int64(frameCost(h, len(payload)))
		waited, err := c.credit.acquire(ctx, cost, c)
		if err != nil {
			return err
		}
		if waited {
			h.Flags |= framing.FlagStarved
		}
		if err := c.sendFrame(ctx, nil, h, payload); err != nil {
			if errors.Is(err, ErrThrottled) {
				// Not sent over a live connection, so never to be returned
				// by the receiver: give it back. A dead connection's credit
				// dies with it.
				c.credit.grant(cost)
			}
			return err
		}
		return nil
	}
	return c.sendFrame(ctx, nil, h, payload)
}

// sendCorked is send from the reader of connection rd, in the middle of
// the frames one read brought: the frame is queued without a system call
// when it can be, and rd.uncorkAll writes it, with every other reply of
// the batch, once the batch has been handled. One write per read instead
// of one per reply. The frame is copied, as behind any flusher.
func (c *conn) sendCorked(rd *conn, h *framing.Header, payload []byte) error {
	if c.credit != nil || len(payload) >= framing.LargePayload || !rd.canCork(c) {
		return c.send(nil, h, payload) // nothing to gain, or a payload worth writing from where it is
	}
	return c.sendFrame(nil, rd, h, payload)
}

// canCork reports whether c's reader can take on w's writes: it already
// has, or has room to remember w.
func (c *conn) canCork(w *conn) bool {
	return c.ncorks < len(c.corks) || c.corks[0] == w || c.corks[1] == w
}

// addCork remembers that c's reader corked w (canCork said it may).
func (c *conn) addCork(w *conn) {
	if c.corks[0] != w && c.corks[1] != w {
		c.corks[c.ncorks] = w
		c.ncorks++
	}
}

// corkMax is the most a cork holds back: beyond it the reader writes at
// once, so a batch of large replies never waits whole in memory.
const corkMax = 64 << 10

// uncorkAll writes what c's reader corked while handling its frames. It
// runs after every batch, whatever ended it: a corked connection has no
// other flusher.
func (c *conn) uncorkAll() {
	for i := range c.ncorks {
		w := c.corks[i]
		c.corks[i] = nil
		w.wmu.Lock()
		if w.corked {
			w.corked = false
			_ = w.flushLocked(false) // an error ends w's link (failWriteLocked); nobody waits for it here
		}
		w.wmu.Unlock()
	}
	c.ncorks = 0
}

// sendFrame is send after flow control; rd as for sendCorked, or nil.
func (c *conn) sendFrame(ctx context.Context, rd *conn, h *framing.Header, payload []byte) error {
	if c.n.cfg.WriteMode == WriteEventLoop {
		return c.sendViaLoop(h, payload)
	}
	wait := ctx
	if wait == nil && h.Type == framing.TypeReply && c.n.cfg.ReadMode == ReadNetpoller {
		// An inline handler's reply, from a netpoller reader: a goroutine
		// of the connection's own, which may wait for the peer to read.
		// Waiting holds back the requests behind it (backpressure) where
		// refusing would end the link under nothing worse than load. A
		// peer that never reads is ended by WriteTimeout, which wakes the
		// wait (markClosed). Event loops serve every connection: they
		// cannot wait.
		wait = c.n.ctx
	}
	c.wmu.Lock()
	// A reader never waits behind a cork: the cork may be its own, which
	// only it will write (at the end of its batch, or past corkMax).
	for wait != nil && (ctx != nil || !c.corked) && c.flushing && !c.wclosed && c.batch.Len() >= c.n.cfg.MaxPendingWrite {
		if c.drained == nil {
			c.drained = make(chan struct{})
		}
		ch := c.drained
		c.wmu.Unlock()
		select {
		case <-ch:
		case <-wait.Done():
			return fmt.Errorf("%w: %d bytes queued on %s to node %d", ErrThrottled, c.n.cfg.MaxPendingWrite, c.channel, c.peer.num)
		}
		c.wmu.Lock()
	}
	if c.wclosed || c.fd < 0 {
		c.wmu.Unlock()
		return errConnClosed
	}
	if wait == nil && c.flushing && h.Type != framing.TypeCredit && c.batch.Len()+framing.HeaderSize+len(payload) > c.n.cfg.MaxPendingWrite {
		// An event loop cannot wait for the peer to read, and must not
		// queue without bound for one that does not: the frame is refused
		// (a reply's link then ends). Credit grants are tiny and go.
		c.wmu.Unlock()
		c.n.m.limitPendingWrite.Inc()
		return fmt.Errorf("%w: %d bytes already queued on %s to node %d", errQueueFull, c.n.cfg.MaxPendingWrite, c.channel, c.peer.num)
	}
	c.met.framesOut.Inc()
	c.met.bytesOut.Add(framing.HeaderSize + len(payload))
	if c.tx != nil {
		if err := c.sealLocked(h, payload); err != nil {
			c.wmu.Unlock()
			return err
		}
	} else if c.flushing || rd != nil {
		// Someone else is writing and will pick this frame up, or rd's
		// reader will: it must not reference memory the caller reuses
		// once send returns.
		c.batch.AppendCopy(h, payload)
	} else {
		c.batch.Append(h, payload)
	}
	switch {
	case c.flushing && c.corked && c.batch.Len() >= corkMax:
		c.corked = false // enough to be worth a system call now
	case c.flushing:
		c.wmu.Unlock()
		return nil
	case rd != nil:
		c.flushing, c.corked = true, true
		rd.addCork(c)
		c.wmu.Unlock()
		return nil
	}
	c.flushing = true
	if ctx != nil && (c.n.handles.inUse.Load() > 1 || (c.peer != nil && c.peer.inflight.Load() > 1)) {
		// Other calls are in flight, and their callers, readied by the
		// reader that delivered their replies, are likely waiting to run
		// on this P to send their next requests; or other requests of
		// the peer are being served, and their handles are about to
		// reply. Let them queue behind this frame first, and write them
		// all with one system call.
		c.wmu.Unlock()
		runtime.Gosched()
		c.wmu.Lock()
	}
	err := c.flushLocked(false)
	c.wmu.Unlock()
	return err
}

// flushLocked writes the queue until it is empty, the socket is full or the
// connection fails. Called with wmu held and flushing set; drops wmu during
// each system call so other senders can queue behind it. When the socket is
// full the first call hands the rest to routineFlush, which async marks.
func (c *conn) flushLocked(async bool) error {
	for c.batch.Len() > 0 && !c.wclosed {
		bufs := c.batch.Buffers()
		fd := c.fd
		c.wmu.Unlock()
		n, err := c.writev(fd, bufs)
		c.wmu.Lock()
		if n > 0 {
			c.written += uint64(n)
			c.batch.Consume(n)
			if c.drained != nil && c.batch.Len() < c.n.cfg.MaxPendingWrite {
				close(c.drained)
				c.drained = nil
			}
		}
		switch err {
		case nil, unix.EINTR:
			continue
		case unix.EAGAIN:
			if !async {
				c.batch.Own() // the sender's payload outlives its send call now
				if !c.n.goOwned(c.routineFlush) {
					// The node is closing: nobody will read this any more.
					c.flushing = false
					c.batch.Reset()
				}
			}
			return nil
		default:
			c.flushing = false
			c.failWriteLocked(err)
			return fmt.Errorf("%w: write to node %d on %s: %v", ErrCantSend, c.peer.num, c.channel, err)
		}
	}
	c.flushing = false
	if c.wclosed {
		c.batch.Reset() // left to us by markClosed
		if c.fd >= 0 {
			_ = unix.Close(c.fd)
			c.fd = -1
		}
	}
	return nil
}

// failWriteLocked closes the connection after a write error; the reader's
// end (connClosed) then reports the link lost.
func (c *conn) failWriteLocked(err error) {
	c.n.log.Debug("write failed", "peer", c.peer.num, "channel", c.channel, "err", err)
	if !c.wclosed {
		c.wclosed = true
		c.dead.Store(true)
		if c.credit != nil {
			c.credit.close()
		}
		if c.drained != nil {
			close(c.drained)
			c.drained = nil
		}
	}
	// The descriptor goes whether or not markClosed came first: it left it
	// open for us, the flusher.
	if c.fd >= 0 {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
		_ = unix.Close(c.fd)
		c.fd = -1
	}
	c.batch.Reset()
	c.endReader()
}

// routineFlush owns the queue while the socket is full: it waits for the
// socket to drain and writes on. It ends when the queue is empty or the
// connection closed; markClosed's shutdown wakes its poll.
//
// It is also the write deadline: a peer that reads nothing of the queue
// for WriteTimeout has the connection (and so its link) ended, which wakes
// every sender waiting for room, server handles included.
func (c *conn) routineFlush() {
	pfd := []unix.PollFd{{Events: unix.POLLOUT}}
	c.wmu.Lock()
	seen, since := c.written, time.Now()
	c.wmu.Unlock()
	for {
		c.wmu.Lock()
		if c.wclosed {
			c.flushing = false
			c.batch.Reset()
			if c.fd >= 0 {
				_ = unix.Close(c.fd)
				c.fd = -1
			}
			c.wmu.Unlock()
			return
		}
		pfd[0].Fd = int32(c.fd)
		c.wmu.Unlock()
		// A bounded wait, so a close that raced the shutdown is still seen.
		_, _ = unix.Poll(pfd, 100)
		c.wmu.Lock()
		_ = c.flushLocked(true)
		done := !c.flushing
		if !done {
			if now := time.Now(); c.written != seen {
				seen, since = c.written, now
			} else if now.Sub(since) > c.n.cfg.WriteTimeout {
				c.n.m.limitWriteTimeout.Inc()
				c.flushing = false
				c.failWriteLocked(errWriteStalled)
				done = true
			}
		}
		c.wmu.Unlock()
		if done {
			return
		}
	}
}

// writev is one write or writev system call on fd, without allocating.
func (c *conn) writev(fd int, bufs [][]byte) (int, error) {
	if len(bufs) == 1 {
		return ignoreNegative(unix.Write(fd, bufs[0]))
	}
	const iovMax = 1024
	if len(bufs) > iovMax {
		bufs = bufs[:iovMax]
	}
	c.iov = c.iov[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		c.iov = append(c.iov, v)
	}
	if len(c.iov) == 0 {
		return 0, unix.EPIPE // nothing left to write: the batch was emptied under us
	}
	r, _, e := syscall.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&c.iov[0])), uintptr(len(c.iov)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func ignoreNegative(n int, err error) (int, error) {
	if n < 0 {
		n = 0
	}
	return n, err
}

// sealLocked encrypts one frame into the batch as records.
func (c *conn) sealLocked(h *framing.Header, payload []byte) error {
	h.Length = uint32(len(payload))
	var hdr [framing.HeaderSize]byte
	h.Encode(hdr[:])
	buf, err := sealInto(c.batch.Extend(), c.tx, &c.sealBuf, hdr[:], payload)
	c.batch.Commit(buf)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCantSend, err)
	}
	return nil
}

// sendViaLoop is WriteEventLoop: hand an owned copy to gnet's loop.
func (c *conn) sendViaLoop(h *framing.Header, payload []byte) error {
	if c.gc == nil {
		return errConnClosed
	}
	h.Length = uint32(len(payload))
	var buf []byte
	if c.tx != nil {
		// Sealing and queueing under one lock keeps records in nonce order.
		c.wmu.Lock()
		defer c.wmu.Unlock()
		var hdr [framing.HeaderSize]byte
		h.Encode(hdr[:])
		var err error
		if buf, err = sealInto(nil, c.tx, &c.sealBuf, hdr[:], payload); err != nil {
			return fmt.Errorf("%w: %v", ErrCantSend, err)
		}
	} else {
		buf = make([]byte, framing.HeaderSize+len(payload))
		h.Encode(buf)
		copy(buf[framing.HeaderSize:], payload)
	}
	c.met.framesOut.Inc()
	c.met.bytesOut.Add(len(buf))
	if err := c.gc.AsyncWrite(buf, nil); err != nil {
		return fmt.Errorf("%w: %v", ErrCantSend, err)
	}
	return nil
}
