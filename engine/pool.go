package engine

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// job is one request handed from an event loop to a server handle. The
// payload was copied out of the loop's buffer into buf, which the handle
// returns to the node's buffer pool when done.
type job struct {
	svc  *service
	from *peer
	hdr  framing.Header
	buf  *[]byte
	conn *conn // the connection the request came on, which gets its credit back
	cost int   // the frame's frameCost, in credit bytes

	start time.Time // the request's arrival, for ci_ics_server_duration_seconds
	rc    *reqCtx   // the request's own context if it can be cancelled or times out; else nil
}

// handlePool is a set of server handles (worker goroutines) for one service,
// or for the priority channels. At most max handlers run at once; min are
// started up front and, like every handle started later, stay warm.
//
// The bookkeeping is lock-free: jobs wait in a bounded MPMC ring (Vyukov),
// idle handles in a tagged Treiber stack, and the two meet through the
// queued counter with a Dekker-style check on both sides:
//
//	dispatcher: enqueue; queued++; pop an idle handle and wake it
//	handle:     push self idle;    if queued > 0, pop an idle handle and wake it
//
// With sequentially consistent atomics at least one side sees the other, so
// a job is never left behind with a handle asleep. A handle parks on its own
// one-slot channel, which only the one who popped it writes to.
type handlePool struct {
	name    string
	min     int
	exec    func(w *handle, j *job)
	handles []handle

	ring     []ringCell
	ringMask uint64

	// The contended words, each on its own cache line: dispatchers and
	// handles on different CPUs would otherwise invalidate each other's
	// line on every operation.
	_       [64]byte
	idle    atomic.Uint64 // tag<<32 | (index+1) of the top idle handle
	_       [56]byte
	queued  atomic.Int64
	_       [56]byte
	enqPos  atomic.Uint64
	_       [56]byte
	deqPos  atomic.Uint64
	_       [56]byte
	started atomic.Int32
	running atomic.Int32 // handlers executing right now
	_       [56]byte

	// overflow takes jobs while the ring is full; rare, so a mutex is fine.
	// Once it is used, later jobs go there too until it drains, so that
	// jobs from one connection keep their order.
	overflowMu  sync.Mutex
	overflow    []job
	overflowLen atomic.Int64

	closed atomic.Bool
	wg     sync.WaitGroup
}

type ringCell struct {
	seq atomic.Uint64
	val job
}

// handle is one server handle: a goroutine and its per-handle state, which
// it reuses for every job so that serving allocates nothing.
type handle struct {
	idx  uint32
	next atomic.Uint32
	wake chan struct{}
	job  job        // the one being served; a field so that it is not allocated per job
	st   serveState // what its requests reuse, see Node.serve
}

const poolRingSize = 1024

func newHandlePool(name string, min, max int, exec func(*handle, *job)) *handlePool {
	p := &handlePool{
		name:     name,
		min:      min,
		exec:     exec,
		handles:  make([]handle, max),
		ring:     make([]ringCell, poolRingSize),
		ringMask: poolRingSize - 1,
	}
	for i := range p.ring {
		p.ring[i].seq.Store(uint64(i))
	}
	for i := range p.handles {
		p.handles[i].idx = uint32(i)
		p.handles[i].wake = make(chan struct{}, 1)
	}
	for i := 0; i < min; i++ {
		p.startHandle(false)
	}
	return p
}

// dispatch queues j and makes sure a handle will run it. It never blocks:
// it is called from event loops.
func (p *handlePool) dispatch(j *job) {
	p.enqueue(j)
	p.queued.Add(1)
	if idx, ok := p.popIdle(); ok {
		p.handles[idx].wake <- struct{}{}
		return
	}
	p.startHandle(true)
}

// startHandle starts one more handle if the pool is below its maximum.
func (p *handlePool) startHandle(busy bool) {
	for {
		n := p.started.Load()
		if int(n) >= len(p.handles) {
			return
		}
		if p.started.CompareAndSwap(n, n+1) {
			p.wg.Add(1)
			go p.routineHandle(&p.handles[n], busy)
			return
		}
	}
}

