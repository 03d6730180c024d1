package clms

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// proposeData queues one command for the raft log. It reaches raft at the
// next raft() call, together with every command queued since, as one
// MsgProp: raft appends them as one batch and sends each follower one MsgApp
// carrying them all, so a follower writes and acknowledges them in one
// step, and they commit together. One at a time (RawNode.Propose), each went
// out in its own MsgApp, and a follower could write and acknowledge the
// first alone: a failed owner's GOINGDOWN then committed a follower write
// before its successor's record (docs/CLMS.md, "Failover (CI's sequence)").
//
// Queuing changes nothing else raft sees: every other call to the RawNode
// goes through raft(), which hands the queue over first, so raft receives
// the same calls in the same order, with consecutive proposals merged. A
// MsgProp is refused whole where a Propose is refused alone (no leader, a
// leadership transfer under way, not in the configuration), and those
// conditions cannot change between proposals that nothing else separates.
// raft's uncommitted-size limit, which could refuse a large batch and not
// its parts, is off (Config.MaxUncommittedEntriesSize zero), and
// MaxSizePerMsg only splits a long batch over several MsgApps. As before,
// a refused proposal is dropped silently: the master retries it after two
// election timeouts (proposeCmd, proposeKey).
func (c *Core) proposeData(data []byte) { c.props = append(c.props, data) }

// raft returns the RawNode after handing it the queued proposals
// (proposeData). Every call to raft but a proposal goes through it.
func (c *Core) raft() *raft.RawNode {
	if len(c.props) > 0 {
		es := make([]*raftpb.Entry, len(c.props))
		for i, d := range c.props {
			es[i] = &raftpb.Entry{Data: d}
		}
		clear(c.props)
		c.props = c.props[:0]
		c.stats.ProposalBatches++
		c.stats.Proposals += uint64(len(es))
		_ = c.rn.Step(&raftpb.Message{Type: raftpb.MsgProp.Enum(), From: new(uint64(c.self)), Entries: es})
	}
	return c.rn
}
