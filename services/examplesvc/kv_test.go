package examplesvc

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// TestKVAcrossNodes drives every procedure of the example service from
// node 1 against a Store on node 2, through the generated stubs.
func TestKVAcrossNodes(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	store := NewStore()
	if err := RegisterKV(nodes[1], store); err != nil {
		t.Fatal(err)
	}
	kv := NewKVClient(nodes[0])
	ctx := enginetest.Context(t, 10*time.Second)

	labels := map[string]string{"owner": "test", "tier": "gold"}
	v, err := kv.Put(ctx, 2, "a/1", []byte("one"), labels, 0)
	if err != nil || v != 1 {
		t.Fatalf("Put: version %d, %v", v, err)
	}
	if v, err = kv.Put(ctx, 2, "a/1", []byte("uno"), nil, 1); err != nil || v != 2 {
		t.Fatalf("second Put: version %d, %v", v, err)
	}
	got, err := kv.Get(ctx, 2, "a/1")
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Key: "a/1", Value: []byte("uno"), Version: 2, Meta: Meta{Writer: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Get: %+v, want %+v (Writer must be the caller, node 1)", got, want)
	}

	// A declared error arrives as itself, and as a remote failure.
	_, err = kv.Get(ctx, 2, "missing")
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, engine.ErrFailed) || !strings.Contains(err.Error(), `"missing"`) {
		t.Fatalf("Get of a missing key: %v", err)
	}
	_, err = kv.Put(ctx, 2, "a/1", nil, nil, 1)
	if !errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
		t.Fatalf("Put at a stale version: %v", err)
	}
	// An undeclared error comes back through the engine with its text.
	_, _, err = kv.List(ctx, 2, "", -1)
	var re *engine.RemoteError
	if !errors.As(err, &re) || !errors.Is(err, engine.ErrFailed) || !strings.Contains(re.Message, "negative limit") {
		t.Fatalf("List with a negative limit: %v", err)
	}

	for _, k := range []string{"a/2", "a/3", "b/1"} {
		if _, err := kv.Put(ctx, 2, k, []byte(k), map[string]string{"k": k}, 0); err != nil {
			t.Fatal(err)
		}
	}
	list, more, err := kv.List(ctx, 2, "a/", 2)
	if err != nil || !more || len(list) != 2 || list[0].Key != "a/1" || list[1].Key != "a/2" || list[1].Meta.Labels["k"] != "a/2" {
		t.Fatalf("List a/ limit 2: %+v more=%v %v", list, more, err)
	}
	if list, more, err = kv.List(ctx, 2, "b/", 10); err != nil || more || len(list) != 1 {
		t.Fatalf("List b/: %+v more=%v %v", list, more, err)
	}

	for i := int64(1); i <= 3; i++ {
		n, err := kv.Add(ctx, 2, "hits", i)
		if err != nil || n != i*(i+1)/2 {
			t.Fatalf("Add %d: %d, %v", i, n, err)
		}
	}

	// One-way: the caller learns only that it left, so wait for its effect.
	if err := kv.Touch(ctx, 2, []string{"a/1", "b/1", "nope"}); err != nil {
		t.Fatal(err)
	}
	var st Stats
	enginetest.Eventually(t, "two touches", func() bool {
		st, err = kv.Stats(ctx, 2)
		return err == nil && st.Touches == 2
	})
	if st.Keys != 4 || st.Counters["hits"] != 6 {
		t.Fatalf("Stats: %+v", st)
	}
	if e, _ := kv.Get(ctx, 2, "b/1"); e.Meta.Touches != 1 {
		t.Fatalf("b/1 touched %d times", e.Meta.Touches)
	}
}

// recorder is a KV that records the context its Add ran with and can be
// made slow.
type recorder struct {
	*Store
	prio chan uint8
	// delay is atomic: the test sets it, a handler reads it, and the
	// request between them crosses the kernel, which the race detector
	// cannot see as ordering.
	delay atomic.Int64
}

func (r *recorder) Add(ctx context.Context, name string, delta int64) (int64, error) {
	delay := time.Duration(r.delay.Load())
	r.prio <- engine.PriorityFrom(ctx)
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
	return r.Store.Add(ctx, name, delta)
}

// TestKVPriorityAndDeadline checks that a stub call takes its priority and
// deadline from ctx, as engine.Node.Call does.
func TestKVPriorityAndDeadline(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	rec := &recorder{Store: NewStore(), prio: make(chan uint8, 4)}
	if err := RegisterKV(nodes[1], rec); err != nil {
		t.Fatal(err)
	}
	kv := NewKVClient(nodes[0])
	if _, err := kv.Add(engine.WithPriority(enginetest.Context(t, 10*time.Second), 2), 2, "x", 1); err != nil {
		t.Fatal(err)
	}
	if p := <-rec.prio; p != 2 {
		t.Fatalf("handler ran at priority %d, want 2", p)
	}
	if _, err := kv.Add(enginetest.Context(t, 10*time.Second), 2, "x", 1); err != nil {
		t.Fatal(err)
	}
	if p := <-rec.prio; p != 0 {
		t.Fatalf("handler ran at priority %d, want 0", p)
	}

	rec.delay.Store(int64(5 * time.Second))
	start := time.Now()
	_, err := kv.Add(enginetest.Context(t, 100*time.Millisecond), 2, "x", 1)
	if !errors.Is(err, engine.ErrTimedOut) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow Add: %v, want ErrTimedOut", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatal("the call outlived its deadline")
	}
	<-rec.prio
}