func (p *handlePool) routineHandle(w *handle, busy bool) {
	defer p.wg.Done()
	for {
		if busy {
			for p.dequeue(&w.job) {
				p.queued.Add(-1)
				p.running.Add(1)
				p.exec(w, &w.job)
				p.running.Add(-1)
				w.job = job{}
			}
		}
		busy = true
		if p.closed.Load() {
			return
		}
		p.pushIdle(w.idx)
		if p.queued.Load() > 0 || p.closed.Load() {
			if idx, ok := p.popIdle(); ok {
				p.handles[idx].wake <- struct{}{}
			}
		}
		<-w.wake
	}
}

// close stops every handle after the jobs already queued have run.
func (p *handlePool) close() {
	p.closed.Store(true)
	// Wake every idle handle; each sees closed once the queue is empty.
	for {
		idx, ok := p.popIdle()
		if !ok {
			break
		}
		p.handles[idx].wake <- struct{}{}
	}
	p.wg.Wait()
}

func (p *handlePool) pushIdle(idx uint32) {
	for {
		h := p.idle.Load()
		p.handles[idx].next.Store(uint32(h))
		if p.idle.CompareAndSwap(h, (h>>32+1)<<32|uint64(idx+1)) {
			return
		}
	}
}

func (p *handlePool) popIdle() (uint32, bool) {
	for {
		h := p.idle.Load()
		top := uint32(h)
		if top == 0 {
			return 0, false
		}
		next := p.handles[top-1].next.Load()
		if p.idle.CompareAndSwap(h, (h>>32+1)<<32|uint64(next)) {
			return top - 1, true
		}
	}
}

func (p *handlePool) enqueue(j *job) {
	if p.overflowLen.Load() == 0 && p.ringPush(j) {
		return
	}
	p.overflowMu.Lock()
	if len(p.overflow) == 0 && p.ringPush(j) {
		p.overflowMu.Unlock()
		return
	}
	p.overflow = append(p.overflow, *j)
	p.overflowLen.Store(int64(len(p.overflow)))
	p.overflowMu.Unlock()
}

func (p *handlePool) dequeue(j *job) bool {
	if p.ringPop(j) {
		return true
	}
	if p.overflowLen.Load() == 0 {
		return false
	}
	p.overflowMu.Lock()
	defer p.overflowMu.Unlock()
	// The ring may have been refilled by a producer that found overflow empty.
	if p.ringPop(j) {
		return true
	}
	if len(p.overflow) == 0 {
		return false
	}
	*j = p.overflow[0]
	p.overflow[0] = job{}
	p.overflow = p.overflow[1:]
	if len(p.overflow) == 0 {
		p.overflow = nil
	}
	p.overflowLen.Store(int64(len(p.overflow)))
	return true
}

// ringPush and ringPop are Dmitry Vyukov's bounded MPMC queue: each cell's
// sequence number says whether it is ready for the producer or consumer at
// a given position, so producers and consumers only race on the positions.
func (p *handlePool) ringPush(j *job) bool {
	for {
		pos := p.enqPos.Load()
		c := &p.ring[pos&p.ringMask]
		seq := c.seq.Load()
		switch {
		case seq == pos:
			if p.enqPos.CompareAndSwap(pos, pos+1) {
				c.val = *j
				c.seq.Store(pos + 1)
				return true
			}
		case seq < pos:
			return false // full
		}
	}
}

func (p *handlePool) ringPop(j *job) bool {
	for {
		pos := p.deqPos.Load()
		c := &p.ring[pos&p.ringMask]
		seq := c.seq.Load()
		switch {
		case seq == pos+1:
			if p.deqPos.CompareAndSwap(pos, pos+1) {
				*j = c.val
				c.val = job{}
				c.seq.Store(pos + p.ringMask + 1)
				return true
			}
		case seq < pos+1:
			return false // empty
		}
	}
}
