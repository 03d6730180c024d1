package clmstest

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/clusterinfra/ci/clms"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Checker holds the invariants every step of a simulation must keep:
//   - every process's records are a prefix of one sequence, with transition
//     ids 1, 2, 3, ... without gaps;
//   - raft never has two leaders in the same term;
//   - at most one node grants membership leases at any instant;
//   - no process acts as a member while its incarnation is SHUTDOWN,
//     GOINGDOWN, KCLEANUP, UCLEANUP or DOWN in any node's view (the longest
//     history is the union of the views, since all are prefixes of it);
//   - durability (raft thesis 3.8): a voter acknowledges entries and grants
//     a vote only once they are on its disk, and the newest committed entry
//     is on a majority of the voters' disks, dead processes' included;
//   - key services: epochs never decrease and a new owner gets exactly the
//     next one; at most one process acts as owner of a key service at any
//     instant, only while it holds its membership lease, and never in an
//     epoch older than the newest committed one (so a former owner cannot
//     act once a new owner took over).
type Checker struct {
	s       *Sim
	canon   []clms.Record
	state   map[clms.NodeNum]clms.Member // state after canon
	keys    map[string]clms.KeyRecord    // key services after canon
	leaders map[uint64]clms.NodeNum
	// commit is the highest raft index any voter persisted as committed,
	// and its entry's term there.
	commit, commitTerm uint64
	// Checks counts invariant evaluations, so a test can show the checker ran.
	Checks int
}

func newChecker(s *Sim) *Checker {
	return &Checker{s: s, state: map[clms.NodeNum]clms.Member{}, keys: map[string]clms.KeyRecord{}, leaders: map[uint64]clms.NodeNum{}}
}

// Canon returns the longest history seen.
func (c *Checker) Canon() []clms.Record { return c.canon }

func (c *Checker) fail(format string, args ...any) {
	c.s.tb.Helper()
	c.s.tb.Fatalf("at %v: invariant violated: %s\n%s", c.s.Now, fmt.Sprintf(format, args...), c.s.Dump())
}

// record checks one record a process applied against the sequence.
func (c *Checker) record(n *Node, r clms.Record) {
	i := len(n.Records) - 1
	if r.Kind == clms.RecordTransition {
		n.transitions++
		if r.Transition.ID != clms.TransitionID(n.transitions) {
			c.fail("node %d applied transition %d as its transition %d", n.Num, r.Transition.ID, n.transitions)
		}
	}
	if r.Seq != uint64(i+1) {
		c.fail("node %d applied record %d as its record %d", n.Num, r.Seq, i+1)
	}
	if i < len(c.canon) {
		if !reflect.DeepEqual(c.canon[i], r) {
			c.fail("node %d record %d is %v, others have %v", n.Num, r.Seq, r.Transition, c.canon[i].Transition)
		}
		return
	}
	c.canon = append(c.canon, r)
	if r.Kind == clms.RecordKeyService {
		k, prev := r.Key, c.keys[r.Key.Name]
		if k.Epoch < prev.Epoch || (k.Phase == clms.KeyFailover && k.Epoch != prev.Epoch+1) {
			c.fail("key service %q: epoch %d after %d (%v)", k.Name, k.Epoch, prev.Epoch, k)
		}
		c.keys[k.Name] = k
		return
	}
	if r.Kind != clms.RecordTransition {
		return
	}
	t := r.Transition
	c.state[t.Node] = clms.Member{Node: t.Node, State: t.To, Incarnation: t.Incarnation, LastChange: t.ID}
}

// promise checks a message n is about to send against n's disk: an
// acknowledgement of entries up to i needs them there, a granted vote the
// vote.
func (c *Checker) promise(n *Node, m clms.Message) {
	c.s.tb.Helper()
	rm := m.Raft
	if m.Type != clms.MsgRaft || rm == nil || rm.GetReject() {
		return
	}
	switch rm.GetType() {
	case raftpb.MsgAppResp:
		if li, _ := n.disk.LastIndex(); li < rm.GetIndex() {
			c.fail("node %d acknowledges entries up to %d with %d on its disk", n.Num, rm.GetIndex(), li)
		}
	case raftpb.MsgVoteResp:
		if hs := n.diskHS; hs.GetTerm() != rm.GetTerm() || hs.GetVote() != rm.GetTo() {
			c.fail("node %d grants its vote in term %d to %d with term %d, vote %d on its disk",
				n.Num, rm.GetTerm(), rm.GetTo(), hs.GetTerm(), hs.GetVote())
		}
	}
}

// committed notes the commit index n just persisted.
func (c *Checker) committed(n *Node) {
	c.s.tb.Helper()
	i := n.diskHS.GetCommit()
	if i <= c.commit {
		return
	}
	t, err := n.disk.Term(i)
	if err != nil {
		c.fail("node %d persisted commit index %d without the entry: %v", n.Num, i, err)
	}
	c.commit, c.commitTerm = i, t
}

