package clms_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// runnerNode is one in-process node: an engine and its CLMS runner.
type runnerNode struct {
	num   clms.NodeNum
	eng   *engine.Node
	r     *clms.Runner
	store *clms.Store
	dir   string

	mu       sync.Mutex
	applied  []clms.Transition
	restored []*clms.Restored
	fatal    error
}

func (n *runnerNode) history() []clms.Transition {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.applied)
}

func (n *runnerNode) close() {
	_ = n.r.Close()
	_ = n.eng.Close()
}

// runnerCluster is a test cluster of count nodes, all master-eligible up to
// eligible, on 127.0.0.x with stores in the test's temporary directory.
type runnerCluster struct {
	t      *testing.T
	table  []clms.NodeConfig
	timing clms.Timing
	addrs  map[clms.NodeNum]string
	nodes  map[clms.NodeNum]*runnerNode
	subs   func(clms.NodeNum) *clms.Subsystems
	comp   clms.Compaction
	// logs, when set, takes each node's log at debug level.
	logs map[clms.NodeNum]*lockedBuffer
}

// lockedBuffer is a log sink shared by a node's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newRunnerCluster(t *testing.T, count, eligible int, subs func(clms.NodeNum) *clms.Subsystems) *runnerCluster {
	return newRunnerClusterCompaction(t, count, eligible, subs, clms.Compaction{})
}

func newRunnerClusterCompaction(t *testing.T, count, eligible int, subs func(clms.NodeNum) *clms.Subsystems, comp clms.Compaction) *runnerCluster {
	return newRunnerClusterTiming(t, count, eligible, subs, comp, testTiming())
}

func newRunnerClusterTiming(t *testing.T, count, eligible int, subs func(clms.NodeNum) *clms.Subsystems, comp clms.Compaction, timing clms.Timing) *runnerCluster {
	return newRunnerClusterLogged(t, count, eligible, subs, comp, timing, nil)
}

