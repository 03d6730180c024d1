package clusterapi

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// serve starts count nodes and serves the cluster API on node 2 from a
// MemBackend whose node table is 1..3 (3 never starts: NEVERUP).
func serve(t testing.TB, cfg Config) ([]*engine.Node, *MemBackend, *Server) {
	t.Helper()
	nodes := enginetest.StartCluster(t, 2, nil)
	b := newMem(t, 0, 1, 2, 3)
	if cfg.MaxNodes == 0 {
		cfg.MaxNodes = 3
	}
	s, err := Register(nodes[1], b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return nodes, b, s
}

// TestEveryCall drives each procedure from node 1 against node 2.
func TestEveryCall(t *testing.T) {
	nodes, b, srv := serve(t, DefaultConfig())
	c := NewClient(nodes[0])
	ctx := enginetest.Context(t, 20*time.Second)

	if name, err := c.ClusterName(ctx, 2); err != nil || name != "test" {
		t.Fatalf("ClusterName: %q %v", name, err)
	}
	if n, err := c.NodeNum(ctx, 2); err != nil || n != 2 {
		t.Fatalf("NodeNum: %d %v", n, err)
	}
	if n, err := c.MaxNodes(ctx, 2); err != nil || n != 3 {
		t.Fatalf("MaxNodes: %d %v", n, err)
	}

	// Before any transition.
	members, last, err := c.Membership(ctx, 2)
	if err != nil || last != 0 || len(members) != 3 || members[2].State != clms.StateNeverUp {
		t.Fatalf("Membership: %+v %d %v", members, last, err)
	}
	if _, ok, err := c.NextTransition(ctx, 2, 0); ok || err != nil {
		t.Fatalf("NextTransition with none: %v %v", ok, err)
	}
	for _, w := range []Which{WhichFirst, WhichLast, WhichThis} {
		if _, err := c.DetailedTransition(ctx, 2, w, 1); !errors.Is(err, ErrNoTransition) {
			t.Fatalf("DetailedTransition(%s) with none: %v", w, err)
		}
	}

	// Nodes 1 and 2 join; node 1 then fails and is cleaned up to DOWN.
	h := newHistory()
	var all []clms.Transition
	for _, n := range []clms.NodeNum{1, 2, 1, 2, 1, 1, 1, 1} {
		all = append(all, h.next(n))
	}
	// all: 1 j1, 2 j2, 3 up1, 4 up2, 5 1 GOINGDOWN, 6 KCLEANUP, 7 UCLEANUP, 8 DOWN
	if err := b.Append(all...); err != nil {
		t.Fatal(err)
	}
	members, last, err = c.Membership(ctx, 2)
	want := []clms.Member{
		{Node: 1, State: clms.StateDown, Incarnation: 1, LastChange: 8},
		{Node: 2, State: clms.StateUp, Incarnation: 1, LastChange: 4},
		{Node: 3, State: clms.StateNeverUp},
	}
	if err != nil || last != 8 || !reflect.DeepEqual(members, want) {
		t.Fatalf("Membership: %+v %d %v", members, last, err)
	}

	// NextTransition skips what is not to or from UP.
	for _, c2 := range []struct {
		after  clms.TransitionID
		wantID clms.TransitionID
		ok     bool
	}{{0, 3, true}, {3, 4, true}, {4, 5, true}, {5, 0, false}, {8, 0, false}, {100, 0, false}} {
		tr, ok, err := c.NextTransition(ctx, 2, c2.after)
		if err != nil || ok != c2.ok || (ok && tr.ID != c2.wantID) {
			t.Fatalf("NextTransition(%d): %v %v %v, want %d %v", c2.after, tr, ok, err, c2.wantID, c2.ok)
		}
	}
	// Every field survives the wire (the time as the same instant).
	tr, ok, _ := c.NextTransition(ctx, 2, 4)
	if !ok || !tr.Time.Equal(all[4].Time) || tr.Node != 1 || tr.Incarnation != 1 || tr.From != clms.StateUp ||
		tr.To != clms.StateGoingDown || tr.Cause != clms.CauseCrash {
		t.Fatalf("transition 5: %+v, want %+v", tr, all[4])
	}

	for _, c2 := range []struct {
		which  Which
		id     clms.TransitionID
		wantID clms.TransitionID
		err    error
	}{
		{WhichThis, 5, 5, nil}, {WhichThis, 0, 0, ErrNoTransition}, {WhichThis, 9, 0, ErrNoTransition},
		{WhichNext, 5, 6, nil}, {WhichNext, 0, 1, nil}, {WhichNext, 8, 0, ErrNoTransition}, {WhichNext, 1<<64 - 1, 0, ErrNoTransition},
		{WhichPrevious, 5, 4, nil}, {WhichPrevious, 1, 0, ErrNoTransition}, {WhichPrevious, 0, 0, ErrNoTransition}, {WhichPrevious, 20, 0, ErrNoTransition},
		{WhichFirst, 77, 1, nil}, {WhichLast, 77, 8, nil},
		{Which(5), 1, 0, ErrInvalid}, {Which(255), 1, 0, ErrInvalid},
	} {
		tr, err := c.DetailedTransition(ctx, 2, c2.which, c2.id)
		if c2.err != nil {
			if !errors.Is(err, c2.err) || !errors.Is(err, engine.ErrFailed) {
				t.Fatalf("DetailedTransition(%s, %d): %v, want %v", c2.which, c2.id, err, c2.err)
			}
			continue
		}
		if err != nil || tr.ID != c2.wantID || !tr.Time.Equal(all[c2.wantID-1].Time) {
			t.Fatalf("DetailedTransition(%s, %d): %v %v, want id %d", c2.which, c2.id, tr, err, c2.wantID)
		}
	}

	// Node info, set from node 1 and read back.
	info := clms.NodeInfo{CPUsTotal: 16, CPUsOnline: 12, MemoryBytes: 64 << 30, KeyServices: []string{"demo"}, Capabilities: []string{"gpu", "ssd"}}
	if err := c.SetNodeInfo(ctx, 2, 2, info); err != nil {
		t.Fatal(err)
	}
	m, err := c.NodeInfo(ctx, 2, 2)
	if want := (clms.Member{Node: 2, State: clms.StateUp, Incarnation: 1, Info: info, LastChange: 4}); err != nil || !reflect.DeepEqual(m, want) {
		t.Fatalf("NodeInfo(2): %+v %v, want %+v", m, err, want)
	}
	for n, want := range map[clms.NodeNum]bool{1: false, 2: true, 3: false} {
		if up, err := c.NodeAvail(ctx, 2, n); err != nil || up != want {
			t.Fatalf("NodeAvail(%d): %v %v", n, up, err)
		}
	}

	// Unknown nodes and bad arguments.
	if _, err := c.NodeInfo(ctx, 2, 4); !errors.Is(err, ErrUnknownNode) || !strings.Contains(err.Error(), ": 4") {
		t.Fatalf("NodeInfo(4): %v", err)
	}
	if _, err := c.NodeAvail(ctx, 2, 0); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("NodeAvail(0): %v", err)
	}
	if err := c.SetNodeInfo(ctx, 2, 9, info); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("SetNodeInfo(9): %v", err)
	}
	if err := c.SetNodeInfo(ctx, 2, 1, clms.NodeInfo{Capabilities: make([]string, 65)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetNodeInfo with 65 capabilities: %v", err)
	}
	if err := c.SetNodeInfo(ctx, 2, 1, clms.NodeInfo{KeyServices: []string{strings.Repeat("k", 257)}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetNodeInfo with a long name: %v", err)
	}
	if m, _ := b.Member(1); m.Info.Capabilities != nil || m.Info.KeyServices != nil {
		t.Fatalf("refused info was stored: %+v", m.Info)
	}
	if _, err := c.API().WaitTransitions(ctx, 2, 0, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("WaitTransitions batch 0: %v", err)
	}

	// WaitTransitions: what there is at once, capped by the batch.
	ts, err := c.WaitTransitions(ctx, 2, 2, 3, time.Minute)
	if err != nil || len(ts) != 3 || ts[0].ID != 3 || ts[2].ID != 5 {
		t.Fatalf("WaitTransitions(2, 3): %v %v", ts, err)
	}
	// Nothing yet and no wait: an empty answer at once.
	if ts, err = c.WaitTransitions(ctx, 2, 8, 10, 0); err != nil || len(ts) != 0 {
		t.Fatalf("WaitTransitions(8) without waiting: %v %v", ts, err)
	}
	// Nothing yet: it waits until one is committed.
	got := make(chan []clms.Transition, 1)
	go func() {
		ts, err := c.WaitTransitions(ctx, 2, 8, 10, time.Minute)
		if err != nil {
			t.Error(err)
		}
		got <- ts
	}()
	enginetest.Eventually(t, "a waiter on the server", func() bool { return srv.waiters.Load() == 1 })
	t9 := h.next(2)
	if err := b.Append(t9); err != nil {
		t.Fatal(err)
	}
	if ts := <-got; len(ts) != 1 || ts[0].ID != 9 || ts[0].To != clms.StateGoingDown {
		t.Fatalf("woken waiter got %v", ts)
	}
	// And a wait that runs out answers empty, not with an error.
	if ts, err = c.WaitTransitions(ctx, 2, 9, 10, 30*time.Millisecond); err != nil || len(ts) != 0 {
		t.Fatalf("WaitTransitions that times out: %v %v", ts, err)
	}
}

// TestCompacted: asking for transitions the server no longer keeps is
// ErrCompacted, from every call that would otherwise skip them.
func TestCompacted(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	b := newMem(t, 4, 1, 2)
	if _, err := Register(nodes[1], b, Config{MaxNodes: 2}); err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	for i := 0; i < 10; i++ {
		if err := b.Append(h.next(clms.NodeNum(1 + i%2))); err != nil {
			t.Fatal(err)
		}
	}
	// Kept: 7..10.
	c := NewClient(nodes[0])
	ctx := enginetest.Context(t, 20*time.Second)
	if _, err := c.WaitTransitions(ctx, 2, 2, 10, 0); !errors.Is(err, ErrCompacted) {
		t.Fatalf("WaitTransitions(2): %v", err)
	}
	if ts, err := c.WaitTransitions(ctx, 2, 6, 10, 0); err != nil || len(ts) != 4 || ts[0].ID != 7 {
		t.Fatalf("WaitTransitions(6): %v %v", ts, err)
	}
	if _, _, err := c.NextTransition(ctx, 2, 0); !errors.Is(err, ErrCompacted) {
		t.Fatalf("NextTransition(0): %v", err)
	}
	if _, err := c.DetailedTransition(ctx, 2, WhichThis, 3); !errors.Is(err, ErrCompacted) {
		t.Fatalf("DetailedTransition(this, 3): %v", err)
	}
	if tr, err := c.DetailedTransition(ctx, 2, WhichFirst, 0); err != nil || tr.ID != 7 {
		t.Fatalf("DetailedTransition(first): %v %v", tr, err)
	}
	var got []clms.TransitionID
	for tr, err := range c.Watch(ctx, 2, 0, nil) {
		if !errors.Is(err, ErrCompacted) {
			t.Fatalf("Watch from 0 over a compacted log: %v %v (after %v)", tr, err, got)
		}
		break
	}
}

func TestConfigValidate(t *testing.T) {
	nodes := enginetest.StartCluster(t, 1, nil)
	b := newMem(t, 0, 1)
	for _, cfg := range []Config{
		{},                            // MaxNodes missing
		{MaxNodes: 1, MaxWaiters: 64}, // no handle left for the other calls
		{MaxNodes: 1, MaxBatch: -1},   // nonsense
		{MaxNodes: 1, MaxWait: -time.Second},
	} {
		if _, err := Register(nodes[0], b, cfg); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Register with %+v: %v", cfg, err)
		}
	}
}