// durable: the newest committed entry is on a majority of voters' disks
// (so are the older ones: raft's logs that agree at an index agree before
// it).
func (c *Checker) durable() {
	c.s.tb.Helper()
	if c.commit == 0 {
		return
	}
	voters, have := 0, 0
	for _, n := range c.s.nodes {
		if n.Eligible {
			voters++
			if n.OnDisk(c.commit, c.commitTerm) {
				have++
			}
		}
	}
	if have <= voters/2 {
		c.fail("committed raft entry %d (term %d) is on %d of %d voters' disks", c.commit, c.commitTerm, have, voters)
	}
}

func (c *Checker) check() {
	c.s.tb.Helper()
	c.Checks++
	c.durable()
	granting := clms.NodeNum(0)
	for _, n := range c.s.nodes {
		if !n.Started || n.Dead {
			continue
		}
		if st, ok := n.Core.RaftStatus(); ok && st.RaftState == raft.StateLeader {
			if prev, ok := c.leaders[st.GetTerm()]; ok && prev != n.Num {
				c.fail("nodes %d and %d both led term %d", prev, n.Num, st.GetTerm())
			}
			c.leaders[st.GetTerm()] = n.Num
		}
		if n.Paused || n.stalled {
			continue // a stopped process does nothing; it ticks before anything on resume
		}
		if n.Core.GrantsLeases() {
			if granting != 0 {
				c.fail("nodes %d and %d both grant leases", granting, n.Num)
			}
			granting = n.Num
		}
		if m, ok := c.state[n.Num]; ok && m.Incarnation == n.Inc && !m.State.IsMember() && n.Core.Acting() {
			c.fail("node %d inc %d acts as a member while it is %s (transition %d)", n.Num, n.Inc, m.State, m.LastChange)
		}
	}
	c.checkKeys()
}

// checkKeys: one acting owner per key service, under a lease, in the newest
// committed epoch.
func (c *Checker) checkKeys() {
	c.s.tb.Helper()
	for _, sp := range c.s.opt.Keys.Services {
		owner := clms.NodeNum(0)
		for _, n := range c.s.nodes {
			if !n.Started || n.Dead || n.Paused || n.stalled {
				continue
			}
			ep, ok := n.Core.KeyServiceActing(sp.Name)
			if !ok {
				continue
			}
			if owner != 0 {
				c.fail("nodes %d and %d both act as owner of key service %q", owner, n.Num, sp.Name)
			}
			owner = n.Num
			if !n.Core.Acting() {
				c.fail("node %d acts as owner of %q without a membership lease", n.Num, sp.Name)
			}
			if k := c.keys[sp.Name]; ep < k.Epoch {
				c.fail("node %d acts as owner of %q in epoch %d after epoch %d was committed (%v)", n.Num, sp.Name, ep, k.Epoch, k)
			}
		}
	}
}

// restored checks a state image n took (Ready.Restored) against the
// sequence: it must be the state after record r.Seq as the others applied
// it. n's history then continues from there.
func (c *Checker) restored(n *Node, r *clms.Restored) {
	c.s.tb.Helper()
	n.Restores++
	if r.Seq > uint64(len(c.canon)) || r.Seq < uint64(len(n.Records)) {
		c.fail("node %d restored to record %d; it had %d, the longest history has %d", n.Num, r.Seq, len(n.Records), len(c.canon))
	}
	recs := c.canon[:r.Seq]
	members := map[clms.NodeNum]clms.Member{}
	keys := map[string]clms.KeyRecord{}
	transitions := 0
	for _, rec := range recs {
		switch rec.Kind {
		case clms.RecordTransition:
			t := rec.Transition
			transitions++
			m := members[t.Node]
			m.Node, m.State, m.Incarnation, m.LastChange = t.Node, t.To, t.Incarnation, t.ID
			if t.To == clms.StateComingUp {
				m.Info, m.InfoSeq = rec.Info, rec.Seq
			}
			members[t.Node] = m
		case clms.RecordNodeInfo:
			m := members[rec.Transition.Node]
			m.Node, m.Info, m.InfoSeq = rec.Transition.Node, rec.Info, rec.Seq
			members[rec.Transition.Node] = m
		case clms.RecordKeyService:
			keys[rec.Key.Name] = rec.Key
		}
	}
	if r.LastTransition != clms.TransitionID(transitions) {
		c.fail("node %d restored to transition %d, record %d is at transition %d", n.Num, r.LastTransition, r.Seq, transitions)
	}
	for _, m := range r.Members {
		want, ok := members[m.Node]
		if !ok {
			want = clms.Member{Node: m.Node, State: clms.StateNeverUp}
		}
		if !reflect.DeepEqual(m, want) {
			c.fail("node %d restored node %d as %+v, the records say %+v", n.Num, m.Node, m, want)
		}
	}
	for _, k := range r.Keys {
		if keys[k.Name] != k {
			c.fail("node %d restored key service %+v, the records say %+v", n.Num, k, keys[k.Name])
		}
	}
	if len(r.Keys) != len(keys) {
		c.fail("node %d restored %d key services, the records have %d", n.Num, len(r.Keys), len(keys))
	}
	n.Records = slices.Clone(recs)
	n.transitions = transitions
}
