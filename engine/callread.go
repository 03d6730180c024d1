package engine

import (
	"sync"
	"sync/atomic"
	"time"
)

// Callers read their own replies (netpoller mode, connections this node
// dialled).
//
// A reply travels back on its request's connection. If a reader goroutine
// of the connection's own reads it, the caller parked on its handle has to
// be readied from there, and readying a goroutine while another P is idle
// wakes a second thread (the runtime's wakep): a futex wake, on a small VM
// a cross-CPU interrupt, and a thread spinning on the CPU the peer process
// wants. Measured on this 2-vCPU machine in raw TCP's fast mode (64 B echo,
// server in another process, alternating blocks): ICS p50 1.86-1.93x raw
// TCP with the client at GOMAXPROCS=2 against 1.05-1.15x at GOMAXPROCS=1,
// whatever the server's GOMAXPROCS. So the caller reads instead, as a raw
// TCP client does: after sending, it takes the connection's read role and
// reads until its own reply is in, handling every frame on the way (other
// callers' replies, credit grants), then passes the role to another waiting
// caller if there is one. The runtime then wakes the caller itself from
// the netpoller, on the thread that polled, and nothing else.
//
// The connection's own goroutine (routineWatch) stays its owner: it reads
// only while no caller waits (so that credit grants, late replies and the
// peer's close are seen on an idle connection), and it alone tears the
// connection down. It starts reading only after the connection has been
// without waiting callers for callerIdle, so that a caller arriving while
// the previous one has just left finds the role free; a caller that finds
// the watcher reading waits on its handle as before, and the watcher hands
// the role back after that batch.
//
// Only callers that cannot be cancelled (ctx.Done() == nil) read: one that
// reads is blocked in the socket, where only the connection's end or data
// wakes it, and a cancellable call must return the moment its context ends.

// callerIdle is how long a dialled connection goes without a waiting caller
// before its watcher reads it (Node.callerIdle; tests change it). Short
// enough that a credit grant or a peer's close on an idle connection is
// seen within it; long against the gap between one caller's reply and its
// next call, so that a caller in a loop never finds the watcher holding
// the role.
const callerIdle = 2 * time.Millisecond

// callerReads is the read side of a dialled netpoller connection, shared by
// its watcher and the callers waiting on it. rd is touched only by the
// holder of role.
type callerReads struct {
	role    sync.Mutex
	rd      *netReader
	waiting atomic.Int32  // callers between their request and their reply on this connection
	arrived atomic.Uint64 // callers that came to read, ever: the watcher steps back after a read they came during
	// others counts goroutines waiting for what this connection brings
	// without reading it: cancellable callers and senders out of credit.
	// While there are some, the watcher reads as soon as no caller does,
	// not callerIdle later.
	others    atomic.Int32
	turn      chan struct{} // capacity 1: the role was let go while callers wait
	wake      chan struct{} // capacity 1: the watcher should look again
	idle      *time.Timer   // fires idleAfter after the last waiting caller left
	idleAfter time.Duration

	// ended is set, under role, by whoever read the connection's end; err
	// is why (nil: the frame handling closed it and said why already).
	ended atomic.Bool
	err   error
}

func newCallerReads(rd *netReader, idleAfter time.Duration) *callerReads {
	cr := &callerReads{rd: rd, turn: make(chan struct{}, 1), wake: make(chan struct{}, 1), idleAfter: idleAfter}
	cr.idle = time.AfterFunc(time.Hour, cr.kick)
	cr.idle.Stop()
	return cr
}

// kick wakes the watcher.
func (cr *callerReads) kick() {
	select {
	case cr.wake <- struct{}{}:
	default:
	}
}

// passTurn tells one waiting caller, if any, that the role is free.
func (cr *callerReads) passTurn() {
	select {
	case cr.turn <- struct{}{}:
	default:
	}
}

// readOnce reads the socket once and handles what came, with the role
// held. It reports whether the connection has ended (and records why).
func (n *Node) readOnce(c *conn, cr *callerReads) bool {
	rd := cr.rd
	if err := rd.makeRoom(c); err != nil {
		n.closeReason(c, rd, err)
		cr.ended.Store(true)
		return true
	}
	k, err := rd.nc.Read(rd.buf[rd.w:])
	rd.w += k
	if k > 0 && !n.traffic(c, rd) {
		cr.ended.Store(true)
		return true
	}
	if err != nil {
		if !c.wclosedFast() { // else closed by the node
			cr.err = readError(err)
		}
		cr.ended.Store(true)
		return true
	}
	return false
}

// readForReply is how a caller that cannot be cancelled waits for call s,
// sent on c: it reads c itself while it holds the role, and otherwise waits
// for its reply or its turn. It returns once s is done; the caller then
// takes s.done's value, which is there or comes with the link's end.
func (n *Node) readForReply(c *conn, s *clientHandle) {
	cr := c.reads
	cr.arrived.Add(1)
	cr.waiting.Add(1)
	for len(s.done) == 0 && !cr.ended.Load() {
		if !cr.role.TryLock() {
			select {
			case <-s.done:
				s.done <- struct{}{} // put it back for waitCall
			case <-cr.turn:
			}
			continue
		}
		ended := false
		for len(s.done) == 0 && !cr.ended.Load() && !ended {
			ended = n.readOnce(c, cr)
		}
		if len(s.done) > 0 {
			n.selfReadReplies.Add(1)
		}
		cr.role.Unlock()
		if ended {
			cr.kick() // the watcher tears the connection down
		}
	}
	switch {
	case cr.waiting.Add(-1) > 0:
		cr.passTurn()
	case cr.others.Load() > 0:
		cr.kick()
	default:
		cr.idle.Reset(cr.idleAfter)
	}
}

// awaitOther records a goroutine that waits for something c brings (a
// reply, a credit grant) without reading c itself; done undoes it. If no
// caller is reading c, the watcher is told to.
func (cr *callerReads) awaitOther() {
	cr.others.Add(1)
	if cr.waiting.Load() == 0 {
		cr.kick()
	}
}

func (cr *callerReads) doneOther() { cr.others.Add(-1) }

// routineWatch owns a dialled netpoller connection: it reads while no
// caller does, and tears the connection down, exactly once, when it ends.
func (n *Node) routineWatch(c *conn) {
	defer n.readersWG.Done()
	err := n.watchLoop(c)
	_ = c.reads.rd.nc.Close()
	c.reads.idle.Stop()
	n.connClosed(c, err)
	n.readersMu.Lock()
	delete(n.readers, c)
	n.readersMu.Unlock()
}

func (n *Node) watchLoop(c *conn) error {
	cr := c.reads
	for {
		if cr.role.TryLock() {
			// Until a caller comes: one that came during a read has been
			// handed its reply (or waits for it), and the next one should
			// find the role free, so the watcher steps back even if that
			// caller has already left (its leaving re-arms the idle timer).
			for seen := cr.arrived.Load(); !cr.ended.Load() && cr.waiting.Load() == 0 && cr.arrived.Load() == seen; {
				n.readOnce(c, cr)
			}
			ended := cr.ended.Load()
			cr.role.Unlock()
			if ended {
				cr.role.Lock() // err was written under the role
				err := cr.err
				cr.role.Unlock()
				return err
			}
			cr.passTurn() // callers came while this read
		}
		<-cr.wake
	}
}
