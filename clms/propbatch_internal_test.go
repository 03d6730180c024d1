package clms

import (
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// coreNet is a lossless, instant network of cores for tests that look at
// single Readies: pump delivers every message until none is left.
type coreNet struct {
	t     *testing.T
	cores map[NodeNum]*Core
}

func newCoreNet(t *testing.T, nodes, voters int) *coreNet {
	t.Helper()
	var table []NodeConfig
	for i := 1; i <= nodes; i++ {
		table = append(table, NodeConfig{Num: NodeNum(i), MasterEligible: i <= voters})
	}
	n := &coreNet{t: t, cores: map[NodeNum]*Core{}}
	for i := 1; i <= voters; i++ { // the other nodes never start
		c, err := NewCore(Config{Self: NodeNum(i), Nodes: table, Timing: LANFastTiming(), Incarnation: 1})
		if err != nil {
			t.Fatal(err)
		}
		n.cores[NodeNum(i)] = c
	}
	return n
}

// drain takes node n's Readies until it has none and returns their messages.
func (n *coreNet) drain(num NodeNum) []Message {
	var out []Message
	c := n.cores[num]
	if c == nil { // stopped
		return nil
	}
	for c.HasReady() {
		rd := c.Ready()
		out = append(out, rd.Messages...)
		c.Advance()
		// Subsystems with no callbacks: each reports at once.
		for _, a := range rd.Actions {
			if a.Kind == ActRunNodeUp || a.Kind == ActRunNodeDown {
				c.CallbacksDone(a.Transition, nil)
			}
		}
	}
	return out
}

// pump delivers messages among the started cores until there are none.
func (n *coreNet) pump() {
	for range 10000 {
		var msgs []Message
		for num := NodeNum(1); int(num) <= len(n.cores); num++ {
			msgs = append(msgs, n.drain(num)...)
		}
		if len(msgs) == 0 {
			return
		}
		for _, m := range msgs {
			if to := n.cores[m.To]; to != nil {
				_ = to.Step(m)
			}
		}
	}
	n.t.Fatal("the cores never went quiet")
}

// master ticks every core until one is a ready master whom every voter
// knows as such, and the network is quiet.
func (n *coreNet) master() *Core {
	for range 2000 {
		for num := NodeNum(1); int(num) <= len(n.cores); num++ {
			n.cores[num].Tick()
		}
		n.pump()
		for _, c := range n.cores {
			if c.isMaster() && c.st.members[c.self].State == StateUp {
				return c
			}
		}
	}
	n.t.Fatal("no master")
	return nil
}

// The proposals a master makes before its next Ready (the joins of one
// runner batch, or the records of one input) reach raft as one MsgProp:
// raft appends them together and sends each follower one MsgApp carrying
// all of them, so a follower writes and acknowledges them at once and they
// commit together. One RawNode.Propose each, they went out as one MsgApp
// each.
func TestProposalsOfABatchTravelTogether(t *testing.T) {
	n := newCoreNet(t, 7, 3)
	m := n.master()
	before := m.Stats()
	joiners := []NodeNum{4, 5, 6, 7}
	for _, j := range joiners {
		if err := m.Step(Message{Type: MsgJoin, From: j, FromInc: 1, To: m.self, Digest: m.digest}); err != nil {
			t.Fatal(err)
		}
	}
	apps := map[NodeNum][]int{} // follower -> entries in each MsgApp
	for _, out := range n.drain(m.self) {
		if out.Type == MsgRaft && out.Raft.GetType() == raftpb.MsgApp {
			apps[out.To] = append(apps[out.To], len(out.Raft.GetEntries()))
		}
		if to := n.cores[out.To]; to != nil {
			_ = to.Step(out)
		}
	}
	for _, f := range m.voters {
		if f == m.self {
			continue
		}
		if got := apps[f]; len(got) != 1 || got[0] != len(joiners) {
			t.Errorf("follower %d got MsgApps with %v entries, want one with %d", f, got, len(joiners))
		}
	}
	after := m.Stats()
	if p, b := after.Proposals-before.Proposals, after.ProposalBatches-before.ProposalBatches; p != uint64(len(joiners)) || b != 1 {
		t.Errorf("%d proposals in %d batches, want %d in 1", p, b, len(joiners))
	}
	// They commit together, in order, and the joiners are COMINGUP.
	n.pump()
	for _, j := range joiners {
		if st := m.st.members[j].State; st != StateComingUp {
			t.Errorf("node %d is %s, want %s", j, st, StateComingUp)
		}
	}
}

// A NODEDOWN's steps that wait for nothing are proposed with the step
// before them: GOINGDOWN with KCLEANUP, UCLEANUP with DOWN. Each pair is
// one raft append (the survivors' writes once, not twice in a row), and
// nothing is proposed twice: a node's death costs two raft rounds, not
// four.
func TestNodeDownStepsCommitInPairs(t *testing.T) {
	n := newCoreNet(t, 3, 3)
	m := n.master()
	for range 2000 { // every voter joins
		if up := m.st.Members(); len(up) == 3 && up[0].State == StateUp && up[1].State == StateUp && up[2].State == StateUp {
			break
		}
		for _, c := range n.cores {
			c.Tick()
		}
		n.pump()
	}
	var victim, follower NodeNum
	for num := range n.cores {
		if num != m.self {
			if victim == 0 {
				victim = num
			} else {
				follower = num
			}
		}
	}
	inc := m.st.members[victim].Incarnation
	n.cores[victim] = nil // killed
	before := m.Stats()
	m.PeerCrashProof(victim, inc)
	var apps []int
	for _, out := range n.drain(m.self) {
		if out.Type == MsgRaft && out.Raft.GetType() == raftpb.MsgApp && out.To == follower {
			apps = append(apps, len(out.Raft.GetEntries()))
		}
		if to := n.cores[out.To]; to != nil {
			_ = to.Step(out)
		}
	}
	if len(apps) != 1 || apps[0] != 2 {
		t.Errorf("the follower got MsgApps with %v entries, want one with 2 (GOINGDOWN and KCLEANUP)", apps)
	}
	n.pump() // the survivors' NODEDOWN callbacks report at once
	for _, c := range []*Core{m, n.cores[follower]} {
		if st := c.st.members[victim].State; st != StateDown {
			t.Errorf("node %d sees the victim %s, want DOWN", c.self, st)
		}
	}
	var path []string
	for _, r := range m.st.Records(0) {
		if r.Kind == RecordTransition && r.Transition.Node == victim && r.Transition.Incarnation == inc {
			path = append(path, r.Transition.To.String())
		}
	}
	if want := "COMINGUP UP GOINGDOWN KCLEANUP UCLEANUP DOWN"; strings.Join(path, " ") != want {
		t.Errorf("victim's transitions %v, want %s", path, want)
	}
	after := m.Stats()
	if p, b := after.Proposals-before.Proposals, after.ProposalBatches-before.ProposalBatches; p != 4 || b != 2 {
		t.Errorf("%d proposals in %d raft appends, want 4 in 2", p, b)
	}
}

// A leader not yet ready keeps the callback reports it hears for when it
// is (TestMasterShutdownCallbacksNotLost), but no more than
// maxEarlyReports of them, whatever a peer sprays at it.
func TestEarlyCallbackReportsBounded(t *testing.T) {
	n := newCoreNet(t, 3, 3)
	m := n.master()
	var from NodeNum = 1
	if from == m.self {
		from = 2
	}
	m.m.ready = false // as between winning the election and applying its term's first entry
	for i := range maxEarlyReports + 5000 {
		if err := m.Step(Message{Type: MsgCallbacksDone, From: from, FromInc: 1, To: m.self, Transition: TransitionID(1000 + i), Failed: []string{"x"}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(m.m.early); got != maxEarlyReports {
		t.Fatalf("%d reports held, want the bound %d", got, maxEarlyReports)
	}
	m.masterReady() // none of them is awaited: all dropped
	if m.m.early != nil {
		t.Fatalf("%d reports still held after masterReady", len(m.m.early))
	}
}
