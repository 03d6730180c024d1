package clms_test

import (
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
)

func newSim(t *testing.T, n, eligible int, tm clms.Timing) *clmstest.Sim {
	t.Helper()
	return clmstest.New(t, clmstest.Options{Seed: 1, Nodes: clmstest.Table(n, eligible), Timing: tm})
}

// form starts every node and waits until all are UP in every member's view.
func form(t *testing.T, s *clmstest.Sim) time.Duration {
	t.Helper()
	s.StartAll()
	return s.RunUntil(10*time.Second, s.AllUp)
}

func TestFormation(t *testing.T) {
	for _, tc := range []struct {
		name        string
		n, eligible int
	}{
		{"single eligible node", 1, 1},
		{"3 nodes, 3 eligible", 3, 3},
		{"5 nodes, 3 eligible", 5, 3},
		{"5 nodes, 5 eligible", 5, 5},
		{"5 nodes, 1 eligible", 5, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.n, tc.eligible, clms.LANFastTiming())
			took := form(t, s)
			t.Logf("formed in %v (simulated)", took)
			// Every node has the same history: one COMINGUP and one UP per node.
			canon := s.Check.Canon()
			if len(canon) != 2*tc.n {
				t.Fatalf("history has %d transitions, want %d", len(canon), 2*tc.n)
			}
			for _, n := range s.Nodes() {
				if len(n.Records) != len(canon) {
					t.Errorf("node %d applied %d records, want %d", n.Num, len(n.Records), len(canon))
				}
				if !n.Has(clms.ActJoined, n.Num) {
					t.Errorf("node %d was never told it joined", n.Num)
				}
			}
			if m := s.Master(); m == 0 || int(m) > tc.eligible {
				t.Fatalf("master is %d, want one of the %d eligible nodes", m, tc.eligible)
			}
		})
	}
}
