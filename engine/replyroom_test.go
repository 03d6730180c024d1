package engine

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestInlineRepliesWaitForRoom: 256 callers of 64 KiB echoes answered by an
// inline handler fill the request connection's queue of replies past
// MaxPendingWrite.
// A netpoller reader waits for room, which holds back the requests behind
// it, instead of refusing the reply and ending the link (cibench rpc at
// 64 KiB lost its link about one run in five: "write queue full ... on
// reply"). Event loops cannot wait; they still end the link.
func TestInlineRepliesWaitForRoom(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.MaxPayload, c.MaxPendingWrite = 128<<10, 256<<10 })
	if nodes[0].cfg.ReadMode != ReadNetpoller {
		t.Skip("event loops cannot wait for room: an inline handler's reply over MaxPendingWrite ends the link (docs/ARCHITECTURE.md)")
	}
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	m := Method{Service: echoSvc}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 256)
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args, reply := make([]byte, 64<<10), make([]byte, 0, 64<<10)
			for ctx.Err() == nil {
				if _, err := nodes[0].Call(context.Background(), 2, m, args, reply[:0]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
		break
	}
	if got := nodes[1].m.limitPendingWrite.Get(); got != 0 {
		t.Errorf("%d replies refused over MaxPendingWrite", got)
	}
}
