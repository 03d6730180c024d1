package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/clusterapi"
	"github.com/clusterinfra/ci/services/keyseq"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

// TestKeyServiceFailoverOverClusterAPI: every node's cluster API answers
// who owns keyseq and in which epoch, fed from the records it applies.
// After the owner's Close (a crash, seen from the others), a survivor's
// KeyServices shows a new owner in a higher epoch, and a WatchKeyServices
// started on that survivor before the failover yields the change.
func TestKeyServiceFailoverOverClusterAPI(t *testing.T) {
	p := startInprocKeys(t, nodetest.Options{Nodes: 3, KeyServices: []clms.KeyServiceEntry{{Name: keyseq.Name}}},
		func() *clms.KeyServices {
			reg := &clms.KeyServices{}
			if _, err := keyseq.Register(reg, keyseq.Config{Block: 10}); err != nil {
				t.Fatal(err)
			}
			return reg
		})
	all := []clms.NodeNum{1, 2, 3}
	p.waitFor("formation", all, up(all...))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Every node's cluster API, asked from the next node (a node does not
	// call itself over ICS), shows the same ready owner and epoch once the
	// assignment is applied everywhere.
	var first clusterapi.KeyService
	for _, n := range all {
		cl := clusterapi.NewClient(p.nodes[n%3+1].Engine())
		for v, err := range cl.WatchKeyServices(ctx, n, 0, nil) {
			if err != nil {
				t.Fatalf("watching node %d: %v", n, err)
			}
			if k, ok := v.Lookup(keyseq.Name); ok && k.Ready {
				if first.Owner != 0 && (k.Owner != first.Owner || k.Epoch != first.Epoch) {
					t.Fatalf("node %d shows %+v, node 1 showed %+v", n, k, first)
				}
				first = k
				break
			}
		}
	}
	if first.Owner == 0 || first.Epoch == 0 || first.Phase != clms.KeyReady {
		t.Fatalf("keyseq ready as %+v", first)
	}
	owner := first.Owner
	rest := others(all, owner)
	survivor := rest[0]
	sc := clusterapi.NewClient(p.nodes[rest[1]].Engine()) // asks survivor
	before, err := sc.KeyServices(ctx, survivor)
	if err != nil {
		t.Fatal(err)
	}

	// The watch starts from the survivor's view before the failover.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	seen := make(chan clusterapi.KeyServices, 16)
	watchDone := make(chan error, 1)
	go func() {
		defer close(seen)
		for v, err := range sc.WatchKeyServices(wctx, survivor, before.Seq, nil) {
			if err != nil {
				watchDone <- err
				return
			}
			seen <- v
		}
	}()

	_ = p.nodes[owner].Close()

	var moved clusterapi.KeyService
	for moved.Owner == 0 {
		select {
		case v, ok := <-seen:
			if !ok {
				t.Fatalf("watch ended: %v", <-watchDone)
			}
			if v.Seq <= before.Seq {
				t.Fatalf("watch from seq %d yielded seq %d", before.Seq, v.Seq)
			}
			if k, _ := v.Lookup(keyseq.Name); k.Owner != 0 && k.Owner != owner && k.Ready {
				moved = k
			}
		case <-ctx.Done():
			t.Fatalf("no new ready owner of keyseq seen by the watch on node %d", survivor)
		}
	}
	if moved.Epoch <= first.Epoch {
		t.Fatalf("new owner %d in epoch %d, not above the old %d", moved.Owner, moved.Epoch, first.Epoch)
	}
	now, err := sc.KeyServices(ctx, survivor)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := now.Lookup(keyseq.Name); k.Owner == owner || k.Owner == 0 || k.Epoch <= first.Epoch || now.Seq <= before.Seq {
		t.Fatalf("survivor %d's KeyServices after the failover: %+v (seq %d, before %d), old owner %d epoch %d",
			survivor, k, now.Seq, before.Seq, owner, first.Epoch)
	}
	wcancel()
	for range seen {
	}
}
