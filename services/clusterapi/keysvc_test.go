package clusterapi

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// TestKeyServicesEndToEnd: node 1 asks node 2 who owns each key service;
// a watch started before a change yields the new view once, with the
// owner, epoch, phase and ready flag as committed; a bounded wait with no
// change answers the same sequence.
func TestKeyServicesEndToEnd(t *testing.T) {
	nodes, b, srv := serve(t, DefaultConfig())
	c := NewClient(nodes[0])
	ctx := enginetest.Context(t, 20*time.Second)

	if v, err := c.KeyServices(ctx, 2); err != nil || v.Seq != 0 || len(v.Services) != 0 {
		t.Fatalf("KeyServices with none: %+v %v", v, err)
	}
	start := time.Now()
	if v, err := c.WaitKeyServices(ctx, 2, 0, 30*time.Millisecond); err != nil || v.Seq != 0 {
		t.Fatalf("bounded wait with no change: %+v %v", v, err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("bounded wait answered after %v, before its 30ms", d)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	views := make(chan KeyServices, 4)
	go func() {
		defer close(views)
		for v, err := range c.WatchKeyServices(wctx, 2, 0, nil) {
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					t.Error(err)
				}
				return
			}
			views <- v
		}
	}()
	enginetest.Eventually(t, "the watch's long poll on the server", func() bool { return srv.waiters.Load() == 1 })
	b.SetKeyService(clms.KeyRecord{Name: "ks", Owner: 1, OwnerInc: 7, Epoch: 1, Phase: clms.KeyReady})
	want := KeyServices{Seq: 1, Services: []KeyService{{Name: "ks", Owner: 1, OwnerInc: 7, Epoch: 1, Phase: clms.KeyReady, Ready: true}}}
	if v := <-views; !reflect.DeepEqual(v, want) {
		t.Fatalf("first view %+v, want %+v", v, want)
	}
	// Failover: a new owner in the next epoch, not ready yet.
	enginetest.Eventually(t, "the watch's next long poll", func() bool { return srv.waiters.Load() == 1 })
	b.SetKeyService(clms.KeyRecord{Name: "ks", Owner: 2, OwnerInc: 3, Epoch: 2, Phase: clms.KeyFailover, From: 1})
	want = KeyServices{Seq: 2, Services: []KeyService{{Name: "ks", Owner: 2, OwnerInc: 3, Epoch: 2, Phase: clms.KeyFailover}}}
	if v := <-views; !reflect.DeepEqual(v, want) {
		t.Fatalf("view after failover %+v, want %+v", v, want)
	}
	if v, err := c.KeyServices(ctx, 2); err != nil || !reflect.DeepEqual(v, want) {
		t.Fatalf("KeyServices after failover: %+v %v", v, err)
	}
	cancel()
	for v := range views {
		t.Fatalf("a view yielded twice or without a change: %+v", v)
	}
}

// TestWaitKeyServicesLimits: the key-service long poll shares
// WaitTransitions' limits: refused at priority, ErrBusy past MaxWaiters
// (counting both kinds of wait).
func TestWaitKeyServicesLimits(t *testing.T) {
	nodes, b, srv := serve(t, Config{MaxWaiters: 1})
	ctx := enginetest.Context(t, 20*time.Second)
	api := NewAPIClient(nodes[0])
	if _, _, err := api.WaitKeyServices(engine.WithPriority(ctx, 2), 2, 0, 60000); !errors.Is(err, ErrInvalid) {
		t.Fatalf("key-service wait at priority 2: %v", err)
	}
	held := make(chan error, 1)
	go func() {
		_, err := NewClient(nodes[0]).WaitTransitions(ctx, 2, 0, 10, time.Minute)
		held <- err
	}()
	enginetest.Eventually(t, "the transition wait on the server", func() bool { return srv.waiters.Load() == 1 })
	if _, _, err := api.WaitKeyServices(ctx, 2, 0, 60000); !errors.Is(err, ErrBusy) {
		t.Fatalf("key-service wait past MaxWaiters: %v", err)
	}
	// Not waiting needs no waiter slot.
	if _, seq, err := api.WaitKeyServices(ctx, 2, 0, 0); err != nil || seq != 0 {
		t.Fatalf("no-wait key-service poll: %d %v", seq, err)
	}
	if err := b.Append(newHistory().next(3)); err != nil {
		t.Fatal(err)
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
