package keyseq_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/services/keyseq"
	"github.com/clusterinfra/ci/services/node"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// cluster is n in-process nodes on 127.0.0.x, each running keyseq.
type cluster struct {
	t     *testing.T
	c     *nodetest.Cluster
	nodes map[clms.NodeNum]*node.Node
	seqs  map[clms.NodeNum]*keyseq.Service
}

func startCluster(t *testing.T, count int) *cluster {
	c := newCluster(t, nodetest.Options{Nodes: count, KeyServices: []clms.KeyServiceEntry{{Name: keyseq.Name}}})
	for num := range c.c.Addrs {
		c.start(num, false)
	}
	return c
}

func newCluster(t *testing.T, opt nodetest.Options) *cluster {
	c, err := nodetest.Write(t.TempDir(), opt)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, c: c, nodes: map[clms.NodeNum]*node.Node{}, seqs: map[clms.NodeNum]*keyseq.Service{}}
}

// start starts node num with keyseq (critical as said).
func (c *cluster) start(num clms.NodeNum, critical bool) {
	t := c.t
	// lan-fast stretched: in-process nodes share one starved test process,
	// and a lease that runs out in a stall is not what these tests test.
	k := time.Duration(2)
	if raceEnabled {
		k = 4
	}
	tm := clmstest.Stretch(clms.LANFastTiming(), k)
	reg := &clms.KeyServices{}
	seq, err := keyseq.Register(reg, keyseq.Config{Block: 10, Critical: critical})
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{Cluster: c.c.Config, Node: num, DataDir: t.TempDir(), Timing: &tm, KeyServices: reg,
		Logger: enginetest.Logger(), Engine: func(c *engine.Config) { c.EventLoops = 1 }})
	if err != nil {
		t.Fatal(err)
	}
	if err := seq.Attach(n.Engine(), n.Runner()); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	c.nodes[num], c.seqs[num] = n, seq
}

// waitFor polls cond until it holds.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			var dump string
			for _, n := range c.live() {
				dump += fmt.Sprintf("\nnode %d: %+v", n, c.nodes[n].Status())
			}
			c.t.Fatalf("timed out waiting for %s%s", what, dump)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metric reads one series of node n.
func (c *cluster) metric(n clms.NodeNum, series string) string {
	var b strings.Builder
	c.nodes[n].Metrics().WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if name, v, ok := strings.Cut(l, " "); ok && name == series {
			return v
		}
	}
	return ""
}

// live is every node not closed, in order.
func (c *cluster) live() []clms.NodeNum {
	return slices.Sorted(maps.Keys(c.nodes))
}

