package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/services/clusterapi"
	"github.com/clusterinfra/ci/services/node"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

func TestMain(m *testing.M) {
	if runChild() {
		return
	}
	goleak.VerifyTestMain(m, enginetest.LeakOptions()...)
}

// testTiming is lan-fast stretched twice (four times under the race
// detector): in-process nodes share one starved test process, and a lease
// that runs out during a stall is a (correct) fence, not what these tests
// test. The multi-process tests run lan-fast itself unless raced.
func testTiming() *clms.Timing {
	k := time.Duration(2)
	if raceEnabled {
		k = 4
	}
	t := clmstest.Stretch(clms.LANFastTiming(), k)
	return &t
}

type inproc struct {
	t *testing.T
	// newKeys, if set, makes each node's key-service registry (a node
	// that restarts needs a new one).
	newKeys func() *clms.KeyServices
	c       *nodetest.Cluster
	dirs    map[clms.NodeNum]string
	nodes   map[clms.NodeNum]*node.Node
}

func startInproc(t *testing.T, opt nodetest.Options) *inproc {
	return startInprocKeys(t, opt, nil)
}

func startInprocKeys(t *testing.T, opt nodetest.Options, newKeys func() *clms.KeyServices) *inproc {
	c, err := nodetest.Write(t.TempDir(), opt)
	if err != nil {
		t.Fatal(err)
	}
	p := &inproc{t: t, newKeys: newKeys, c: c, dirs: map[clms.NodeNum]string{}, nodes: map[clms.NodeNum]*node.Node{}}
	for num := range c.Addrs {
		p.dirs[num] = t.TempDir()
		p.start(num)
	}
	return p
}

func (p *inproc) start(num clms.NodeNum) *node.Node {
	p.t.Helper()
	var keys *clms.KeyServices
	if p.newKeys != nil {
		keys = p.newKeys()
	}
	n, err := node.New(node.Config{Cluster: p.c.Config, Node: num, DataDir: p.dirs[num], Timing: testTiming(),
		KeyServices: keys, Logger: enginetest.Logger(), Engine: func(c *engine.Config) { c.EventLoops = 1 }})
	if err != nil {
		p.t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { _ = n.Close() })
	p.nodes[num] = n
	return n
}

func (p *inproc) waitFor(what string, on []clms.NodeNum, cond func(node.Status) bool) {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, num := range on {
			if !cond(p.nodes[num].Status()) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			dump := ""
			for _, num := range on {
				dump += fmt.Sprintf("\n%+v", p.nodes[num].Status())
			}
			p.t.Fatalf("timed out waiting for %s:%s", what, dump)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func member(s node.Status, n clms.NodeNum) node.MemberStatus {
	for _, m := range s.Members {
		if m.Node == n {
			return m
		}
	}
	return node.MemberStatus{}
}

func up(nodes ...clms.NodeNum) func(node.Status) bool {
	return func(s node.Status) bool {
		for _, n := range nodes {
			if member(s, n).State != "UP" {
				return false
			}
		}
		return s.LeaseValid
	}
}

func others(all []clms.NodeNum, but clms.NodeNum) []clms.NodeNum {
	return slices.DeleteFunc(slices.Clone(all), func(n clms.NodeNum) bool { return n == but })
}

// A whole node's life in one process: formation, the cluster API over ICS,
// a crash seen by every survivor, a rejoin as a new incarnation, the
// master's end and a new master, a planned leave.
func TestNodeLifecycle(t *testing.T) {
	p := startInproc(t, nodetest.Options{Nodes: 4, Eligible: 3})
	all := []clms.NodeNum{1, 2, 3, 4}
	p.waitFor("formation", all, up(all...))

	// The cluster API on node 2, called from node 1, serves the same view.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := clusterapi.NewClient(p.nodes[1].Engine())
	members, last, err := cl.Membership(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 4 || last == 0 {
		t.Fatalf("membership from node 2: %d rows, last %d", len(members), last)
	}
	for _, m := range members {
		if m.State != clms.StateUp || m.Info.CPUsTotal == 0 {
			t.Fatalf("node 2 serves %+v: want UP with its joining info", m)
		}
	}
	// clusternode_setinfo through node 1's API: committed by the master,
	// then seen by every node.
	info := clms.NodeInfo{CPUsTotal: 64, CPUsOnline: 32, Capabilities: []string{"gpu"}}
	if err := cl.SetNodeInfo(ctx, 2, 3, info); err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		deadline := time.Now().Add(10 * time.Second)
		for {
			m, _ := p.nodes[n].Backend().Member(3)
			if m.Info.CPUsTotal == 64 && slices.Equal(m.Info.Capabilities, []string{"gpu"}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d shows node 3's info %+v, want %+v", n, m.Info, info)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// Crash of a non-master (Close without a leave).
	victim := clms.NodeNum(4)
	oldInc := p.nodes[victim].Status().Incarnation
	_ = p.nodes[victim].Close()
	survivors := others(all, victim)
	p.waitFor("NODEDOWN of the crashed node on every survivor", survivors, func(s node.Status) bool {
		return member(s, victim).State == "DOWN"
	})
	// Rejoin as a new incarnation.
	p.start(victim)
	p.waitFor("the rejoined node UP", all, func(s node.Status) bool {
		m := member(s, victim)
		return m.State == "UP" && m.Incarnation > oldInc && s.LeaseValid
	})

	// The master ends; another takes over.
	master := p.nodes[1].Status().Master
	_ = p.nodes[master].Close()
	rest := others(all, master)
	p.waitFor("a new master", rest, func(s node.Status) bool {
		return s.Master != 0 && s.Master != master && member(s, master).State == "DOWN" && s.LeaseValid
	})

	// A planned leave: SHUTDOWN .. DOWN.
	if err := p.nodes[victim].Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (node err %v, status %+v)", err, p.nodes[victim].Err(), p.nodes[victim].Status())
	}
	stay := others(rest, victim)
	p.waitFor("the leaver DOWN", stay, func(s node.Status) bool { return member(s, victim).State == "DOWN" })
	ts, err := clusterapi.NewClient(p.nodes[stay[0]].Engine()).WaitTransitions(ctx, stay[1], 0, 1000, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var path []clms.NodeState
	for _, tr := range ts {
		if tr.Node == victim && tr.Incarnation != oldInc {
			path = append(path, tr.To)
		}
	}
	want := []clms.NodeState{clms.StateComingUp, clms.StateUp, clms.StateShutdown, clms.StateKCleanup, clms.StateUCleanup, clms.StateDown}
	if !slices.Equal(path, want) {
		t.Fatalf("the leaver's transitions %v, want %v", path, want)
	}
	for _, n := range stay {
		if err := p.nodes[n].Err(); err != nil {
			t.Fatalf("node %d stopped: %v", n, err)
		}
	}
}
