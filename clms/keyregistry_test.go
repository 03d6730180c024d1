package clms_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
)

func TestKeyServicesRegistry(t *testing.T) {
	var reg clms.KeyServices
	var got map[clms.NodeNum][]byte
	release := make(chan struct{})
	err := reg.RegisterKeyService("ks", false,
		func(ctx context.Context, epoch uint64) error {
			if epoch == 9 { // a Failover that waits to be cancelled
				<-ctx.Done()
				return ctx.Err()
			}
			if epoch == 8 {
				panic("boom")
			}
			return nil
		},
		func(ctx context.Context, epoch uint64) ([]byte, error) {
			select {
			case <-release:
				return []byte("mine"), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		func(ctx context.Context, epoch uint64, pulled map[clms.NodeNum][]byte) error {
			got = pulled
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.RegisterKeyService("ks", false, nil, nil, nil); !errors.Is(err, clms.ErrKeyServiceExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := reg.Register("other", true, false, &clms.KeyServiceFuncs{}); err != nil {
		t.Fatal(err)
	}
	specs := reg.Specs([]clms.KeyServiceEntry{{Name: "ks", Critical: true}, {Name: "fileonly"}})
	want := []clms.KeyServiceSpec{{Name: "ks", Critical: true, Pull: true}, {Name: "fileonly"}, {Name: "other", Critical: true}}
	if !reflect.DeepEqual(specs, want) {
		t.Fatalf("specs %+v, want %+v", specs, want)
	}
	ctx := context.Background()
	run := func(a clms.Action, timeout time.Duration) ([]byte, error) {
		a.KeyService = "ks"
		return reg.Run(ctx, a, timeout)
	}
	// Not acting yet: the owner's routines are refused as cancelled.
	if _, err := run(clms.Action{Kind: clms.ActKeyFailover, Epoch: 1}, time.Second); !errors.Is(err, clms.ErrKeyCancelled) {
		t.Fatalf("failover before acting: %v", err)
	}
	run(clms.Action{Kind: clms.ActKeyOwner, Epoch: 1, Valid: true}, 0)
	if _, err := run(clms.Action{Kind: clms.ActKeyFailover, Epoch: 1}, time.Second); err != nil {
		t.Fatalf("failover: %v", err)
	}
	if _, err := run(clms.Action{Kind: clms.ActKeyFailover, Epoch: 8}, time.Second); !errors.Is(err, clms.ErrKeyPanic) {
		t.Fatalf("panicking failover: %v", err)
	}
	pulled := map[clms.NodeNum][]byte{2: []byte("x")}
	if _, err := run(clms.Action{Kind: clms.ActKeyFailoverData, Epoch: 1, Pulled: pulled}, time.Second); err != nil || !reflect.DeepEqual(got, pulled) {
		t.Fatalf("failover data: %v, got %v", err, got)
	}
	// A PullData that does not return in time.
	if _, err := run(clms.Action{Kind: clms.ActKeyPullData, Epoch: 1, Node: 3}, 10*time.Millisecond); !errors.Is(err, clms.ErrKeyTimeout) {
		t.Fatalf("hung pull: %v", err)
	}
	close(release)
	if d, err := run(clms.Action{Kind: clms.ActKeyPullData, Epoch: 1, Node: 3}, time.Second); err != nil || string(d) != "mine" {
		t.Fatalf("pull: %q %v", d, err)
	}
	// Losing ownership cancels a routine in flight.
	done := make(chan error, 1)
	go func() {
		_, err := run(clms.Action{Kind: clms.ActKeyFailover, Epoch: 9}, time.Minute)
		done <- err
	}()
	// Whether the routine started before or after, it is cancelled.
	run(clms.Action{Kind: clms.ActKeyOwner, Epoch: 1, Valid: false}, 0)
	if err := <-done; !errors.Is(err, clms.ErrKeyCancelled) {
		t.Fatalf("cancelled failover: %v", err)
	}
	if _, err := reg.Run(ctx, clms.Action{Kind: clms.ActKeyFailover, KeyService: "nope"}, time.Second); !errors.Is(err, clms.ErrUnknownKeyService) {
		t.Fatalf("unknown service: %v", err)
	}
}