// waitOwner waits until every live node sees a ready owner in an epoch
// above after, acting on its node, and returns it.
func (c *cluster) waitOwner(after uint64) (clms.NodeNum, uint64) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		owner, epoch, ok := c.seqs[c.live()[0]].Owner()
		same := ok && epoch > after
		for _, n := range c.live() {
			o, e, ok := c.seqs[n].Owner()
			same = same && ok && o == owner && e == epoch && c.nodes[n].Ready()
		}
		if same && c.nodes[owner] != nil && c.seqs[owner].Stats().Serving {
			return owner, epoch
		}
		if time.Now().After(deadline) {
			var dump string
			for _, n := range c.live() {
				dump += fmt.Sprintf("\nnode %d: %+v %+v", n, c.nodes[n].Status().KeyServices, c.seqs[n].Stats())
			}
			c.t.Fatalf("no ready owner after epoch %d%s", after, dump)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// draw takes ids from every live node, rounds times, and returns the
// highest; it fails the test if any id was handed out twice.
func (c *cluster) draw(ctx context.Context, rounds int, seen map[uint64]clms.NodeNum) uint64 {
	c.t.Helper()
	var hi uint64
	for range rounds {
		for _, n := range c.live() {
			rg, err := c.seqs[n].Next(ctx, 3)
			if err != nil {
				c.t.Fatalf("node %d: Next: %v", n, err)
			}
			for id := rg.First; id <= rg.Last(); id++ {
				if by, dup := seen[id]; dup {
					c.t.Fatalf("id %d handed out twice: to node %d and node %d (epoch %d)", id, by, n, rg.Epoch)
				}
				seen[id] = n
			}
			hi = max(hi, rg.Last())
		}
	}
	return hi
}

// The owner stops (as a crash, seen from the others); a survivor takes
// over in the next epoch, pulls each survivor's highest id and continues
// after the largest: no id is handed out twice, and the first new one is
// exactly the pulled maximum + 1. A request stamped with the old epoch is
// refused.
func TestOwnerCloseFailover(t *testing.T) {
	c := startCluster(t, 3)
	ctx := enginetest.Context(t, 30*time.Second)
	owner, epoch := c.waitOwner(0)
	seen := map[uint64]clms.NodeNum{}
	handed := c.draw(ctx, 4, seen) // 36 ids in blocks of 10: several reservations
	_ = c.nodes[owner].Close()
	delete(c.nodes, owner)
	survivors := c.live()
	want := map[clms.NodeNum]uint64{}
	for _, n := range survivors {
		want[n] = c.seqs[n].Stats().Seen // stable: the owner is gone
		if want[n] < handed {
			t.Fatalf("node %d saw up to %d, but ids up to %d were handed out", n, want[n], handed)
		}
	}
	newOwner, newEpoch := c.waitOwner(epoch)
	if newOwner == owner || newEpoch != epoch+1 {
		t.Fatalf("new owner %d in epoch %d; old %d in %d", newOwner, newEpoch, owner, epoch)
	}
	a := c.seqs[newOwner].Stats().Assembled
	if a == nil || a.Epoch != newEpoch || a.Handover || !maps.Equal(a.Pulled, want) || a.Base != slices.Max(slices.Collect(maps.Values(want))) {
		t.Fatalf("assembled %+v; want pulled %v", a, want)
	}
	rg, err := c.seqs[survivors[0]].Next(ctx, 1)
	if err != nil || rg.First != a.Base+1 || rg.Epoch != newEpoch {
		t.Fatalf("first id after failover: %+v %v; want %d in epoch %d", rg, err, a.Base+1, newEpoch)
	}
	c.draw(ctx, 2, seen)
	for series, want := range map[string]string{
		fmt.Sprintf(`ci_clms_keysvc_owner{node="%d",service="keyseq"}`, newOwner):  fmt.Sprint(newOwner),
		fmt.Sprintf(`ci_clms_keysvc_epoch{node="%d",service="keyseq"}`, newOwner):  fmt.Sprint(newEpoch),
		fmt.Sprintf(`ci_clms_keysvc_acting{node="%d",service="keyseq"}`, newOwner): "1",
		fmt.Sprintf(`ci_clms_keysvc_failovers_total{node="%d"}`, newOwner):         "1",
		fmt.Sprintf(`ci_clms_keysvc_pull_failures_total{node="%d"}`, newOwner):     "0",
	} {
		if got := c.metric(newOwner, series); got != want {
			t.Errorf("%s = %q, want %q", series, got, want)
		}
	}

	// A client that remembered the old epoch.
	other := survivors[0]
	if other == newOwner {
		other = survivors[1]
	}
	before := c.seqs[newOwner].Stats().Refused
	if _, err := c.seqs[other].NextAt(ctx, newOwner, epoch, 1); !errors.Is(err, keyseq.ErrStaleEpoch) {
		t.Fatalf("request in the old epoch: %v, want ErrStaleEpoch", err)
	}
	if got := c.seqs[newOwner].Stats().Refused; got != before+1 {
		t.Fatalf("refused %d, want %d", got, before+1)
	}
}

// A planned move hands the exact next id over: no pull, no gap, epoch + 1.
func TestPlannedMove(t *testing.T) {
	c := startCluster(t, 3)
	ctx := enginetest.Context(t, 30*time.Second)
	owner, epoch := c.waitOwner(0)
	seen := map[uint64]clms.NodeNum{}
	last := c.draw(ctx, 2, seen)
	target := owner%3 + 1
	if err := c.nodes[target].MoveKeyService(ctx, keyseq.Name, target); err != nil {
		t.Fatal(err)
	}
	newOwner, newEpoch := c.waitOwner(epoch)
	if newOwner != target || newEpoch != epoch+1 {
		t.Fatalf("moved to %d in epoch %d; want %d in %d", newOwner, newEpoch, target, epoch+1)
	}
	a := c.seqs[target].Stats().Assembled
	if a == nil || !a.Handover || a.Base != last {
		t.Fatalf("assembled %+v; want the hand-over of %d", a, last)
	}
	rg, err := c.seqs[owner].Next(ctx, 1)
	if err != nil || rg.First != last+1 || rg.Epoch != newEpoch {
		t.Fatalf("first id after the move: %+v %v; want %d in epoch %d", rg, err, last+1, newEpoch)
	}
	if c.seqs[owner].Stats().Serving {
		t.Fatal("the old owner still serves")
	}
	if st := c.nodes[owner].Status(); !st.Ready || len(st.KeyServices) != 1 || st.KeyServices[0].Owner != target || st.KeyServices[0].Acting {
		t.Fatalf("old owner's status: %+v", st)
	}
}

// A critical key service holds readiness back: nodes 1 and 2 are members
// with valid leases but not ready while the only node that may run keyseq
// is away; node 3 joins, takes it, and every node is ready. When node 3
// stops, no capable node is left: under key_service_panic = "degraded" the
// others stay up and say the service is missing (status and metric).
func TestCriticalReadinessAndDegraded(t *testing.T) {
	c := newCluster(t, nodetest.Options{Nodes: 3, Top: []string{`key_service_panic = "degraded"`},
		KeyServices: []clms.KeyServiceEntry{{Name: keyseq.Name, Critical: true}},
		Capable: func(n int) []string {
			if n == 3 {
				return []string{keyseq.Name}
			}
			return nil
		}})
	c.start(1, true)
	c.start(2, true)
	c.waitFor("nodes 1 and 2 members", func() bool {
		for _, n := range []clms.NodeNum{1, 2} {
			if st := c.nodes[n].Status(); !st.LeaseValid || len(st.Members) < 2 {
				return false
			}
		}
		return true
	})
	for _, n := range []clms.NodeNum{1, 2} {
		if st := c.nodes[n].Status(); st.Formed || st.Ready || c.nodes[n].Ready() {
			t.Fatalf("node %d ready without its critical key service: %+v", n, st)
		}
	}
	c.start(3, true)
	c.waitFor("every node ready", func() bool {
		for _, n := range c.live() {
			if !c.nodes[n].Ready() {
				return false
			}
		}
		return true
	})
	if owner, _, ok := c.seqs[1].Owner(); !ok || owner != 3 {
		t.Fatalf("owner %d %v, want node 3", owner, ok)
	}
	_ = c.nodes[3].Close()
	delete(c.nodes, 3)
	c.waitFor("keyseq degraded on nodes 1 and 2", func() bool {
		for _, n := range c.live() {
			if st := c.nodes[n].Status(); !slices.Equal(st.Degraded, []string{keyseq.Name}) || st.Fenced || !st.LeaseValid {
				return false
			}
		}
		return true
	})
	if got := c.metric(1, `ci_clms_keysvc_degraded{node="1"}`); got != "1" {
		t.Fatalf("ci_clms_keysvc_degraded = %q, want 1", got)
	}
	if _, err := c.seqs[1].Next(enginetest.Context(t, 50*time.Millisecond), 1); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, keyseq.ErrNoOwner) {
		t.Fatalf("Next without an owner: %v", err)
	}
}

// A planned shutdown of the owner hands keyseq over before the node leaves
// (no failover): the next owner continues right after the last id.
func TestOwnerShutdownHandsOver(t *testing.T) {
	c := startCluster(t, 3)
	ctx := enginetest.Context(t, 30*time.Second)
	owner, epoch := c.waitOwner(0)
	last := c.draw(ctx, 2, map[uint64]clms.NodeNum{})
	if err := c.nodes[owner].Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, owner)
	newOwner, newEpoch := c.waitOwner(epoch)
	a := c.seqs[newOwner].Stats().Assembled
	if newEpoch != epoch+1 || a == nil || !a.Handover || a.Base != last {
		t.Fatalf("after the shutdown: owner %d epoch %d assembled %+v; want a hand-over of %d in epoch %d", newOwner, newEpoch, a, last, epoch+1)
	}
	if got := c.metric(newOwner, fmt.Sprintf(`ci_clms_keysvc_handovers_total{node="%d"}`, newOwner)); got != "1" {
		t.Fatalf("handovers %q, want 1", got)
	}
	if rg, err := c.seqs[newOwner].Next(ctx, 1); err != nil || rg.First != last+1 {
		t.Fatalf("first id after the hand-over: %+v %v; want %d", rg, err, last+1)
	}
}
