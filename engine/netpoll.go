package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

// ReadNetpoller: each connection is read by a goroutine of its own,
// routineRead, blocked in (*net.TCPConn).Read and so parked in Go's
// netpoller. The runtime wakes it on the thread that polled, and the
// caller whose reply it reads is readied from there; no event loop holds a
// P in epoll_wait meanwhile (docs/ARCHITECTURE.md, "Reading"). The reader
// decodes frames in place from its own buffer and hands them to the same
// traffic and connClosed as gnet's loops; writes are unchanged (our dup of
// the socket, writev from the senders).

// Read buffer sizes of a netReader. A connection in its handshake can only
// send a hello or a confirmation, so a stranger costs at most
// readBufHandshake; a ready one reads in readBufReady chunks and grows the
// buffer only to what the frame (or encrypted record) at its head needs,
// which the decoder has bounded by MaxPayload first.
const (
	readBufHandshake = 2 << 10
	readBufReady     = 16 << 10
)

// A whole handshake frame fits the handshake buffer (a compile-time check).
var _ [readBufHandshake - framing.HeaderSize - maxHelloFrame]struct{}

// netReader is a netpoller reader's buffer: the bytes read from the socket
// and not yet consumed are buf[r:w]. It implements inbound. Only the
// connection's reader goroutine touches it.
type netReader struct {
	nc   net.Conn
	buf  []byte
	r, w int
}

// Peek returns the first k unconsumed bytes, all of them when k <= 0; they
// alias the buffer until the next Discard or read.
func (b *netReader) Peek(k int) ([]byte, error) {
	if k <= 0 {
		return b.buf[b.r:b.w], nil
	}
	if k > b.w-b.r {
		return b.buf[b.r:b.w], io.ErrShortBuffer
	}
	return b.buf[b.r : b.r+k], nil
}

// Discard consumes k bytes (all, when fewer are buffered; none for k <= 0,
// unlike gnet, whose Discard(0) drops everything).
func (b *netReader) Discard(k int) (int, error) {
	k = max(0, min(k, b.w-b.r))
	b.r += k
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
	return k, nil
}

func (b *netReader) InboundBuffered() int { return b.w - b.r }

func (b *netReader) RemoteAddr() net.Addr { return b.nc.RemoteAddr() }

// errReadBufferFull is a state the sizes above make impossible: the buffer
// full of bytes that hold no whole frame, yet no larger frame announced.
var errReadBufferFull = errors.New("read buffer full without a frame to grow it for")

// makeRoom prepares b for the next read, after its frames were handled:
// the unconsumed tail moves to the front, and the buffer is sized for
// what c is now (in its handshake or ready) and for the frame at its head.
// A buffer grown for a huge frame is released once that frame is gone.
func (b *netReader) makeRoom(c *conn) error {
	if b.r > 0 {
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	want := readBufHandshake
	if c.ready {
		want = readBufReady
	}
	want = max(want, c.need) // bounded by the decoder: MaxPayload (maxHelloFrame in the handshake) or a record's size
	switch {
	case want > len(b.buf):
		buf := make([]byte, want)
		b.w = copy(buf, b.buf[:b.w])
		b.buf = buf
	case b.w == 0 && len(b.buf) > keepBufferMax:
		b.buf = make([]byte, want) // one huge frame passed; do not pin its buffer
	case b.w == len(b.buf):
		return errReadBufferFull
	}
	return nil
}

// attachSocket binds c to nc, which its netpoller reader will read, and
// dups the socket for the write side (see conn.fd).
func (c *conn) attachSocket(nc net.Conn) error {
	c.nc = nc
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T has no descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("dup: %w", derr)
	}
	c.setWriteFD(fd)
	return nil
}

// testHookAttachAccepted, when set, can fail an accepted connection's
// attachSocket as though its write dup had found no descriptor.
var testHookAttachAccepted atomic.Pointer[func() error]

// readAccepted starts serving an accepted connection with a netpoller
// reader: what OnOpen does for the event loops. An error means the
// connection was shed because its write descriptor could not be had
// (acceptLoop counts that as the descriptor limit).
func (n *Node) readAccepted(nc *net.TCPConn) error {
	c := n.newConn(false, nil, 0)
	n.accepted.Add(1) // connClosed undoes it, whatever happens from here
	c.source, c.remote = remoteIP(nc.RemoteAddr()), nc.RemoteAddr().String()
	var err error
	if h := testHookAttachAccepted.Load(); h != nil {
		err = (*h)()
	}
	if err == nil {
		err = c.attachSocket(nc)
	}
	if err != nil {
		shed(nc)
		n.connClosed(c, err)
		return err
	}
	n.admitPending(c)
	if !n.startReader(c) {
		c.close()
		n.connClosed(c, ErrClosed)
	}
	return nil
}

