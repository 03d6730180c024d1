package engine

import (
	"math/rand/v2"
	"sync/atomic"
)

// A client handle is one outstanding RPC. Handles live in a fixed table and
// are found by transaction id: xid = generation<<slotBits | slot. Every time
// a slot is armed it draws a new random generation (40 bits, never 0 and
// never the slot's previous one), so
//   - a reply that arrives after its caller gave up (deadline, node down)
//     names a generation that no longer matches and is dropped instead of
//     completing somebody else's call;
//   - a reply meant for this node's previous run (a peer answering a call
//     made before a restart) cannot match a call of this run: generations
//     do not start from a known value at boot;
//   - a stranger cannot guess the xid of a call in flight to forge its
//     reply (one chance in 2^40 per try), which matters in open mode.
//
// Phases of a slot, in its state word (generation<<2 | phase):
//
//	free ──acquire+arm──▶ waiting ──begin(reader)──▶ completing ──finish──▶ done ──release──▶ free
//	                        └──abandon(caller: deadline, send failure)──────────────────────▶ free
//
// Every transition is a CAS on the state word, so exactly one of the reader
// (reply or node-down) and the caller (deadline) wins a waiting slot. No
// lock is taken on the way: free slots form a Treiber stack whose head
// carries a tag against ABA, and the only blocking is the caller parked on
// its slot's own channel.
const (
	phaseFree       = 0
	phaseWaiting    = 1
	phaseCompleting = 2
	phaseDone       = 3
	phaseMask       = 3

	// slotBits of an xid number the slot: MaxOutstandingCalls is at most
	// 1<<slotBits. The generation takes the remaining 40.
	slotBits = 24
	slotMask = 1<<slotBits - 1
	genBits  = 64 - slotBits
	genMask  = 1<<genBits - 1
)

// xidSlot is the slot an xid names.
func xidSlot(xid uint64) uint32 { return uint32(xid & slotMask) }

// xidGen is the generation an xid names.
func xidGen(xid uint64) uint64 { return xid >> slotBits }

// newGeneration draws a slot's next generation: random (the runtime's
// ChaCha8 generator: no lock, no allocation), never 0, so that no xid is
// ever 0 (the one-way value), and never old.
func newGeneration(old uint64) uint64 {
	for {
		if g := rand.Uint64() & genMask; g != 0 && g != old {
			return g
		}
	}
}

type clientHandle struct {
	state atomic.Uint64 // generation<<2 | phase
	peer  atomic.Uint32 // callee; written before the slot turns waiting
	next  atomic.Uint32 // free-stack link: index+1 of the next free slot, 0 ends

	// done receives exactly one value per completion; capacity 1 so the
	// completing reader never blocks.
	done chan struct{}

	// reply is the caller's buffer; the reader appends the results to it.
	// err is the call's outcome. Both are written by whoever owns the
	// completing phase and read by the caller after done.
	reply []byte
	err   error

	// cancelConn is the connection a cancellable call's request went on,
	// and prio its priority: where the caller sends TypeCancel if it gives
	// up. Set and read only by the caller; nil for calls that cannot end.
	cancelConn *conn
	prio       uint8

	// sentOn is the dialled netpoller connection the request went on
	// (callread.go), whose reply the caller may read itself; nil with
	// event loops. Set and read only by the caller.
	sentOn *conn

	_ [8]byte // keep neighbouring slots off each other's cache line
}

type handleTable struct {
	head  atomic.Uint64 // tag<<32 | (index+1) of the top free slot; 0 index means empty
	_     [56]byte      // the head is the one contended word: keep it alone on its line
	inUse atomic.Int64  // for tests and metrics
	_     [56]byte
	slots []clientHandle
}

func newHandleTable(n int) *handleTable {
	t := &handleTable{slots: make([]clientHandle, n)}
	for i := range t.slots {
		s := &t.slots[i]
		s.done = make(chan struct{}, 1)
		s.state.Store(newGeneration(0)<<2 | phaseFree)
		// Build the free stack so that slot 0 is on top.
		if i+1 < n {
			s.next.Store(uint32(i + 2))
		}
	}
	t.head.Store(1)
	return t
}

