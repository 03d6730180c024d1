package bench

import (
	"testing"
	"time"
)

// benchPeers are the peers BenchmarkPingPong measures; "ics" is the
// default variant (inline handler, direct writes).
var benchPeers = []string{"raw", "netrpc", "grpc", "ics"}

// BenchmarkPingPong is one caller making 64-byte echo calls against each
// peer in-process. Besides ns/op it reports the p50 and p99 of the calls,
// which say more than a mean on a bimodal machine. For comparisons that
// hold up on a noisy machine use cibench compare, which interleaves rounds.
func BenchmarkPingPong(b *testing.B) {
	for _, name := range benchPeers {
		b.Run(name, func(b *testing.B) {
			c := startPeer(b, name)
			req, err := NewRequest(64, 64)
			if err != nil {
				b.Fatal(err)
			}
			resp := make([]byte, 0, 64)
			for range 100 { // connect and warm up outside the timer
				if resp, err = c.Call(req, resp[:0]); err != nil {
					b.Fatal(err)
				}
			}
			h := NewHist()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				resp, err = c.Call(req, resp[:0])
				h.Record(time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(h.Quantile(50)), "p50-ns")
			b.ReportMetric(float64(h.Quantile(99)), "p99-ns")
		})
	}
}
