package engine

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestPoolBoundsConcurrency(t *testing.T) {
	const max = 3
	var running, peak, done atomic.Int32
	gate := make(chan struct{})
	p := newHandlePool("t", 1, max, func(_ *handle, j *job) {
		r := running.Add(1)
		for {
			pk := peak.Load()
			if r <= pk || peak.CompareAndSwap(pk, r) {
				break
			}
		}
		<-gate
		running.Add(-1)
		done.Add(1)
	})
	if p.started.Load() != 1 {
		t.Fatalf("min handles not started: %d", p.started.Load())
	}
	const jobs = 50
	for i := 0; i < jobs; i++ {
		p.dispatch(&job{cost: i})
	}
	eventually(t, "max handles busy", func() bool { return running.Load() == max })
	if q := p.queued.Load(); q != jobs-max {
		t.Fatalf("%d queued, want %d", q, jobs-max)
	}
	close(gate)
	eventually(t, "all jobs run", func() bool { return done.Load() == jobs })
	p.close()
	if peak.Load() > max {
		t.Fatalf("%d handlers ran at once, max %d", peak.Load(), max)
	}
	if p.started.Load() != max {
		t.Fatalf("%d handles started, want %d", p.started.Load(), max)
	}
}

// TestPoolOverflowKeepsOrder: a single handle serves jobs in dispatch order
// even when they spill past the ring into the overflow list.
func TestPoolOverflowKeepsOrder(t *testing.T) {
	gate := make(chan struct{})
	var got []int
	p := newHandlePool("t", 0, 1, func(_ *handle, j *job) {
		<-gate
		got = append(got, j.cost)
	})
	n := poolRingSize*2 + 10
	for i := 0; i < n; i++ {
		p.dispatch(&job{cost: i})
	}
	close(gate)
	eventually(t, "all jobs run", func() bool { return p.queued.Load() == 0 && p.running.Load() == 0 })
	p.close()
	if len(got) != n {
		t.Fatalf("%d of %d jobs ran", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("job %d ran in position %d", v, i)
		}
	}
}

// TestPoolNoLostWakeup dispatches from several goroutines while handles go
// idle and wake: every job must run (a lost wakeup would strand one).
func TestPoolNoLostWakeup(t *testing.T) {
	var ran atomic.Int64
	p := newHandlePool("t", 0, 4, func(*handle, *job) { ran.Add(1) })
	var wg sync.WaitGroup
	const per = 5000
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				p.dispatch(&job{})
			}
		}()
	}
	wg.Wait()
	eventually(t, "every job run", func() bool { return ran.Load() == 4*per })
	p.close()
}

// mutexPool is the conventional alternative: a slice queue under a mutex and
// a condition variable for idle workers.
type mutexPool struct {
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []job
	closed bool
	wg     sync.WaitGroup
}

func newMutexPool(workers int, exec func(*job)) *mutexPool {
	p := &mutexPool{}
	p.cond = sync.NewCond(&p.mu)
	for i := 0; i < workers; i++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				p.mu.Lock()
				for len(p.queue) == 0 && !p.closed {
					p.cond.Wait()
				}
				if len(p.queue) == 0 {
					p.mu.Unlock()
					return
				}
				j := p.queue[0]
				p.queue = p.queue[1:]
				p.mu.Unlock()
				exec(&j)
			}
		}()
	}
	return p
}

func (p *mutexPool) dispatch(j *job) {
	p.mu.Lock()
	p.queue = append(p.queue, *j)
	p.mu.Unlock()
	p.cond.Signal()
}

func (p *mutexPool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cond.Broadcast()
	p.wg.Wait()
}

// BenchmarkHandlePool: many dispatchers (event loops, and under load many
// more goroutines than CPUs) each hand a job to a pool of 8 handles and wait
// for it, as a request waits for its handler. ns/op is per job, dispatch to
// completion; SetParallelism(16) oversubscribes the CPUs so that a mutex
// holder that is descheduled shows. A job's cost field names its
// dispatcher's completion channel.
func BenchmarkHandlePool(b *testing.B) {
	run := func(b *testing.B, dispatch func(*job)) {
		var ids atomic.Int32
		b.ReportAllocs()
		b.SetParallelism(16)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			id := int(ids.Add(1) - 1)
			j := job{cost: id}
			for pb.Next() {
				dispatch(&j)
				<-benchDone[id]
			}
		})
	}
	b.Run("lockfree", func(b *testing.B) {
		p := newHandlePool("bench", 8, 8, func(_ *handle, j *job) { benchDone[j.cost] <- struct{}{} })
		run(b, p.dispatch)
		p.close()
	})
	b.Run("mutex-cond", func(b *testing.B) {
		p := newMutexPool(8, func(j *job) { benchDone[j.cost] <- struct{}{} })
		run(b, p.dispatch)
		p.close()
	})
}

// benchDone holds one completion channel per benchmark dispatcher.
var benchDone = func() []chan struct{} {
	chans := make([]chan struct{}, 1024)
	for i := range chans {
		chans[i] = make(chan struct{}, 1)
	}
	return chans
}()