// readDialled starts the netpoller reader of a dialled, handshaken
// connection. On error the caller still owns nc.
func (n *Node) readDialled(dctx context.Context, c *conn, nc net.Conn) error {
	if dctx.Err() != nil {
		// dialHandshake's deadline-on-cancel may have fired as it
		// returned; the socket would time out under the reader.
		return fmt.Errorf("%w: node %d: dial: %v", ErrNodeDown, c.peer.num, ctxError(dctx))
	}
	if err := c.attachSocket(nc); err != nil {
		c.markClosed()
		return fmt.Errorf("%w: node %d: %v", ErrCantSend, c.peer.num, err)
	}
	if !n.startReader(c) {
		c.markClosed()
		return ErrClosed
	}
	return nil
}

// startReader runs c's netpoller reader, which owns c.nc from then on and
// ends it. It refuses (false) once Close has begun ending the readers.
func (n *Node) startReader(c *conn) bool {
	size := readBufHandshake
	if c.ready {
		size = readBufReady
	}
	rd := &netReader{nc: c.nc, buf: make([]byte, size)}
	n.readersMu.Lock()
	defer n.readersMu.Unlock()
	if n.readersClosed {
		return false
	}
	if n.readers == nil {
		n.readers = make(map[*conn]struct{})
	}
	n.readers[c] = struct{}{}
	n.readersWG.Add(1)
	if c.outbound && c.ready {
		// Its callers read their replies themselves (callread.go).
		c.reads = newCallerReads(rd, n.callerIdle)
		go n.routineWatch(c)
		return true
	}
	go n.routineRead(c, rd)
	return true
}

// routineRead is a connection's netpoller reader: it reads until the
// connection ends (the peer closed it, the node closed it, a protocol
// violation), then tears it down, exactly once.
func (n *Node) routineRead(c *conn, rd *netReader) {
	defer n.readersWG.Done()
	err := n.readLoop(c, rd)
	_ = rd.nc.Close()
	n.connClosed(c, err)
	n.readersMu.Lock()
	delete(n.readers, c)
	n.readersMu.Unlock()
}

// readLoop reads and handles frames until the connection must end, and
// returns why: nil when the node or the frame handling closed it (the
// reason is logged already), the read error when the peer did.
func (n *Node) readLoop(c *conn, rd *netReader) error {
	for {
		if ended, err := n.readStep(c, rd); ended {
			return err
		}
	}
}

// readStep reads rd's socket once and handles what came. ended reports
// that the connection must end, and err why (as readLoop returns it). A
// read deadline that passed with nothing read is not an end: only callers
// reading their replies set one (callread.go).
func (n *Node) readStep(c *conn, rd *netReader) (ended bool, err error) {
	if err := rd.makeRoom(c); err != nil {
		n.closeReason(c, rd, err)
		return true, nil
	}
	k, err := rd.nc.Read(rd.buf[rd.w:])
	rd.w += k
	if k > 0 && !n.traffic(c, rd) {
		return true, nil
	}
	switch {
	case err == nil:
		return false, nil
	case c.wclosedFast():
		return true, nil // closed by the node
	case k == 0 && errors.Is(err, os.ErrDeadlineExceeded):
		return false, nil
	}
	return true, readError(err)
}

// readError is why a peer's connection ended, from the read that saw it.
func readError(err error) error { return fmt.Errorf("read: %w", err) }

// stopReaders closes every connection a netpoller reader serves and waits
// until all the readers have ended; none starts after it.
func (n *Node) stopReaders() {
	n.readersMu.Lock()
	n.readersClosed = true
	cs := make([]*conn, 0, len(n.readers))
	for c := range n.readers {
		cs = append(cs, c)
	}
	n.readersMu.Unlock()
	for _, c := range cs {
		c.close()
	}
	n.readersWG.Wait()
}

// routineTick does for netpoller readers what gnet's ticker does for the
// loops: it sheds connections that did not finish their handshake in
// time. It ends with the node's context.
func (n *Node) routineTick() {
	t := time.NewTimer(n.shedLateHandshakes())
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			t.Reset(n.shedLateHandshakes())
		}
	}
}
