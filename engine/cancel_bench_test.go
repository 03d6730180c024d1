package engine

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// BenchmarkRequestContext is the server's whole cost of a request's
// context, without the network's noise: built on the loop, checked before
// the handler, its priority read (as a nested call does), retired after.
func BenchmarkRequestContext(b *testing.B) {
	n := startCluster(b, 1, nil)[0]
	c := &conn{n: n}
	h := framing.Header{Type: framing.TypeRequest, Flags: framing.FlagCancellable | framing.FlagDeadline, Status: framing.EncodeTimeout(time.Minute)}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.XID = uint64(i)
		rc := n.requestContext(c, &h)
		if n.skipExpired(c, rc) {
			b.Fatal("expired")
		}
		if PriorityFrom(rc) != 0 {
			b.Fatal("priority")
		}
		if n.requestDone(c, rc) {
			b.Fatal("gone")
		}
	}
}
