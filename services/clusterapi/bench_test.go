package clusterapi

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
)

// BenchmarkWatchLatency measures how long a committed transition takes to
// reach a watcher on another node: from MemBackend.Append on node 2 to the
// watch's loop body on node 1, one transition at a time (the waiter is
// always parked on the server when the next one is appended).
func BenchmarkWatchLatency(b *testing.B) {
	nodes, mem, srv := serve(b, DefaultConfig())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, err := range NewClient(nodes[0]).Watch(ctx, 2, 0, nil) {
			if err != nil {
				return
			}
			got <- time.Now()
		}
	}()
	h := newHistory()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Measure from a parked watcher: wait until the server counts it.
		for srv.waiters.Load() == 0 {
			time.Sleep(10 * time.Microsecond)
		}
		t0 := time.Now()
		if err := mem.Append(h.next(clms.NodeNum(1 + i%3))); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-got).Sub(t0))
	}
	b.StopTimer()
	cancel()
	<-done
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
