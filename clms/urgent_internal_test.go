package clms

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// TestUrgentFloodStarvesNothing plays a peer that floods the runner with
// urgent messages (pings), which it takes ahead of all other input: 32
// goroutines push them straight into its inbox, faster than any peer
// could through the network, and the runner's own commands (like bulk
// messages, evidence and raft's appends) still get their turn, because
// stepping an urgent message takes microseconds and the flood cannot keep
// the inbox from running dry between batches (from the network, what a
// full inbox cannot take is dropped).
func TestUrgentFloodStarvesNothing(t *testing.T) {
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Insecure = 1, "test", "127.0.0.1:0", true
	cfg.Logger = enginetest.Logger()
	cfg.Incarnation = NewIncarnation()
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	// Node 2's address refuses: what the runner sends it is dropped.
	if err := eng.SetPeer(2, "127.0.0.2:1"); err != nil {
		t.Fatal(err)
	}
	r, err := NewRunner(RunnerConfig{Engine: eng, Nodes: []NodeConfig{{Num: 1}, {Num: 2, MasterEligible: true}},
		Timing: LANFastTiming(), Incarnation: cfg.Incarnation, Fencing: FenceDebug})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	stop := make(chan struct{})
	var sent atomic.Int64
	var flooders sync.WaitGroup
	for range 32 {
		flooders.Go(func() {
			m := Message{Type: MsgPing, From: 2, To: 1, FromInc: 7}
			for {
				select {
				case r.urgentIn <- m:
					sent.Add(1)
				case <-stop:
					return
				}
			}
		})
	}
	defer func() { close(stop); flooders.Wait() }()
	// Ask once the flood is well under way: a few inboxes' worth taken.
	for sent.Load() < 4*int64(cap(r.urgentIn)) {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ran := make(chan struct{})
	if err := r.do(ctx, func() { close(ran) }); err != nil {
		t.Fatalf("the runner took no command during the flood: %v", err)
	}
	select {
	case <-ran:
	case <-ctx.Done():
		t.Fatal("the command was taken but never ran")
	}
}
