package engine

import (
	"context"
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
// callers' replies, credit grants), then passes the role on: to the one
// caller still waiting, or, with two or more waiting, to the connection's
// goroutine, which reads for them all. The runtime then wakes the caller
// itself from the netpoller, on the thread that polled, and nothing else.
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
// A reader is blocked in the socket, where only data, the connection's end
// or a read deadline wakes it: a caller whose context can end reads in
// slices (readSliceMin..readSliceMax) and looks at its context between them.

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
	waiting atomic.Int32 // callers between their request and their reply on this connection
	// arrived counts callers that came to read, and replies read (whose
	// callers come next, if they have not yet): the watcher steps back
	// after a read during which it moved. Counting only arrivals, a reply
	// the watcher read before its caller came let the watcher read on,
	// and the next call was handed its reply too (TestCallerReadsOwnReply:
	// calls 0 and 1 handed in 15 of 60 runs).
	arrived atomic.Uint64
	// selfReads counts the replies their callers read themselves (tests
	// look at it); beside the counters every caller touches already.
	selfReads atomic.Uint64
	// others counts goroutines waiting for what this connection brings
	// without reading it: senders out of credit. While there are some, the
	// watcher reads as soon as no caller does, not callerIdle later.
	others atomic.Int32
	turn   chan struct{} // capacity 1: the role was let go while callers wait
	// handed: a caller let the role go with two or more others waiting;
	// the watcher reads for them (see readForReply's end).
	handed    atomic.Bool
	wake      chan struct{} // capacity 1: the watcher should look again
	idle      *time.Timer   // fires idleAfter after the last waiting caller left, or later
	idleArmed atomic.Bool   // idle is running
	idleAfter time.Duration
	leftAt    atomic.Int64 // when the last waiting caller left (UnixNano); the connection's start before the first

	// deadline is the read deadline on rd.nc, set by the role holder
	// (zero: none). Only the holder reads or writes it.
	deadline time.Time

	// ended is set, under role, by whoever read the connection's end; err
	// is why (nil: the frame handling closed it and said why already).
	ended atomic.Bool
	err   error
}

func newCallerReads(rd *netReader, idleAfter time.Duration) *callerReads {
	cr := &callerReads{rd: rd, turn: make(chan struct{}, 1), wake: make(chan struct{}, 1), idleAfter: idleAfter}
	// A new connection counts as just left by a caller: the call that
	// dialled it is about to read it, and the watcher reads only after
	// idleAfter (or for a sender waiting for the first grant).
	cr.leftAt.Store(time.Now().UnixNano())
	cr.idleArmed.Store(true)
	cr.idle = time.AfterFunc(idleAfter, cr.idleFired)
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
	ended, err := n.readStep(c, cr.rd)
	if ended {
		cr.err = err
		cr.ended.Store(true)
	}
	return ended
}

// Reading callers whose context can end read in slices: the read deadline
// is the context's deadline or the end of the slice, whichever is sooner,
// and between slices the caller looks at its context. A slice starts at
// readSliceMin and doubles, up to readSliceMax: a cancelled call returns
// within a millisecond or two while its reply is due soon, and a call
// waiting seconds for a slow handler costs a few wake-ups a second. No
// allocation, unlike context.AfterFunc, which would interrupt the read the
// moment the context ends.
const (
	readSliceMin = time.Millisecond
	readSliceMax = 32 * time.Millisecond
)

// setReadDeadline sets the role holder's read deadline (zero: none),
// skipping the call when it would not change it.
func (cr *callerReads) setReadDeadline(t time.Time) {
	if t.Equal(cr.deadline) {
		return
	}
	cr.deadline = t
	_ = cr.rd.nc.SetReadDeadline(t)
}