// acquire pops a free slot; ok is false when every slot is in use.
func (t *handleTable) acquire() (idx uint32, ok bool) {
	for {
		h := t.head.Load()
		top := uint32(h)
		if top == 0 {
			return 0, false
		}
		next := t.slots[top-1].next.Load()
		if t.head.CompareAndSwap(h, (h>>32+1)<<32|uint64(next)) {
			t.inUse.Add(1)
			return top - 1, true
		}
	}
}

func (t *handleTable) push(idx uint32) {
	for {
		h := t.head.Load()
		t.slots[idx].next.Store(uint32(h))
		if t.head.CompareAndSwap(h, (h>>32+1)<<32|uint64(idx+1)) {
			t.inUse.Add(-1)
			return
		}
	}
}

// arm turns an acquired slot into a waiting call to peer, under a new
// generation, and returns its xid.
func (t *handleTable) arm(idx uint32, peer NodeNum, reply []byte) uint64 {
	s := &t.slots[idx]
	gen := newGeneration(s.state.Load() >> 2)
	s.peer.Store(uint32(peer))
	s.reply = reply
	s.err = nil
	s.cancelConn, s.sentOn = nil, nil
	s.state.Store(gen<<2 | phaseWaiting)
	return gen<<slotBits | uint64(idx)
}

// begin claims the waiting call xid for completion by a reply from peer.
// It returns nil for an unknown, stale or already finished xid, or one
// whose callee is not peer (a node cannot complete calls made to another).
func (t *handleTable) begin(xid uint64, peer NodeNum) *clientHandle {
	idx := xidSlot(xid)
	if int(idx) >= len(t.slots) {
		return nil
	}
	s := &t.slots[idx]
	gen := xidGen(xid)
	if s.peer.Load() != uint32(peer) {
		return nil
	}
	if !s.state.CompareAndSwap(gen<<2|phaseWaiting, gen<<2|phaseCompleting) {
		return nil
	}
	return s
}

// finish publishes a completion started by begin and wakes the caller.
func (t *handleTable) finish(s *clientHandle) {
	st := s.state.Load()
	s.state.Store(st&^phaseMask | phaseDone)
	s.done <- struct{}{}
}

// abandon gives up a waiting call on the caller's side. It reports false
// when a reader has already claimed the call: the caller must then wait on
// done, which is about to be signalled, and release as usual.
func (t *handleTable) abandon(xid uint64) bool {
	idx := xidSlot(xid)
	s := &t.slots[idx]
	gen := xidGen(xid)
	if !s.state.CompareAndSwap(gen<<2|phaseWaiting, gen<<2|phaseFree) {
		return false
	}
	s.reply, s.err = nil, nil
	t.push(idx)
	return true
}

// release returns a done slot to the free stack; its next arm draws a new
// generation.
func (t *handleTable) release(xid uint64) {
	idx := xidSlot(xid)
	s := &t.slots[idx]
	s.reply, s.err, s.cancelConn, s.sentOn = nil, nil, nil, nil
	s.state.Store(xidGen(xid)<<2 | phaseFree)
	t.push(idx)
}

// failPeer completes every call waiting on peer with err, at once. With
// peer 0 it fails every waiting call (node shutdown).
func (t *handleTable) failPeer(peer NodeNum, err error) int {
	n := 0
	for i := range t.slots {
		s := &t.slots[i]
		st := s.state.Load()
		if st&phaseMask != phaseWaiting || (peer != 0 && s.peer.Load() != uint32(peer)) {
			continue
		}
		if !s.state.CompareAndSwap(st, st&^phaseMask|phaseCompleting) {
			continue
		}
		s.err = err
		t.finish(s)
		n++
	}
	return n
}