// TestWaitNotAtPriority: a long poll sent at a priority would hold one of
// the node's shared priority handles, so the server refuses to wait on it;
// Client sends at priority 0 whatever the context says, so its waits work
// from a priority context (or a handler) too.
func TestWaitNotAtPriority(t *testing.T) {
	nodes, b, srv := serve(t, DefaultConfig())
	ctx := enginetest.Context(t, 20*time.Second)
	prio := engine.WithPriority(ctx, 2)
	if _, err := NewAPIClient(nodes[0]).WaitTransitions(prio, 2, 0, 10, 60000); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "priority 2") {
		t.Fatalf("wait at priority 2: %v", err)
	}
	// Not waiting is fine at any priority.
	if ts, err := NewAPIClient(nodes[0]).WaitTransitions(prio, 2, 0, 10, 0); err != nil || len(ts) != 0 {
		t.Fatalf("no-wait poll at priority 2: %v %v", ts, err)
	}
	got := make(chan []clms.Transition, 1)
	go func() {
		ts, err := NewClient(nodes[0]).WaitTransitions(prio, 2, 0, 10, time.Minute)
		if err != nil {
			t.Error(err)
		}
		got <- ts
	}()
	enginetest.Eventually(t, "the client's wait on the server", func() bool { return srv.waiters.Load() == 1 })
	if err := b.Append(newHistory().next(3)); err != nil {
		t.Fatal(err)
	}
	if ts := <-got; len(ts) != 1 || ts[0].Node != 3 {
		t.Fatalf("wait from a priority context: %v", ts)
	}
}