func newRunnerClusterLogged(t *testing.T, count, eligible int, subs func(clms.NodeNum) *clms.Subsystems, comp clms.Compaction, timing clms.Timing, logs map[clms.NodeNum]*lockedBuffer) *runnerCluster {
	c := &runnerCluster{t: t, timing: timing, addrs: map[clms.NodeNum]string{}, nodes: map[clms.NodeNum]*runnerNode{}, subs: subs, comp: comp, logs: logs}
	for i := 1; i <= count; i++ {
		c.table = append(c.table, clms.NodeConfig{Num: clms.NodeNum(i), MasterEligible: i <= eligible})
	}
	for _, nc := range c.table {
		c.start(nc.Num, t.TempDir(), fmt.Sprintf("127.0.0.%d:0", nc.Num))
	}
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				if err := a.eng.SetPeer(b.num, c.addrs[b.num]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, n := range c.nodes {
		if err := n.r.Start(); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// start builds node num's engine and runner (the runner not started).
func (c *runnerCluster) start(num clms.NodeNum, dir, addr string) *runnerNode {
	t := c.t
	t.Helper()
	store, err := clms.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.EventLoops = num, "test", addr, 1
	cfg.Insecure, cfg.Incarnation, cfg.Logger = true, store.Incarnation(), enginetest.Logger()
	cfg.DialTimeout = time.Second
	cfg.Peers = map[clms.NodeNum]string{}
	for n, a := range c.addrs {
		if n != num {
			cfg.Peers[n] = a
		}
	}
	if l := c.logs[num]; l != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(); err != nil {
		t.Fatal(err)
	}
	c.addrs[num] = eng.Addr()
	n := &runnerNode{num: num, eng: eng, store: store, dir: dir}
	var subs *clms.Subsystems
	if c.subs != nil {
		subs = c.subs(num)
	}
	r, err := clms.NewRunner(clms.RunnerConfig{
		Engine: eng, Nodes: c.table, Timing: c.timing, Incarnation: store.Incarnation(), Store: store,
		Info: clms.NodeInfo{CPUsTotal: 2, CPUsOnline: 2}, Subsystems: subs, Fencing: clms.FenceDebug,
		OnApplied: func(rs []clms.Record) {
			n.mu.Lock()
			for _, r := range rs {
				if r.Kind == clms.RecordTransition {
					n.applied = append(n.applied, r.Transition)
				}
			}
			n.mu.Unlock()
		},
		OnRestored: func(r *clms.Restored) {
			n.mu.Lock()
			// The view OnApplied built is replaced by the image's history.
			n.applied = slices.Clone(r.History)
			n.restored = append(n.restored, r)
			n.mu.Unlock()
		},
		Compaction: c.comp,
		OnFatal:    func(err error) { n.mu.Lock(); n.fatal = err; n.mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	n.r = r
	c.nodes[num] = n
	t.Cleanup(n.close)
	return n
}

// restart starts node num again as a new incarnation on its address and
// data directory.
func (c *runnerCluster) restart(num clms.NodeNum) *runnerNode {
	old := c.nodes[num]
	old.close()
	n := c.start(num, old.dir, c.addrs[num])
	if ms, err := n.store.Load(c.table); err != nil {
		c.t.Fatal(err)
	} else if li, _ := ms.LastIndex(); li < 5 {
		c.t.Fatalf("node %d restarts with raft log up to %d: its log was not kept", num, li)
	}
	if err := n.r.Start(); err != nil {
		c.t.Fatal(err)
	}
	return n
}

// waitFor polls cond on every live node until it holds everywhere.
func (c *runnerCluster) waitFor(what string, nodes []clms.NodeNum, cond func(*runnerNode, clms.RunnerStatus) bool) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, num := range nodes {
			n := c.nodes[num]
			if !cond(n, n.r.Status()) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s%s", what, c.dump(nodes))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dump is what nodes see: status, CLMS metrics that are not 0, history.
func (c *runnerCluster) dump(nodes []clms.NodeNum) string {
	var dump string
	for _, num := range nodes {
		s := c.nodes[num].r.Status()
		dump += fmt.Sprintf("\nnode %d: master=%d is_master=%v joined=%v lease=%v left=%v fenced=%v(%s) members=%v", num, s.Master, s.IsMaster, s.Joined, s.LeaseValid, s.Left, s.Fenced, s.FenceReason, s.Members)
		var b strings.Builder
		c.nodes[num].eng.Metrics().WritePrometheus(&b)
		for _, l := range strings.Split(b.String(), "\n") {
			if strings.HasPrefix(l, "ci_clms_") && !strings.HasSuffix(l, " 0") {
				dump += "\n  " + l
			}
		}
		for _, tr := range c.nodes[num].history() {
			dump += "\n  " + tr.String()
		}
	}
	return dump
}

// testTiming is the lan-fast profile stretched twice (four times under the
// race detector): on a machine shared by many test processes its 300 ms
// lease is shorter than a starved process's stalls, and a lease that runs
// out is (correctly) a fence, not what these tests test. The multi-process
// tests run the profile itself.
func testTiming() clms.Timing {
	k := time.Duration(2)
	if raceEnabled {
		k = 4
	}
	return clmstest.Stretch(clms.LANFastTiming(), k)
}

// crashNonMaster waits for all to be UP, crashes a node that is not the
// master (Close without a leave) and waits until the others see it DOWN.
func (c *runnerCluster) crashNonMaster(all []clms.NodeNum) (victim clms.NodeNum, survivors []clms.NodeNum) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d nodes UP", len(all)), all, allUp(all...))
	victim, survivors = c.nonMaster(all)
	c.nodes[victim].close()
	c.waitFor("the crashed node DOWN", survivors, func(_ *runnerNode, s clms.RunnerStatus) bool {
		return stateOf(s, victim).State == clms.StateDown
	})
	return victim, survivors
}

// nonMaster picks a node of all that is not the master, and the others.
func (c *runnerCluster) nonMaster(all []clms.NodeNum) (clms.NodeNum, []clms.NodeNum) {
	master := c.nodes[all[0]].r.Status().Master
	victim := all[0]
	if victim == master {
		victim = all[1]
	}
	return victim, slices.DeleteFunc(slices.Clone(all), func(n clms.NodeNum) bool { return n == victim })
}

func stateOf(s clms.RunnerStatus, n clms.NodeNum) clms.Member {
	for _, m := range s.Members {
		if m.Node == n {
			return m
		}
	}
	return clms.Member{}
}

func allUp(nodes ...clms.NodeNum) func(*runnerNode, clms.RunnerStatus) bool {
	return func(_ *runnerNode, s clms.RunnerStatus) bool {
		for _, n := range nodes {
			if stateOf(s, n).State != clms.StateUp {
				return false
			}
		}
		return s.LeaseValid
	}
}

// TestRunnerStepTrace: at debug level a runner logs its steps, enough to
// follow a NODEDOWN through the nodes' logs (docs/CLMS.md, "Where a
// failover's milliseconds go"): the evidence, the messages, each write and
// its time, the records applied (GOINGDOWN and KCLEANUP in one Ready) and
// the actions.
func TestRunnerStepTrace(t *testing.T) {
	logs := map[clms.NodeNum]*lockedBuffer{1: {}, 2: {}, 3: {}}
	c := newRunnerClusterLogged(t, 3, 3, nil, clms.Compaction{}, testTiming(), logs)
	all := []clms.NodeNum{1, 2, 3}
	victim, survivors := c.crashNonMaster(all)
	master := c.nodes[survivors[0]].r.Status().Master
	pair := fmt.Sprintf("%d:UP->GOINGDOWN %d:GOINGDOWN->KCLEANUP", victim, victim)
	for _, n := range survivors {
		log := logs[n].String()
		want := []string{
			`msg="clms: step" .*message="raft .* MsgApp`,
			`msg="clms: received" .*message="raft `,
			`msg="clms: send" .*message="raft `,
			`msg="clms: saved" .*entries=2 sync=true took=`,
			`msg="clms: applied" .*records="` + pair,
			fmt.Sprintf(`msg="clms: action" .*action="peer-down node=%d `, victim),
		}
		if n == master {
			want = append(want, fmt.Sprintf(`msg="clms: evidence" .*peer=%d `, victim))
		}
		for _, w := range want {
			if !regexp.MustCompile(w).MatchString(log) {
				t.Errorf("node %d's debug log has no line matching %s", n, w)
			}
		}
	}
}

func TestRunnerFormationCrashRejoin(t *testing.T) {
	c := newRunnerCluster(t, 3, 3, nil)
	all := []clms.NodeNum{1, 2, 3}
	c.waitFor("3 nodes UP", all, allUp(1, 2, 3))

	// Crash a non-master: Close without a leave.
	victim, survivors := c.nonMaster(all)
	oldInc := c.nodes[victim].r.Status().Incarnation
	c.nodes[victim].close()
	c.waitFor("the crashed node DOWN", survivors, func(_ *runnerNode, s clms.RunnerStatus) bool {
		return stateOf(s, victim).State == clms.StateDown
	})
	// Every survivor applied the same history, and the node went down
	// through GOINGDOWN for a crash (proof, not silence).
	h0 := c.nodes[survivors[0]].history()
	for _, n := range survivors[1:] {
		if h := c.nodes[n].history(); !slices.Equal(h, h0) {
			t.Fatalf("node %d history differs from node %d's:\n%v\n%v", n, survivors[0], h, h0)
		}
	}
	if i := slices.IndexFunc(h0, func(tr clms.Transition) bool {
		return tr.Node == victim && tr.To == clms.StateGoingDown
	}); i < 0 || h0[i].Cause != clms.CauseCrash {
		t.Fatalf("no GOINGDOWN with cause crash for node %d in %v", victim, h0)
	}
	for _, n := range survivors {
		if !c.nodes[n].eng.IsDown(victim) {
			t.Fatalf("node %d's engine does not refuse node %d", n, victim)
		}
	}

	// It comes back as a new incarnation, with its raft log from disk.
	nn := c.restart(victim)
	if inc := nn.r.Status().Incarnation; inc <= oldInc {
		t.Fatalf("restarted incarnation %d not above %d", inc, oldInc)
	}
	c.waitFor("the restarted node UP", all, func(_ *runnerNode, s clms.RunnerStatus) bool {
		m := stateOf(s, victim)
		return m.State == clms.StateUp && m.Incarnation == nn.r.Status().Incarnation && s.LeaseValid
	})
	// Its history replays from its own log and continues with everyone's.
	c.waitFor("identical histories", all, func(n *runnerNode, _ clms.RunnerStatus) bool {
		return slices.Equal(n.history(), c.nodes[survivors[0]].history())
	})
}

// The master's process ends (Close without a leave): another voter takes
// over from the committed state and the old master goes DOWN; then a
// planned shutdown goes SHUTDOWN .. DOWN under the new master.
func TestRunnerMasterCloseAndShutdown(t *testing.T) {
	c := newRunnerCluster(t, 4, 3, nil)
	all := []clms.NodeNum{1, 2, 3, 4}
	c.waitFor("4 nodes UP", all, allUp(all...))
	master := c.nodes[1].r.Status().Master
	var rest []clms.NodeNum
	for _, n := range all {
		if n != master {
			rest = append(rest, n)
		}
	}
	c.nodes[master].close()
	c.waitFor("a new master, the old one DOWN", rest, func(_ *runnerNode, s clms.RunnerStatus) bool {
		return s.Master != 0 && s.Master != master && stateOf(s, master).State == clms.StateDown && s.LeaseValid
	})
	c.waitFor("the survivors UP", rest, allUp(rest...))
	masters := 0
	for _, n := range rest {
		if c.nodes[n].r.Status().IsMaster {
			masters++
		}
	}
	if masters != 1 {
		t.Fatalf("%d survivors act as master, want 1", masters)
	}

	// Node 4 (not master-eligible) leaves on purpose.
	const leaver = 4
	stay := slices.DeleteFunc(slices.Clone(rest), func(n clms.NodeNum) bool { return n == leaver })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.nodes[leaver].r.Shutdown(ctx); err != nil {
		// Seen once in about twenty runs of the package (CLMS_SEEDS=100),
		// not reproduced since: say what every node saw.
		t.Fatalf("node %d's Shutdown: %v%s", leaver, err, c.dump(rest))
	}
	if s := c.nodes[leaver].r.Status(); !s.Left || s.LeaseValid || s.Fenced {
		t.Fatalf("leaver's status after Shutdown: left=%v lease=%v fenced=%v; want left, no lease, not fenced", s.Left, s.LeaseValid, s.Fenced)
	}
	c.nodes[leaver].close()
	c.waitFor("the leaver DOWN", stay, func(_ *runnerNode, s clms.RunnerStatus) bool {
		return stateOf(s, leaver).State == clms.StateDown
	})
	var path []clms.NodeState
	for _, tr := range c.nodes[stay[0]].history() {
		if tr.Node == leaver {
			path = append(path, tr.To)
		}
	}
	want := []clms.NodeState{clms.StateComingUp, clms.StateUp, clms.StateShutdown, clms.StateKCleanup, clms.StateUCleanup, clms.StateDown}
	if !slices.Equal(path, want) {
		t.Fatalf("leaver's transitions %v, want %v", path, want)
	}
	for _, n := range stay {
		if !c.nodes[n].eng.IsDown(leaver) {
			t.Fatalf("node %d's engine does not refuse the departed node", n)
		}
	}
}

// A cluster stopped as a whole: the first voters' planned shutdowns are
// committed, and the last one, with no majority left to commit its own,
// is told so at once (ErrNoQuorum) instead of waiting out its ctx.
func TestRunnerLastVoterShutdownNoQuorum(t *testing.T) {
	c := newRunnerCluster(t, 3, 3, nil)
	all := []clms.NodeNum{1, 2, 3}
	c.waitFor("3 nodes UP", all, allUp(all...))
	// The master leaves last, so both earlier leaves go through the
	// ordinary path (another voter commits for them).
	last := c.nodes[1].r.Status().Master
	var first []clms.NodeNum
	for _, n := range all {
		if n != last {
			first = append(first, n)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, n := range first {
		if err := c.nodes[n].r.Shutdown(ctx); err != nil {
			t.Fatalf("node %d's shutdown with a majority left: %v", n, err)
		}
		c.nodes[n].close()
	}
	err := c.nodes[last].r.Shutdown(ctx)
	if !errors.Is(err, clms.ErrNoQuorum) {
		t.Fatalf("the last voter's shutdown returned %v, want ErrNoQuorum", err)
	}
	if !strings.Contains(err.Error(), "1 of 3 master-eligible nodes") {
		t.Fatalf("error %q does not say how many voters are left", err)
	}
	if s := c.nodes[last].r.Status(); s.Fenced || s.Left {
		t.Fatalf("last voter after ErrNoQuorum: fenced=%v left=%v; want neither (it stops unrecorded)", s.Fenced, s.Left)
	}
	c.nodes[last].close()
}

// The other voters' processes end without a leave (the last of a whole
// cluster stopped at once may never learn their SHUTDOWN was committed;
// here they just stop): the survivor's view still has them UP, but their
// addresses refuse connections, which proves them gone, so its shutdown
// ends with ErrNoQuorum rather than waiting out its ctx.
func TestRunnerShutdownVotersProvenGone(t *testing.T) {
	c := newRunnerCluster(t, 3, 3, nil)
	all := []clms.NodeNum{1, 2, 3}
	c.waitFor("3 nodes UP", all, allUp(all...))
	const survivor = 2
	for _, n := range []clms.NodeNum{1, 3} {
		c.nodes[n].close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := c.nodes[survivor].r.Shutdown(ctx)
	if !errors.Is(err, clms.ErrNoQuorum) {
		t.Fatalf("shutdown with both other voters' processes gone returned %v, want ErrNoQuorum", err)
	}
	s := c.nodes[survivor].r.Status()
	if s.Voters != 3 || s.VotersAlive > 1 {
		t.Fatalf("status says %d of %d voters alive, want at most 1 of 3", s.VotersAlive, s.Voters)
	}
	c.nodes[survivor].close()
}

// Subsystem callbacks run on every survivor on a NODEDOWN, in band order.
func TestRunnerSubsystems(t *testing.T) {
	var mu sync.Mutex
	calls := map[clms.NodeNum][]string{}
	record := func(self clms.NodeNum, what string) clms.Callback {
		return func(_ context.Context, node clms.NodeNum, _ uint64) error {
			mu.Lock()
			calls[self] = append(calls[self], fmt.Sprintf("%s:%d", what, node))
			mu.Unlock()
			if what == "fails" {
				return errors.New("failing on purpose")
			}
			return nil
		}
	}
	cl := newRunnerCluster(t, 3, 3, func(self clms.NodeNum) *clms.Subsystems {
		s := &clms.Subsystems{}
		_ = s.Register("late", 2, nil, record(self, "late"))
		_ = s.Register("fails", 1, nil, record(self, "fails"))
		_ = s.Register("early", 0, nil, record(self, "early"))
		return s
	})
	all := []clms.NodeNum{1, 2, 3}
	victim, survivors := cl.crashNonMaster(all)
	mu.Lock()
	defer mu.Unlock()
	for _, n := range survivors {
		want := []string{fmt.Sprintf("early:%d", victim), fmt.Sprintf("fails:%d", victim), fmt.Sprintf("late:%d", victim)}
		if !slices.Equal(calls[n], want) {
			t.Fatalf("node %d ran %v, want %v", n, calls[n], want)
		}
	}
}

// The core's key-service list (and the ConfigDigest every node must share)
// is taken from the registry when the runner is built: a service
// registered afterwards would never be assigned an owner on this node, and
// a Pull routine registered for a service cluster.toml lists would never
// be pulled. Registering then is refused, naming the service, rather than
// silently lost.
func TestKeyServiceRegisteredAfterNewRunner(t *testing.T) {
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.EventLoops = 2, "test", "127.0.0.2:0", 1
	cfg.Insecure, cfg.Incarnation, cfg.Logger = true, clms.NewIncarnation(), enginetest.Logger()
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	reg := &clms.KeyServices{}
	noop := func(context.Context, uint64) error { return nil }
	if err := reg.RegisterKeyService("early", false, noop, nil, nil); err != nil {
		t.Fatal(err)
	}
	r, err := clms.NewRunner(clms.RunnerConfig{Engine: eng, Incarnation: cfg.Incarnation, KeyServices: reg,
		Nodes: []clms.NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2}}, Timing: testTiming()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.KeyServices().RegisterKeyService("late", false, noop, nil, nil)
	if !errors.Is(err, clms.ErrConfig) || !strings.Contains(err.Error(), `"late"`) {
		t.Fatalf("registering after NewRunner: %v, want ErrConfig naming the service", err)
	}
}

// TestRunnerCompaction: runners with real stores snapshot and compact
// their logs on disk; a voter restarted from its compacted store restores
// its State from the stored snapshot (OnRestored), replays the rest, and
// ends with the others' membership and history.
func TestRunnerCompaction(t *testing.T) {
	comp := clms.Compaction{SnapshotEvery: 8, LogMargin: 2, HistoryKeep: 16}
	c := newRunnerClusterCompaction(t, 3, 3, nil, comp)
	all := []clms.NodeNum{1, 2, 3}
	c.waitFor("3 nodes UP", all, allUp(1, 2, 3))
	victim, _ := c.nonMaster(all)
	for range 3 {
		nn := c.restart(victim)
		c.waitFor("the restarted node UP", all, func(_ *runnerNode, s clms.RunnerStatus) bool {
			m := stateOf(s, victim)
			return m.State == clms.StateUp && m.Incarnation == nn.r.Status().Incarnation && s.LeaseValid
		})
	}
	nn := c.nodes[victim]
	nn.mu.Lock()
	restored := len(nn.restored)
	nn.mu.Unlock()
	if restored == 0 {
		t.Fatalf("node %d restarted from its store without restoring a snapshot", victim)
	}
	for _, num := range all {
		n := c.nodes[num]
		st := n.r.Status()
		// A read-only bbolt transaction, beside the runner's writes.
		snap, _, count, err := n.store.Size()
		if err != nil {
			t.Fatal(err)
		}
		if snap == 0 || uint64(count) > comp.SnapshotEvery+comp.LogMargin || st.Stats.Snapshots == 0 && num != victim {
			t.Fatalf("node %d stored a %d-byte snapshot and %d entries (%d snapshots taken)", num, snap, count, st.Stats.Snapshots)
		}
	}
	c.waitFor("identical members", all, func(n *runnerNode, s clms.RunnerStatus) bool {
		return reflect.DeepEqual(s.Members, c.nodes[victim].r.Status().Members)
	})
	// The restarted node's history (the snapshot's, then what it applied)
	// is the tail of a survivor's, which never restarted.
	_, survivors := c.nonMaster(all)
	ref := survivors[0]
	if ref == victim {
		ref = survivors[1]
	}
	c.waitFor("the same history", all, func(n *runnerNode, _ clms.RunnerStatus) bool {
		h, full := n.history(), c.nodes[ref].history()
		return len(h) > 0 && len(h) <= len(full) && slices.Equal(h, full[len(full)-len(h):])
	})
}

// TestRunnerRefusesSnapshotsOverMaxPayload: a history_keep whose state
// snapshots would not fit the engine's MaxPayload is a configuration error
// naming both, not a follower that can never catch up.
func TestRunnerRefusesSnapshotsOverMaxPayload(t *testing.T) {
	store, err := clms.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr, cfg.Insecure, cfg.Incarnation = 1, "test", "127.0.0.1:0", true, store.Incarnation()
	cfg.MaxPayload = 64 << 10
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	_, err = clms.NewRunner(clms.RunnerConfig{Engine: eng, Nodes: []clms.NodeConfig{{Num: 1, MasterEligible: true}}, Timing: testTiming(),
		Incarnation: store.Incarnation(), Store: store})
	if !errors.Is(err, clms.ErrConfig) || !strings.Contains(err.Error(), "history_keep 4096") || !strings.Contains(err.Error(), "MaxPayload 65536") {
		t.Fatalf("NewRunner with MaxPayload 64 KiB: %v", err)
	}
}
