package clms_test

import (
	"errors"
	"testing"

	"github.com/clusterinfra/ci/clms"
)

func newCore(t *testing.T, self clms.NodeNum, inc uint64) *clms.Core {
	t.Helper()
	c, err := clms.NewCore(clms.Config{Self: self, Nodes: []clms.NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2}},
		Timing: clms.LANFastTiming(), Incarnation: inc})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewCoreRejects(t *testing.T) {
	good := clms.Config{Self: 1, Nodes: []clms.NodeConfig{{Num: 1, MasterEligible: true}}, Timing: clms.LANFastTiming(), Incarnation: 1}
	bad := func(f func(*clms.Config)) clms.Config {
		c := good
		c.Nodes = append([]clms.NodeConfig(nil), good.Nodes...)
		f(&c)
		return c
	}
	for name, cfg := range map[string]clms.Config{
		"zero incarnation":  bad(func(c *clms.Config) { c.Incarnation = 0 }),
		"self not in table": bad(func(c *clms.Config) { c.Self = 9 }),
		"node twice":        bad(func(c *clms.Config) { c.Nodes = append(c.Nodes, clms.NodeConfig{Num: 1}) }),
		"no eligible node":  bad(func(c *clms.Config) { c.Nodes = []clms.NodeConfig{{Num: 1}} }),
		"bad timing":        bad(func(c *clms.Config) { c.Timing.LeaseTimeout = c.Timing.Heartbeat }),
	} {
		if _, err := clms.NewCore(cfg); !errors.Is(err, clms.ErrConfig) {
			t.Errorf("%s: err %v, want ErrConfig", name, err)
		}
	}
	if _, err := clms.NewCore(good); err != nil {
		t.Fatal(err)
	}
}

func TestStepRejectsAndDropsStale(t *testing.T) {
	c := newCore(t, 2, 1)
	if err := c.Step(clms.Message{Type: clms.MsgPing, From: 1, To: 3}); !errors.Is(err, clms.ErrNotForMe) {
		t.Fatalf("wrong addressee: %v", err)
	}
	if err := c.Step(clms.Message{Type: clms.MsgPing, From: 7, To: 2}); !errors.Is(err, clms.ErrUnknownNode) {
		t.Fatalf("unknown sender: %v", err)
	}
	if err := c.Step(clms.Message{Type: clms.MsgRaft, From: 1, To: 2, FromInc: 1}); !errors.Is(err, clms.ErrBadRaft) {
		t.Fatalf("raft to a node without raft: %v", err)
	}
	// Node 1 speaks as incarnation 5; its incarnation 4 is from a past run.
	if err := c.Step(clms.Message{Type: clms.MsgMasterIs, From: 1, To: 2, FromInc: 5, Node: 1, Term: 2}); err != nil {
		t.Fatal(err)
	}
	if c.Master() != 1 {
		t.Fatalf("master %d, want 1", c.Master())
	}
	c.Ready()
	if err := c.Step(clms.Message{Type: clms.MsgWhoIsMaster, From: 1, To: 2, FromInc: 4}); err != nil {
		t.Fatal(err)
	}
	if c.HasReady() {
		t.Fatalf("a message from a past incarnation had an effect: %+v", c.Ready())
	}
}

// A node that cannot reach a master gives up after JoinTimeout with
// ErrJoinTimeout, after logging why it retries.
func TestJoinTimeout(t *testing.T) {
	c := newCore(t, 2, 1)
	tm := clms.LANFastTiming()
	var acts []clms.Action
	for range tm.Ticks(tm.JoinTimeout) {
		c.Tick()
		acts = append(acts, c.Ready().Actions...)
	}
	if len(acts) != 2 || acts[0].Kind != clms.ActLog || acts[1].Kind != clms.ActJoinFailed || !errors.Is(acts[1].Err, clms.ErrJoinTimeout) {
		t.Fatalf("actions %v", acts)
	}
}

// A peer that breaks the protocol (a member with a bug, or a stale build)
// cannot corrupt a node's state or its idea of the master: pushes from a
// node that cannot be master, records out of order, illegal transitions and
// nodes outside the table are all refused.
func TestHostilePeerCannotCorruptState(t *testing.T) {
	c, err := clms.NewCore(clms.Config{Self: 2, Nodes: []clms.NodeConfig{{Num: 1, MasterEligible: true}, {Num: 2}, {Num: 3}},
		Timing: clms.LANFastTiming(), Incarnation: 1})
	if err != nil {
		t.Fatal(err)
	}
	tr := func(seq uint64, node clms.NodeNum, from, to clms.NodeState) clms.Record {
		return clms.Record{Seq: seq, Kind: clms.RecordTransition, Transition: clms.Transition{ID: clms.TransitionID(seq),
			Node: node, Incarnation: 1, From: from, To: to}}
	}
	step := func(m clms.Message) {
		t.Helper()
		m.To = 2
		if m.FromInc == 0 {
			m.FromInc = 1
		}
		if err := c.Step(m); err != nil {
			t.Fatal(err)
		}
	}
	// A node that is not master-eligible claims to be master, and pushes.
	step(clms.Message{Type: clms.MsgMasterIs, From: 3, Node: 3, Term: 1 << 60})
	step(clms.Message{Type: clms.MsgRecords, From: 3, Records: []clms.Record{tr(1, 3, clms.StateNeverUp, clms.StateComingUp)}})
	if c.Master() != 0 || c.State().LastSeq() != 0 {
		t.Fatalf("believed node 3: master %d, %d records", c.Master(), c.State().LastSeq())
	}
	// The real master pushes garbage: a gap, an illegal transition, a node
	// outside the table. None applies; the state stays empty.
	step(clms.Message{Type: clms.MsgRecords, From: 1, Records: []clms.Record{tr(2, 3, clms.StateNeverUp, clms.StateComingUp)}})
	step(clms.Message{Type: clms.MsgRecords, From: 1, Records: []clms.Record{tr(1, 3, clms.StateNeverUp, clms.StateUp)}})
	step(clms.Message{Type: clms.MsgRecords, From: 1, Records: []clms.Record{tr(1, 9, clms.StateNeverUp, clms.StateComingUp)}})
	if got := c.State().LastSeq(); got != 0 {
		t.Fatalf("applied %d bogus records", got)
	}
	rd := c.Ready()
	logs := 0
	for _, a := range rd.Actions {
		if a.Kind == clms.ActLog {
			logs++
		}
	}
	if logs != 2 {
		t.Fatalf("want the illegal transition and the unknown node logged, got actions %v", rd.Actions)
	}
	// And a valid record still applies after all that.
	step(clms.Message{Type: clms.MsgRecords, From: 1, Records: []clms.Record{tr(1, 3, clms.StateNeverUp, clms.StateComingUp)}})
	if got := c.State().LastSeq(); got != 1 {
		t.Fatalf("the valid record did not apply: %d records", got)
	}
}
