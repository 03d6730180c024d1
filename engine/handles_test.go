package engine

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestHandleTableGenerations(t *testing.T) {
	tab := newHandleTable(2)
	idx, ok := tab.acquire()
	if !ok {
		t.Fatal("empty table")
	}
	xid := tab.arm(idx, 5, nil)
	if xid == 0 {
		t.Fatal("xid 0 is reserved for one-way messages")
	}
	if tab.begin(xid, 6) != nil {
		t.Fatal("a reply from another node completed the call")
	}
	if !tab.abandon(xid) {
		t.Fatal("abandon of a waiting call failed")
	}
	if tab.begin(xid, 5) != nil {
		t.Fatal("a late reply completed an abandoned call")
	}
	// The slot comes back with a new generation: the old xid stays dead.
	idx2, _ := tab.acquire()
	idx3, _ := tab.acquire()
	if _, ok := tab.acquire(); ok {
		t.Fatal("table of 2 gave a third handle")
	}
	xid2 := tab.arm(idx2, 5, nil)
	xid3 := tab.arm(idx3, 5, nil)
	for _, x := range []uint64{xid2, xid3} {
		if x == xid {
			t.Fatal("reused slot kept its generation")
		}
	}
	if tab.begin(xid, 5) != nil {
		t.Fatal("stale xid completed a reused slot")
	}
	s := tab.begin(xid2, 5)
	if s == nil {
		t.Fatal("current xid not found")
	}
	s.reply = append(s.reply, 'x')
	tab.finish(s)
	<-s.done
	if tab.abandon(xid2) {
		t.Fatal("abandon won against a finished completion")
	}
	tab.release(xid2)
	if n := tab.failPeer(5, ErrNodeDown); n != 1 {
		t.Fatalf("failPeer failed %d calls, want 1", n)
	}
	<-tab.slots[xidSlot(xid3)].done
	if tab.slots[xidSlot(xid3)].err != ErrNodeDown {
		t.Fatal("failPeer did not set the error")
	}
	tab.release(xid3)
	if tab.inUse.Load() != 0 {
		t.Fatalf("%d handles in use", tab.inUse.Load())
	}
}

// TestHandleTableRace hammers acquire/complete/abandon from many goroutines;
// the race detector and the final count check the protocol.
func TestHandleTableRace(t *testing.T) {
	tab := newHandleTable(64)
	var wg sync.WaitGroup
	var completed, abandoned atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				idx, ok := tab.acquire()
				if !ok {
					continue
				}
				xid := tab.arm(idx, 1, nil)
				done := make(chan struct{})
				go func() { // the "reader"
					if s := tab.begin(xid, 1); s != nil {
						tab.finish(s)
					}
					close(done)
				}()
				if i%2 == 0 && tab.abandon(xid) {
					abandoned.Add(1)
				} else {
					<-tab.slots[idx].done
					tab.release(xid)
					completed.Add(1)
				}
				<-done
			}
		}()
	}
	wg.Wait()
	if tab.inUse.Load() != 0 {
		t.Fatalf("%d handles leaked (completed %d, abandoned %d)", tab.inUse.Load(), completed.Load(), abandoned.Load())
	}
}

// mutexTable is the obvious alternative to handleTable: a map of pending
// calls under one mutex. BenchmarkHandleTable compares the two.
type mutexTable struct {
	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan struct{}
}

func (m *mutexTable) add() (uint64, chan struct{}) {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.next++
	id := m.next
	m.pending[id] = ch
	m.mu.Unlock()
	return id, ch
}

func (m *mutexTable) complete(id uint64) {
	m.mu.Lock()
	ch := m.pending[id]
	delete(m.pending, id)
	m.mu.Unlock()
	if ch != nil {
		ch <- struct{}{}
	}
}

// BenchmarkHandleTable: acquire, complete as a reader would, wait, release;
// all goroutines at once (RunParallel), as RPC callers and event loops do.
// The "-oversubscribed" variants run 64 goroutines per CPU, as a node with
// hundreds of concurrent callers does: there a mutex holder that is
// descheduled stalls everyone, a CAS loser just retries.
func BenchmarkHandleTable(b *testing.B) {
	for _, par := range []int{1, 64} {
		suffix := ""
		if par > 1 {
			suffix = "-oversubscribed"
		}
		b.Run("lockfree"+suffix, func(b *testing.B) {
			tab := newHandleTable(16384)
			b.ReportAllocs()
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					idx, ok := tab.acquire()
					if !ok {
						b.Fatal("table full")
					}
					xid := tab.arm(idx, 1, nil)
					s := tab.begin(xid, 1)
					tab.finish(s)
					<-s.done
					tab.release(xid)
				}
			})
		})
		b.Run("mutex-map"+suffix, func(b *testing.B) {
			m := &mutexTable{pending: make(map[uint64]chan struct{})}
			b.ReportAllocs()
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id, ch := m.add()
					m.complete(id)
					<-ch
				}
			})
		})
	}
}
