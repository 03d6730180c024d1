package clusterapi

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine/enginetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// history makes valid transitions: each node cycles through a join, a
// failure and its cleanup, then a rejoin with a new incarnation.
type history struct {
	mu    sync.Mutex
	last  clms.TransitionID
	state map[clms.NodeNum]clms.NodeState
	inc   map[clms.NodeNum]uint64
}

func newHistory() *history {
	return &history{state: map[clms.NodeNum]clms.NodeState{}, inc: map[clms.NodeNum]uint64{}}
}

var lifecycle = map[clms.NodeState]struct {
	to    clms.NodeState
	cause clms.Cause
}{
	clms.StateNeverUp:   {clms.StateComingUp, clms.CauseJoin},
	clms.StateComingUp:  {clms.StateUp, clms.CauseNodeUpDone},
	clms.StateUp:        {clms.StateGoingDown, clms.CauseCrash},
	clms.StateGoingDown: {clms.StateKCleanup, clms.CauseCleanupDone},
	clms.StateKCleanup:  {clms.StateUCleanup, clms.CauseCleanupDone},
	clms.StateUCleanup:  {clms.StateDown, clms.CauseCleanupDone},
	clms.StateDown:      {clms.StateComingUp, clms.CauseRestart},
}

// next returns node n's next transition and counts it as committed.
func (h *history) next(n clms.NodeNum) clms.Transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	from := h.state[n] // NEVERUP is 0
	step := lifecycle[from]
	if step.to == clms.StateComingUp {
		h.inc[n]++
	}
	h.last++
	h.state[n] = step.to
	return clms.Transition{ID: h.last, Time: time.Unix(1700000000, int64(h.last)), Node: n,
		Incarnation: h.inc[n], From: from, To: step.to, Cause: step.cause}
}