// readForReply is how a caller waits for call s, sent on c: it reads c
// itself while it holds the role, and otherwise waits for its reply, its
// turn or its context's end. It returns once s is done, c has ended or ctx
// has; waitCall then takes s.done's value (there, or coming with the
// link's end) or gives the call up.
func (n *Node) readForReply(ctx context.Context, c *conn, s *clientHandle) {
	cr := c.reads
	ctxDone := ctx.Done() // nil when it cannot end: no slices, no checks
	cr.arrived.Add(1)
	cr.waiting.Add(1)
	slice := readSliceMin
	turn := false // holding a turn token not yet used
	for len(s.done) == 0 && !cr.ended.Load() && (ctxDone == nil || ctx.Err() == nil) {
		if !cr.role.TryLock() {
			turn = false // the token is spent on this try: the holder passes another
			select {
			case <-s.done:
				s.done <- struct{}{} // put it back for waitCall
			case <-cr.turn:
				turn = true
			case <-ctxDone:
			}
			continue
		}
		turn = false
		ended := false
		for len(s.done) == 0 && !cr.ended.Load() && !ended {
			var until time.Time
			if ctxDone != nil {
				if ctx.Err() != nil {
					break
				}
				until = time.Now().Add(slice)
				if d, ok := ctx.Deadline(); ok && d.Before(until) {
					until = d
				}
				slice = min(2*slice, readSliceMax)
			}
			cr.setReadDeadline(until)
			ended = n.readOnce(c, cr)
		}
		if len(s.done) > 0 {
			cr.selfReads.Add(1)
		}
		cr.role.Unlock()
		if ended {
			cr.kick() // the watcher tears the connection down
		}
		turn = true // the role is free: another waiter may take it
	}
	// Only a goroutine that let the role go, or got a turn it did not use,
	// passes one on: waiters that are simply handed their replies do not,
	// or every completed call would wake another waiter for nothing. With
	// two or more waiting the watcher takes the role and reads for them
	// all, as a connection's reader did before callers read: passing it
	// from caller to caller, each reading only until its own reply, left
	// the connection unread between one leaving and the next waking, and
	// 256 callers made 20% fewer calls a second.
	switch left := cr.waiting.Add(-1); {
	case left > 0:
		switch {
		case !turn:
		case left >= 2:
			cr.handed.Store(true)
			cr.kick()
		default:
			cr.passTurn()
		}
	case cr.others.Load() > 0:
		cr.kick()
	default:
		cr.leftAt.Store(time.Now().UnixNano())
		cr.armIdle(cr.idleAfter)
	}
}

// armIdle starts the idle timer unless it is already running: a caller
// leaving does not move it (a timer reset per call on the RPC path), the
// watcher re-arms it for what is left when it fires early (watchNow).
func (cr *callerReads) armIdle(d time.Duration) {
	if !cr.idleArmed.Swap(true) {
		cr.idle.Reset(d)
	}
}

// idleFired is the idle timer's function.
func (cr *callerReads) idleFired() {
	cr.idleArmed.Store(false)
	cr.kick()
}

// watchNow reports whether the watcher should act now: a caller read the
// connection's end (the watcher tears it down), or no caller is reading
// and one of these holds: a sender waits for credit, the node closed the
// connection, or the last caller left idleAfter ago. A wake-up
// left over from earlier (the buffered kick of a credit wait the callers
// then served) must not make the watcher take the role between one
// caller's reply and the next one's call; it re-arms the idle timer for
// what is left instead.
func (cr *callerReads) watchNow(c *conn) bool {
	if cr.ended.Load() || cr.handed.Load() {
		return true
	}
	if cr.waiting.Load() > 0 {
		return false
	}
	if cr.others.Load() > 0 || c.wclosedFast() {
		return true
	}
	if rest := cr.idleAfter - time.Since(time.Unix(0, cr.leftAt.Load())); rest > 0 {
		cr.armIdle(rest)
		return false
	}
	return true
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
		if cr.watchNow(c) && cr.role.TryLock() {
			cr.setReadDeadline(time.Time{}) // a caller's slice is not the watcher's
			if !cr.handed.Swap(false) {
				// Idle: until a caller comes. One that came during a read
				// has been handed its reply (or waits for it), and the
				// next one should find the role free, so the watcher
				// steps back even if that caller has already left (its
				// leaving re-arms the idle timer).
				for seen := cr.arrived.Load(); !cr.ended.Load() && cr.waiting.Load() == 0 && cr.arrived.Load() == seen; {
					n.readOnce(c, cr)
				}
			}
			// Handed the role, or callers crowding in: read for them
			// while two or more wait; the last one reads for itself.
			for !cr.ended.Load() && cr.waiting.Load() >= 2 {
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
			if cr.waiting.Load() > 0 {
				cr.passTurn() // a caller waits: it reads for itself
			}
		}
		<-cr.wake
	}
}