// TestKVVersionMismatch: stubs of another version fail with
// ErrProgVersMismatch instead of misreading each other.
func TestKVVersionMismatch(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	svc := KVService(NewStore())
	svc.Version = KVVersion + 1 // the server runs newer stubs
	if err := nodes[1].Register(svc); err != nil {
		t.Fatal(err)
	}
	_, err := NewKVClient(nodes[0]).Get(enginetest.Context(t, 10*time.Second), 2, "k")
	if !errors.Is(err, engine.ErrProgVersMismatch) {
		t.Fatalf("Get across versions: %v", err)
	}
}

// TestKVBadArguments: arguments the server stub cannot decode come back as
// ErrCantDecodeArgs.
func TestKVBadArguments(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	if err := RegisterKV(nodes[1], NewStore()); err != nil {
		t.Fatal(err)
	}
	m := engine.Method{Service: KVServiceID, Proc: KVProcGet, Version: KVVersion}
	for _, args := range [][]byte{
		nil,                            // no key at all
		{0xff, 0xff, 0xff, 0xff, 0x0f}, // a 4 GiB key in 5 bytes: refused, not allocated
		{3, 'a', 'b'},                  // one byte short
		{1, 'a', 'x'},                  // a byte too many
	} {
		_, err := nodes[0].Call(enginetest.Context(t, 10*time.Second), 2, m, args, nil)
		if !errors.Is(err, engine.ErrCantDecodeArgs) {
			t.Errorf("Get(% x): %v, want ErrCantDecodeArgs", args, err)
		}
	}
}

// TestKVBadResults: a reply the client stub cannot decode gives
// ErrCantDecodeRes.
func TestKVBadResults(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	replies := map[uint32][]byte{
		KVProcAdd:   {0, 1, 2, 3},                                     // an int64 cut short
		KVProcGet:   {},                                               // not even a status
		KVProcStats: {9, 0},                                           // an unknown status
		KVProcPut:   append([]byte{0}, bytes.Repeat([]byte{1}, 9)...), // a byte too many
	}
	procs := make([]engine.Handler, 7)
	for proc, body := range replies {
		procs[proc] = func(_ context.Context, _ *engine.Request, resp *engine.Response) error {
			resp.Body = append(resp.Body, body...)
			return nil
		}
	}
	err := nodes[1].Register(engine.Service{ID: KVServiceID, Name: "liar", Version: KVVersion, Procs: procs, MaxHandles: 2})
	if err != nil {
		t.Fatal(err)
	}
	kv := NewKVClient(nodes[0])
	ctx := enginetest.Context(t, 10*time.Second)
	_, errAdd := kv.Add(ctx, 2, "x", 1)
	_, errGet := kv.Get(ctx, 2, "x")
	_, errStats := kv.Stats(ctx, 2)
	_, errPut := kv.Put(ctx, 2, "x", nil, nil, 0)
	for name, err := range map[string]error{"Add": errAdd, "Get": errGet, "Stats": errStats, "Put": errPut} {
		if !errors.Is(err, engine.ErrCantDecodeRes) {
			t.Errorf("%s: %v, want ErrCantDecodeRes", name, err)
		}
	}
}

// TestKVThroughInterceptors: icsgen's stubs call the engine, so the
// engine's interceptors see them, with the service's name and procedure,
// and see a declared error as the *engine.RemoteError it is.
func TestKVThroughInterceptors(t *testing.T) {
	type seen struct {
		side string
		name string
		proc uint32
		code engine.Status
	}
	got := make(chan seen, 4)
	nodes := enginetest.StartCluster(t, 2, func(c *engine.Config) {
		c.ClientInterceptors = []engine.ClientInterceptor{func(ctx context.Context, info *engine.CallInfo, args, reply []byte, next engine.Invoker) ([]byte, error) {
			res, err := next(ctx, info, args, reply)
			got <- seen{"client", info.Method.Name, info.Method.Proc, engine.Code(err)}
			return res, err
		}}
		c.ServerInterceptors = []engine.ServerInterceptor{func(ctx context.Context, info *engine.CallInfo, req *engine.Request, resp *engine.Response, next engine.Handler) error {
			err := next(ctx, req, resp)
			got <- seen{"server", info.Method.Name, info.Method.Proc, engine.Code(err)}
			return err
		}}
	})
	if err := RegisterKV(nodes[1], NewStore()); err != nil {
		t.Fatal(err)
	}
	_, err := NewKVClient(nodes[0]).Get(enginetest.Context(t, 10*time.Second), 2, "missing")
	var re *engine.RemoteError
	if !errors.As(err, &re) || re.Declared != ErrNotFound || engine.Code(err) != engine.StatusFailed {
		t.Fatalf("Get of a missing key: %v", err)
	}
	// A declared error travels in a successful reply: the engine's chain
	// sees success, and the stub makes it the error.
	want := map[seen]bool{{"server", "kv", KVProcGet, engine.StatusOK}: true, {"client", "kv", KVProcGet, engine.StatusOK}: true}
	for range 2 {
		if s := <-got; !want[s] {
			t.Fatalf("interceptor saw %+v", s)
		}
	}
}
