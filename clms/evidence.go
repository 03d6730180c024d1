package clms

import (
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Evidence of failure from the runner (a lost connection, proof of a crash),
// the forced election it allows, and handing raft leadership on when this
// node may not be master.

// forceState is a pending forced election after crash proof of the leader.
type forceState struct {
	leader NodeNum
	term   uint64
	at     int64
}

// rankAfter is our turn among the voters after leader in ring order,
// counting those that may be alive: voters that lost the same leader
// campaign in turns rather than all at once and split the vote.
func (c *Core) rankAfter(leader NodeNum) int64 {
	rank := int64(0)
	for i := 1; i < len(c.voters); i++ {
		v := c.voters[(slices.Index(c.voters, leader)+i)%len(c.voters)]
		if v == c.self {
			break
		}
		if c.gone[v] < c.peerInc[v] || c.peerInc[v] == 0 {
			rank++ // a voter before us that may be alive
		}
	}
	return rank
}

// maybeCampaign starts an ordinary election (PreVote first, so every
// voter's lease check applies: as safe as raft's own timeout) when the
// leader has been silent for an election timeout and a tick, plus two ticks
// per live voter ahead of us in ring order after the lost leader; if no
// leader emerged, again every half election timeout, in the same turns.
// Raft's own randomized timer fires anywhere in [ElectionTimeout,
// 2*ElectionTimeout) and restarts at each campaign, so it never comes first:
// voters campaign in a fixed order instead of at random and do not split
// the vote (which would cost another timeout or two).
func (c *Core) maybeCampaign() {
	q := c.quiet
	if q.leader == 0 || !c.campaigns() {
		return
	}
	st := c.raft().BasicStatus()
	if st.RaftState == raft.StateLeader || (st.Lead != 0 && st.Lead != uint64(q.leader)) {
		return
	}
	turn := 2 * c.rankAfter(q.leader)
	due := q.heard + c.t.election + 1 + turn
	if q.tried {
		due = q.triedAt + max(1, c.t.election/2) + turn
	}
	if c.now < due {
		return
	}
	c.quiet.tried, c.quiet.triedAt = true, c.now
	_ = c.raft().Campaign()
}

// maybeForce starts the forced election when its turn came, unless raft
// moved on (someone else campaigned, or a leader is back).
func (c *Core) maybeForce() {
	f := c.force
	if f.leader == 0 || c.now < f.at {
		return
	}
	c.force = forceState{}
	st := c.raft().BasicStatus()
	if !c.campaigns() || st.RaftState != raft.StateFollower || st.GetTerm() != f.term || (st.Lead != uint64(f.leader) && st.Lead != 0) {
		return
	}
	_ = c.raft().Step(&raftpb.Message{Type: raftpb.MsgTimeoutNow.Enum(), From: new(uint64(f.leader)),
		To: new(uint64(c.self)), Term: new(f.term)})
}

// PeerConnectionLost is evidence that node n may be gone: the engine saw its
// connection close. The master probes n at once; a member whose master it
// is pings it (the runner's redial then tells refused from alive).
func (c *Core) PeerConnectionLost(n NodeNum) {
	if c.m != nil && c.m.ready {
		if w := c.m.watch[n]; w != nil {
			c.suspect(n, w)
			return
		}
	}
	if n == c.master {
		c.send(Message{Type: MsgPing, To: n})
	}
}

// PeerCrashProof is proof that incarnation inc of node n (and every earlier
// one) no longer runs: its address refused a connection, or a newer
// incarnation spoke. The runner must not report it on weaker evidence (a
// timeout, a reset): the master declares n down at once on it, and a voter
// whose leader it is starts an election at once.
func (c *Core) PeerCrashProof(n NodeNum, inc uint64) {
	if n == c.self || inc == 0 || inc < c.peerInc[n] {
		return // about an older process than the one we heard from
	}
	// On the master, the new owner of the crashed node's key services is
	// proposed in this same step, right behind its GOINGDOWN (masterKeys).
	defer c.keyPoll()
	c.crashProof(n, inc)
}

// VotersAlive counts the master-eligible nodes that may still vote as far as
// this node knows: members (COMINGUP or UP) in its applied state whose
// process is not proven gone, and voters whose newer incarnation than the
// one in that state spoke to this node and is not proven gone (restarted,
// its join not committed yet: it votes in raft all the same). A voter that
// left, was declared down or never started, and was not heard from since,
// is not counted.
func (c *Core) VotersAlive() (alive, voters int) {
	for n := range c.eligible {
		m, ok := c.st.Member(n)
		member := ok && m.State.IsMember() && c.gone[n] < m.Incarnation
		newer := c.peerInc[n] > m.Incarnation && c.gone[n] < c.peerInc[n]
		if n == c.self || member || newer {
			alive++
		}
	}
	return alive, len(c.eligible)
}

// NoQuorum reports whether no master can commit anything for this member
// until voters come back: Runner.Shutdown stops waiting then (ErrNoQuorum).
// Two conditions, because the count alone comes from this node's view and
// may be short of the truth (a voter's new incarnation it never heard
// from, a join it has not applied yet):
//   - at most half of the voters are alive by VotersAlive, and
//   - this node's lease has run out. A master grants leases only while it
//     has quorum contact, and a master's own lease is its quorum contact, so
//     a lease still valid means a majority answered within LeaseTimeout.
//     The lease is renewed while a shutdown waits (a leaving node is not
//     Acting, but still a member until its SHUTDOWN is committed).
//
// So a cluster stopped as a whole tells its last voter at most a lease
// after its majority went, and never while a master could still commit.
func (c *Core) NoQuorum() bool {
	if c.phase == phaseMember && c.now < c.lease {
		return false
	}
	alive, voters := c.VotersAlive()
	return alive <= voters/2
}

func (c *Core) crashProof(n NodeNum, inc uint64) {
	if inc <= c.gone[n] {
		return
	}
	c.gone[n] = inc
	if c.m != nil && c.m.ready {
		c.masterCrashProof(n, inc)
		return
	}
	if c.rn != nil && c.campaigns() {
		if st := c.raft().BasicStatus(); st.RaftState == raft.StateFollower && st.Lead == uint64(n) {
			// The leader's process is gone, so it grants nothing any more:
			// campaign as if it had handed leadership over, rather than wait
			// an election timeout (docs/CLMS.md, "Forced election"). The
			// voters after it take turns, two ticks apart, so that they do
			// not split the vote when all see the proof at once.
			c.force = forceState{leader: n, term: st.GetTerm(), at: c.now + 2*c.rankAfter(n)}
			c.maybeForce()
			return
		}
	}
	if c.master != 0 && c.master != n && c.master != c.self {
		c.send(Message{Type: MsgCrashProof, To: c.master, Node: n, Inc: inc})
	}
}

// handOver passes raft leadership on while this node may not be master
// (fenced, left): to the most up-to-date voter raft heard from recently that
// is a member, again each election timeout until a transfer succeeds.
func (c *Core) handOver() {
	if c.campaigns() || c.raft().BasicStatus().RaftState != raft.StateLeader || c.now-c.handedAt < c.t.election {
		return
	}
	c.handedAt = c.now
	st := c.raft().Status()
	best, bestMatch := NodeNum(0), uint64(0)
	for _, v := range c.voters {
		pr, ok := st.Progress[uint64(v)]
		if mem := c.st.members[v]; v == c.self || !ok || !pr.RecentActive || !mem.State.IsMember() || c.gone[v] >= mem.Incarnation {
			continue
		}
		if best == 0 || pr.Match > bestMatch {
			best, bestMatch = v, pr.Match
		}
	}
	if best != 0 {
		c.raft().TransferLeader(uint64(best))
	}
}

func (c *Core) dropMaster() {
	c.m = nil
	if c.rn != nil {
		c.handedAt = -1 << 40
		c.handOver()
	}
}