func newMem(t testing.TB, retained int, nodes ...clms.NodeNum) *MemBackend {
	t.Helper()
	b, err := NewMemBackend(nodes, MemConfig{MaxRetained: retained})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMemBackendAppend(t *testing.T) {
	b := newMem(t, 0, 3, 1, 2)
	members, last := b.Membership()
	if last != 0 || len(members) != 3 || members[0].Node != 1 || members[2].Node != 3 || members[1].State != clms.StateNeverUp {
		t.Fatalf("fresh: %+v %d", members, last)
	}
	h := newHistory()
	t1, t2 := h.next(2), h.next(2)
	if err := b.Append(t1, t2); err != nil {
		t.Fatal(err)
	}
	m, ok := b.Member(2)
	if !ok || m.State != clms.StateUp || m.Incarnation != 1 || m.LastChange != 2 {
		t.Fatalf("node 2 after join: %+v", m)
	}
	if _, last = b.Membership(); last != 2 {
		t.Fatalf("last %d", last)
	}

	// Every refusal leaves the backend as it was.
	bad := []struct {
		t    clms.Transition
		want error
	}{
		{clms.Transition{ID: 2, Node: 1}, ErrOutOfOrder},
		{clms.Transition{ID: 4, Node: 1}, ErrOutOfOrder},
		{clms.Transition{ID: 3, Node: 9}, ErrUnknownNode},
		{clms.Transition{ID: 3, Node: 2, From: clms.StateComingUp, To: clms.StateUp}, ErrStateChanged},
	}
	for _, c := range bad {
		if err := b.Append(c.t); !errors.Is(err, c.want) {
			t.Fatalf("Append(%v): %v, want %v", c.t, err, c.want)
		}
	}
	if got := b.Transitions(0, 10); !reflect.DeepEqual(got, []clms.Transition{t1, t2}) {
		t.Fatalf("log after refusals: %v", got)
	}
	// A batch stops at its first bad transition, keeping those before.
	t3 := h.next(1)
	if err := b.Append(t3, clms.Transition{ID: 9}); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("batch: %v", err)
	}
	if _, last = b.Membership(); last != 3 {
		t.Fatalf("last after a half-applied batch: %d", last)
	}

	if _, err := NewMemBackend([]clms.NodeNum{1, 1}, MemConfig{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("duplicate node: %v", err)
	}
	if _, err := NewMemBackend([]clms.NodeNum{0}, MemConfig{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("node 0: %v", err)
	}
}

func TestMemBackendTransitionsAndRetention(t *testing.T) {
	b := newMem(t, 5, 1, 2)
	h := newHistory()
	for i := 0; i < 8; i++ {
		if err := b.Append(h.next(clms.NodeNum(1 + i%2))); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(ts []clms.Transition) []clms.TransitionID {
		var out []clms.TransitionID
		for _, t := range ts {
			out = append(out, t.ID)
		}
		return out
	}
	for _, c := range []struct {
		after clms.TransitionID
		max   int
		want  []clms.TransitionID
	}{
		{0, 10, []clms.TransitionID{4, 5, 6, 7, 8}}, // 1..3 dropped: starts at the oldest kept
		{3, 2, []clms.TransitionID{4, 5}},
		{6, 10, []clms.TransitionID{7, 8}},
		{8, 10, nil},
		{100, 10, nil},
		{5, 0, nil},
	} {
		if got := ids(b.Transitions(c.after, c.max)); !reflect.DeepEqual(got, c.want) {
			t.Fatalf("Transitions(%d, %d) = %v, want %v", c.after, c.max, got, c.want)
		}
	}
	// What it returns is a copy.
	ts := b.Transitions(3, 1)
	ts[0].Node = 99
	if b.Transitions(3, 1)[0].Node == 99 {
		t.Fatal("Transitions shares the log")
	}
	info := clms.NodeInfo{CPUsTotal: 8, Capabilities: []string{"gpu"}}
	if err := b.SetNodeInfo(context.Background(), 1, info); err != nil {
		t.Fatal(err)
	}
	m, _ := b.Member(1)
	m.Info.Capabilities[0] = "changed"
	if m2, _ := b.Member(1); m2.Info.Capabilities[0] != "gpu" || m2.Info.CPUsTotal != 8 {
		t.Fatalf("Member shares the info: %+v", m2)
	}
	if err := b.SetNodeInfo(context.Background(), 7, info); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("SetNodeInfo of node 7: %v", err)
	}
}

func TestMemBackendWait(t *testing.T) {
	b := newMem(t, 0, 1)
	h := newHistory()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.WaitTransition(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with nothing committed: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- b.WaitTransition(context.Background(), 0) }()
	if err := b.Append(h.next(1)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := b.WaitTransition(context.Background(), 0); err != nil { // already there: at once
		t.Fatal(err)
	}
}

// TestMemBackendConcurrent: appenders and waiters at once; every waiter
// sees every id, in order, under -race.
func TestMemBackendConcurrent(t *testing.T) {
	const total = 2000
	b := newMem(t, 0, 1, 2, 3, 4)
	h := newHistory()
	var appenders sync.WaitGroup
	var appendMu sync.Mutex // ids are handed out and appended in one step, as a commit order is
	for w := 0; w < 4; w++ {
		appenders.Add(1)
		go func() {
			defer appenders.Done()
			for i := 0; i < total/4; i++ {
				appendMu.Lock()
				err := b.Append(h.next(clms.NodeNum(1 + (w+i)%4)))
				appendMu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var readers sync.WaitGroup
	for r := 0; r < 3; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var last clms.TransitionID
			for last < total {
				if err := b.WaitTransition(context.Background(), last); err != nil {
					t.Error(err)
					return
				}
				for _, tr := range b.Transitions(last, 7) {
					if tr.ID != last+1 {
						t.Errorf("reader: %d after %d", tr.ID, last)
						return
					}
					last = tr.ID
				}
			}
		}()
	}
	appenders.Wait()
	readers.Wait()
}

// TestMemBackendKeyServices: every SetKeyService bumps the sequence by one
// and replaces that service's row; the view is by name; a waiter for the
// next sequence is woken by it (and only by a key change), and a wait with
// nothing new ends with its ctx.
func TestMemBackendKeyServices(t *testing.T) {
	b := newMem(t, 0, 1, 2)
	if ks, seq := b.KeyServices(); len(ks) != 0 || seq != 0 {
		t.Fatalf("empty backend: %v seq %d", ks, seq)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.WaitKeyServices(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with no key service: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- b.WaitKeyServices(context.Background(), 0) }()
	// A transition wakes the shared channel, but the key waiter must go
	// back to sleep: it is still waiting after the transition is applied.
	if err := b.Append(newHistory().next(1)); err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	if err := b.WaitKeyServices(tctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a transition satisfied a key-service wait: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("the key-service waiter returned on a transition: %v", err)
	default:
	}
	zb := clms.KeyRecord{Name: "zb", Owner: 2, OwnerInc: 4, Epoch: 1, Phase: clms.KeyFailover}
	b.SetKeyService(zb)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	a := clms.KeyRecord{Name: "a", Owner: 1, OwnerInc: 3, Epoch: 1, Phase: clms.KeyReady}
	b.SetKeyService(a)
	zb.Phase = clms.KeyReady
	b.SetKeyService(zb)
	ks, seq := b.KeyServices()
	if want := []clms.KeyRecord{a, zb}; seq != 3 || !reflect.DeepEqual(ks, want) {
		t.Fatalf("after 3 records: %v seq %d, want %v seq 3", ks, seq, want)
	}
	if err := b.WaitKeyServices(context.Background(), 2); err != nil { // already past: at once
		t.Fatal(err)
	}
	// The caller's copy is its own.
	ks[0].Owner = 9
	if again, _ := b.KeyServices(); again[0].Owner != 1 {
		t.Fatalf("KeyServices returned the backend's own storage: %v", again)
	}
}

// TestMemBackendRestore: a state image continues the log when its history
// reaches back to the last transition applied, replaces it when it does
// not (what falls between is then compacted), wakes the waiters, and
// Append goes on after it.
func TestMemBackendRestore(t *testing.T) {
	b := newMem(t, 100, 1, 2)
	h := newHistory()
	var all []clms.Transition
	for range 12 {
		all = append(all, h.next(clms.NodeNum(1+len(all)%2)))
	}
	if err := b.Append(all[:3]...); err != nil {
		t.Fatal(err)
	}
	members := func(upTo int) []clms.Member {
		ms := []clms.Member{{Node: 1, State: clms.StateNeverUp}, {Node: 2, State: clms.StateNeverUp}}
		for _, tr := range all[:upTo] {
			m := &ms[tr.Node-1]
			m.State, m.Incarnation, m.LastChange = tr.To, tr.Incarnation, tr.ID
		}
		return ms
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	woke := make(chan error, 1)
	go func() { woke <- b.WaitTransition(ctx, 3) }()
	key := clms.KeyRecord{Name: "ks", Owner: 1, OwnerInc: 1, Epoch: 2, Phase: clms.KeyReady}
	b.Restore(&clms.Restored{Seq: 6, Members: members(6), LastTransition: 6, History: all[1:6], Keys: []clms.KeyRecord{key}})
	if err := <-woke; err != nil {
		t.Fatal(err)
	}
	if got := b.Transitions(0, 100); !reflect.DeepEqual(got, all[:6]) {
		t.Fatalf("continued log %v, want 1..6", got)
	}
	if ms, last := b.Membership(); last != 6 || !reflect.DeepEqual(ms, members(6)) {
		t.Fatalf("membership %v at %d", ms, last)
	}
	if ks, seq := b.KeyServices(); seq == 0 || !reflect.DeepEqual(ks, []clms.KeyRecord{key}) {
		t.Fatalf("key services %v (seq %d)", ks, seq)
	}
	// A gap: the image's history starts after 7.
	b.Restore(&clms.Restored{Seq: 10, Members: members(10), LastTransition: 10, History: all[8:10]})
	if got := b.Transitions(6, 100); !reflect.DeepEqual(got, all[8:10]) {
		t.Fatalf("after a gap the log is %v, want 9..10 (7..8 compacted)", got)
	}
	if err := b.Append(all[10:]...); err != nil {
		t.Fatalf("append after a restore: %v", err)
	}
	// An image older than the view changes no transition.
	b.Restore(&clms.Restored{Seq: 2, Members: members(12), LastTransition: 2, History: all[:2]})
	if got := b.Transitions(0, 100); !reflect.DeepEqual(got, all[8:]) {
		t.Fatalf("an older image changed the log to %v", got)
	}
}
