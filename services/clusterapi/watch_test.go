package clusterapi

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// collect runs a Watch until it has yielded n transitions, failing on an
// error, and returns them.
func collect(t *testing.T, seq func(func(clms.Transition, error) bool), n int) []clms.Transition {
	var got []clms.Transition
	for tr, err := range seq {
		if err != nil {
			t.Errorf("watch after %d transitions: %v", len(got), err)
			return got
		}
		got = append(got, tr)
		if len(got) == n {
			break
		}
	}
	return got
}

// sameTransitions compares what a watch delivered with what was appended,
// field by field (the time as an instant: the wire drops the monotonic
// reading and the location).
func sameTransitions(t *testing.T, who string, got, want []clms.Transition) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d transitions, want %d", who, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if !g.Time.Equal(w.Time) {
			t.Fatalf("%s: transition %d time %v, want %v", who, i, g.Time, w.Time)
		}
		g.Time, w.Time = time.Time{}, time.Time{}
		if g != w {
			t.Fatalf("%s: transition %d is %v, want %v", who, i, g, w)
		}
	}
}

// TestWatchConcurrentAppends: watchers on node 1 follow node 2's log while
// several goroutines commit transitions to it; each watcher sees every
// transition once, in order. Small batches and short waits make the
// watchers go round many times, empty polls included.
func TestWatchConcurrentAppends(t *testing.T) {
	const total = 3000
	nodes, b, _ := serve(t, DefaultConfig())
	c := NewClient(nodes[0])
	ctx := enginetest.Context(t, 60*time.Second)

	h := newHistory()
	var mu sync.Mutex
	var appended []clms.Transition
	var appenders sync.WaitGroup
	for w := 0; w < 3; w++ {
		appenders.Add(1)
		go func() {
			defer appenders.Done()
			for i := 0; i < total/3; i++ {
				mu.Lock() // commit order: an id and its append in one step
				tr := h.next(clms.NodeNum(1 + (w+i)%3))
				err := b.Append(tr)
				appended = append(appended, tr)
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	results := make([][]clms.Transition, 3)
	var watchers sync.WaitGroup
	for i, opts := range []*WatchOptions{nil, {Batch: 7, Wait: 5 * time.Millisecond}, {Batch: 1}} {
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			results[i] = collect(t, c.Watch(ctx, 2, 0, opts), total)
		}()
	}
	appenders.Wait()
	watchers.Wait()
	for i, got := range results {
		sameTransitions(t, "watcher "+string(rune('0'+i)), got, appended)
	}

	// A watch from the middle starts after the id it is given.
	got := collect(t, c.Watch(ctx, 2, total-5, nil), 5)
	sameTransitions(t, "watch from the middle", got, appended[total-5:])
}

// TestWatchServerRestart: the serving node goes away while a watch follows
// it, and a new process comes back on the same address having relearned
// the cluster's history; the watch retries, then resumes after the last
// transition it delivered, skipping nothing and repeating nothing.
func TestWatchServerRestart(t *testing.T) {
	nodes, b, _ := serve(t, DefaultConfig())
	c := NewClient(nodes[0])
	ctx := enginetest.Context(t, 60*time.Second)
	h := newHistory()
	var cluster []clms.Transition // the cluster-wide history
	commit := func(b *MemBackend, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			tr := h.next(clms.NodeNum(1 + len(cluster)%3))
			cluster = append(cluster, tr)
			if b != nil {
				if err := b.Append(tr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	commit(b, 5)

	var retries atomic.Int32
	var retryMu sync.Mutex
	retryErrs := map[string]int{} // what the watch retried on, by sentinel
	opts := &WatchOptions{RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond, OnRetry: func(err error, _ time.Duration) {
		retries.Add(1)
		retryMu.Lock()
		defer retryMu.Unlock()
		for _, e := range []error{engine.ErrNodeDown, engine.ErrProgUnavail, engine.ErrCantSend, engine.ErrTimedOut} {
			if errors.Is(err, e) {
				retryErrs[e.Error()]++
				return
			}
		}
		retryErrs[err.Error()]++
	}}
	delivered := make(chan clms.Transition, 100)
	watchErr := make(chan error, 1)
	go func() {
		defer close(delivered)
		for tr, err := range c.Watch(ctx, 2, 0, opts) {
			if err != nil {
				watchErr <- err
				return
			}
			delivered <- tr
			if tr.ID == 15 {
				watchErr <- nil
				return
			}
		}
	}()
	var got []clms.Transition
	for len(got) < 5 {
		got = append(got, <-delivered)
	}

	// Node 2 goes away; the cluster goes on committing meanwhile.
	addr := nodes[1].Addr()
	if err := nodes[1].Close(); err != nil {
		t.Fatal(err)
	}
	commit(nil, 5)
	enginetest.Eventually(t, "the watch to notice", func() bool { return retries.Load() > 0 })

	// A new node 2 on the same address, with a fresh backend that has the
	// history (as a restarted node relearns it), then more transitions.
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.EventLoops, cfg.Insecure = 2, "test", addr, 1, true
	cfg.Peers = map[engine.NodeNum]string{1: nodes[0].Addr()}
	n2, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Close() })
	b2 := newMem(t, 0, 1, 2, 3)
	if err := b2.Append(cluster...); err != nil {
		t.Fatal(err)
	}
	if _, err := Register(n2, b2, Config{MaxNodes: 3}); err != nil {
		t.Fatal(err)
	}
	h2 := cluster
	cluster = nil
	commit(b2, 5)
	cluster = append(h2, cluster...)

	for tr := range delivered {
		got = append(got, tr)
	}
	if err := <-watchErr; err != nil {
		t.Fatalf("watch ended after %d: %v", len(got), err)
	}
	sameTransitions(t, "watch across a restart", got, cluster)
	retryMu.Lock()
	defer retryMu.Unlock()
	t.Logf("%d retries while node 2 was away: %v", retries.Load(), retryErrs)
}

// TestWatchBusy: a server with as many waiters as it allows answers the
// next long poll with ErrBusy, and a Watch backs off and carries on.
func TestWatchBusy(t *testing.T) {
	nodes, b, srv := serve(t, Config{MaxWaiters: 1})
	c := NewClient(nodes[0])
	ctx := enginetest.Context(t, 30*time.Second)
	first := make(chan []clms.Transition, 1)
	go func() {
		ts, err := c.WaitTransitions(ctx, 2, 0, 10, time.Minute)
		if err != nil {
			t.Error(err)
		}
		first <- ts
	}()
	enginetest.Eventually(t, "the first waiter", func() bool { return srv.waiters.Load() == 1 })
	if _, err := c.WaitTransitions(ctx, 2, 0, 10, time.Minute); !errors.Is(err, ErrBusy) {
		t.Fatalf("second waiter: %v", err)
	}
	// A call that does not wait is still served.
	if ts, err := c.WaitTransitions(ctx, 2, 0, 10, 0); err != nil || len(ts) != 0 {
		t.Fatalf("no-wait poll while busy: %v %v", ts, err)
	}
	busy := make(chan error, 10)
	watched := make(chan clms.Transition, 1)
	go func() {
		opts := &WatchOptions{RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
			OnRetry: func(err error, _ time.Duration) {
				select {
				case busy <- err:
				default: // the test reads only the first
				}
			}}
		for tr, err := range c.Watch(ctx, 2, 0, opts) {
			if err != nil {
				t.Error(err)
			}
			watched <- tr
			return
		}
	}()
	if err := <-busy; !errors.Is(err, ErrBusy) {
		t.Fatalf("watch retried on %v, want ErrBusy", err)
	}
	tr := newHistory().next(1)
	if err := b.Append(tr); err != nil {
		t.Fatal(err)
	}
	if ts := <-first; len(ts) != 1 || ts[0].ID != 1 {
		t.Fatalf("first waiter: %v", ts)
	}
	if got := <-watched; got.ID != 1 {
		t.Fatalf("watch: %v", got)
	}
}

// TestWatchEnds: a cancelled context ends a watch with its error, and
// breaking out of the loop ends it too (goleak checks nothing is left).
func TestWatchEnds(t *testing.T) {
	nodes, b, _ := serve(t, DefaultConfig())
	c := NewClient(nodes[0])
	h := newHistory()
	if err := b.Append(h.next(1), h.next(1)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	for tr, err := range c.Watch(ctx, 2, 0, nil) {
		if n == 2 {
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("after cancel: %v %v", tr, err)
			}
			break
		}
		if err != nil || tr.ID != clms.TransitionID(n+1) {
			t.Fatalf("transition %d: %v %v", n, tr, err)
		}
		n++
		if n == 2 {
			cancel() // the watch is now waiting on the server, or about to
		}
	}
	if n != 2 {
		t.Fatalf("got %d transitions", n)
	}
	for range c.Watch(context.Background(), 2, 0, nil) {
		break
	}
	// A short deadline: the watch waits on the server no longer than the
	// deadline allows, then reports it.
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer dcancel()
	for _, err := range c.Watch(dctx, 2, 2, &WatchOptions{Slack: 100 * time.Millisecond}) {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("watch past its deadline: %v", err)
		}
	}
}

// scripted answers WaitTransitions from a script, to play a server that
// breaks the protocol.
type scripted struct {
	*Server
	mu      sync.Mutex
	replies [][]WireTransition
}

func (s *scripted) WaitTransitions(context.Context, uint64, uint32, uint32) ([]WireTransition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.replies) == 0 {
		return nil, errors.New("script over")
	}
	r := s.replies[0]
	s.replies = s.replies[1:]
	return r, nil
}

// TestWatchBrokenServer: transitions a server repeats are delivered once;
// one it skips ends the watch with ErrGap instead of a silent hole.
func TestWatchBrokenServer(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	wt := func(ids ...uint64) []WireTransition {
		var out []WireTransition
		for _, id := range ids {
			out = append(out, WireTransition{ID: id, Node: 1})
		}
		return out
	}
	s := &scripted{replies: [][]WireTransition{wt(1, 2), wt(2, 3), wt(1, 2, 3, 4), wt(6)}}
	if err := RegisterAPI(nodes[1], s); err != nil {
		t.Fatal(err)
	}
	var ids []clms.TransitionID
	var end error
	for tr, err := range NewClient(nodes[0]).Watch(enginetest.Context(t, 20*time.Second), 2, 0, nil) {
		if err != nil {
			end = err
			break
		}
		ids = append(ids, tr.ID)
	}
	if !reflect.DeepEqual(ids, []clms.TransitionID{1, 2, 3, 4}) || !errors.Is(end, ErrGap) {
		t.Fatalf("delivered %v, ended with %v", ids, end)
	}
}

// counting counts the long polls that reach a real server.
type counting struct {
	*Server
	polls atomic.Int32
}

func (c *counting) WaitTransitions(ctx context.Context, after uint64, max uint32, waitMillis uint32) ([]WireTransition, error) {
	c.polls.Add(1)
	return c.Server.WaitTransitions(ctx, after, max, waitMillis)
}

// TestWatchNearDeadline: a watch whose context ends sooner than a poll
// would lasts asks the server to wait until then, instead of polling in a
// loop in the last moments.
func TestWatchNearDeadline(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	b := newMem(t, 0, 1, 2)
	srv := &Server{node: nodes[1], backend: b, cfg: Config{MaxNodes: 2}}
	if err := srv.cfg.validate(); err != nil {
		t.Fatal(err)
	}
	cs := &counting{Server: srv}
	if err := RegisterAPI(nodes[1], cs); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	for _, err := range NewClient(nodes[0]).Watch(ctx, 2, 0, nil) {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("watch ended with %v", err)
		}
	}
	if n := cs.polls.Load(); n > 2 {
		t.Fatalf("%d polls in the watch's last half second, want 1 (2 if the first came back empty early)", n)
	}
}
