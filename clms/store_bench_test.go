package clms_test

import (
	"slices"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/clusterinfra/ci/clms"
)

// BenchmarkStoreSave is one raft round's write on a voter: one entry of
// about 200 bytes and the HardState, synced (raft's MustSync). The tail
// matters as much as the median, since a key-service failover waits for a
// chain of such writes: p50/p90/p99 of the Saves are reported too.
func BenchmarkStoreSave(b *testing.B) {
	s, err := clms.OpenStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := make([]byte, 200)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		idx := uint64(i + 1)
		hs := &raftpb.HardState{Term: new(uint64(2)), Vote: new(uint64(1)), Commit: new(idx)}
		ents := []*raftpb.Entry{{Term: new(uint64(2)), Index: new(idx), Type: raftpb.EntryNormal.Enum(), Data: data}}
		t0 := time.Now()
		if err := s.Save(hs, ents, nil, true); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	for _, p := range []struct {
		q    float64
		name string
	}{{0.5, "p50-ns"}, {0.9, "p90-ns"}, {0.99, "p99-ns"}} {
		b.ReportMetric(float64(lat[int(p.q*float64(len(lat)-1))].Nanoseconds()), p.name)
	}
}
