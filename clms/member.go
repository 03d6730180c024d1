package clms

import (
	"fmt"
	"maps"
	"slices"
)

// The member side of the core: joining, heartbeats and the lease, fencing,
// applying records, planned leave, info changes, callback reports.

func (c *Core) tickJoin() {
	if c.now-c.joinStart >= c.t.join {
		c.phase = phaseFailed
		c.dropMaster()
		c.act(Action{Kind: ActJoinFailed, Err: fmt.Errorf("%w (%s): %s", ErrJoinTimeout, c.cfg.Timing.JoinTimeout, c.joinReason)})
		return
	}
	if c.now-c.joinTry < c.t.heartbeat {
		return
	}
	c.joinTry = c.now
	switch {
	case c.master == c.self && c.m != nil && c.m.ready:
		c.masterJoin(c.self, c.inc, c.cfg.Info)
	case c.master != 0 && c.master != c.self:
		c.send(Message{Type: MsgJoin, To: c.master, Info: c.cfg.Info, Digest: c.digest})
	default:
		c.setJoinReason("no master known yet (election in progress or no quorum)")
		c.probeEligible()
	}
}

func (c *Core) setJoinReason(r string) {
	if r != c.joinReason {
		c.joinReason = r
		c.act(Action{Kind: ActLog, Reason: "join: retrying: " + r})
	}
}

func (c *Core) probeEligible() {
	for _, v := range c.voters {
		if v != c.self {
			c.send(Message{Type: MsgWhoIsMaster, To: v})
		}
	}
}

func (c *Core) tickMember() {
	if c.m != nil && c.m.ready {
		// The master's own lease is its quorum contact: an isolated master
		// runs out like any member cut off from the master.
		c.lease = max(c.lease, c.quorumContact()+c.t.lease)
	}
	// A lease that runs out suspends this node: it stops acting as a member
	// until a master grants it a lease again, which a master does only while
	// its committed state has this incarnation as a member. Being declared
	// down is what fences it for good (docs/CLMS.md, "Suspended, fenced").
	c.updateLease()
	if c.leaving && c.now-c.leaveTry >= c.t.heartbeat {
		c.leaveTry = c.now
		if c.isMaster() {
			c.masterLeave(c.self, c.inc)
		} else if c.master != 0 {
			c.sendLeave()
		}
	}
	c.sendInfo()
	if c.isMaster() {
		return
	}
	if c.now-c.lastHB >= c.t.heartbeat {
		c.sendImAlive()
	}
	if c.now-c.lastAck >= 2*c.t.heartbeat && c.rn == nil && c.now == c.lastHB {
		// Two heartbeats unanswered: the master may have changed. Nodes
		// without raft ask the eligible nodes who leads now, ready to
		// believe any term again (the one we hold may be a bogus claim).
		c.masterTerm = 0
		c.probeEligible()
	}
}

func (c *Core) sendImAlive() {
	if c.hbSeq != 0 && c.lastAcked != c.hbSeq {
		c.stats.HeartbeatsMissed++
	}
	c.lastHB = c.now
	if c.master == 0 || c.master == c.self {
		return
	}
	c.hbSeq++
	c.hbSent[c.hbSeq] = c.now
	for s, at := range c.hbSent {
		if c.now-at > c.t.lease {
			delete(c.hbSent, s)
		}
	}
	c.stats.HeartbeatsSent++
	st := StatusOK
	if c.now >= c.lease {
		st = StatusNoLease // the master learns when its grants do not arrive
	}
	c.send(Message{Type: MsgImAlive, To: c.master, Seq: c.hbSeq, Applied: c.st.LastSeq(), Status: st})
}

func (c *Core) updateLease() {
	v := c.Acting()
	if v != c.leaseValid {
		c.leaseValid = v
		a := Action{Kind: ActLease, Valid: v}
		if !v && c.phase == phaseMember && !c.leaving {
			c.stats.LeaseLapses++
			a.Reason = "membership lease expired: no answered imalive for the lease timeout; suspended until a master grants one"
		}
		c.act(a)
	}
}

// fence stops this incarnation acting as a member, for good.
func (c *Core) fence(reason string) {
	if c.phase == phaseFenced || c.phase == phaseLeft {
		return
	}
	c.phase = phaseFenced
	c.fenceReason = reason
	c.lease = 0
	c.dropMaster()
	c.updateLease()
	c.act(Action{Kind: ActFence, Node: c.self, Inc: c.inc, Reason: reason})
}

// Shutdown starts a planned leave: this node stops acting as a member at
// once (the runner has finished its work before calling it), the master
// commits SHUTDOWN for it and ActLeft follows. A node that is not a member
// leaves at once.
func (c *Core) Shutdown() {
	switch c.phase {
	case phaseMember:
		if c.keyDrain() {
			return // the key services are handed over first (keyPollDrain)
		}
		c.leaving = true
		c.leaveTry = -1 << 40
		c.tickMemberLeaveNow()
	case phaseJoining, phaseFailed:
		c.phase = phaseLeft
		c.dropMaster()
		c.act(Action{Kind: ActLeft, Node: c.self, Inc: c.inc})
	}
}

func (c *Core) tickMemberLeaveNow() {
	c.leaveTry = c.now
	if c.isMaster() {
		c.masterLeave(c.self, c.inc)
	} else if c.master != 0 {
		c.sendLeave()
	}
}

// sendLeave asks the master for our SHUTDOWN, saying what we applied: a
// master whose records already have it pushes us the rest (masterLeftAlready),
// which is how a node without raft that missed that push still learns it
// left. The field is one an older master decodes and ignores.
func (c *Core) sendLeave() {
	c.send(Message{Type: MsgLeave, To: c.master, Applied: c.st.LastSeq()})
}

// SetNodeInfo asks the master to replace node n's info (clusternode_setinfo).
// The request is resent, to a new master too, until a record with that info
// is applied here (it shows in Ready.Applied); a later request for the same
// node replaces an earlier one. Only members may ask.
func (c *Core) SetNodeInfo(n NodeNum, info NodeInfo) error {
	if _, ok := c.st.members[n]; !ok {
		return fmt.Errorf("%w: %d", ErrUnknownNode, n)
	}
	if c.phase != phaseMember {
		return ErrNotMember
	}
	c.pendingInfo[n] = info
	c.infoTry = -1 << 40
	c.sendInfo()
	return nil
}

// infoEqual compares infos as the wire sees them (empty lists are nil).
func infoEqual(a, b NodeInfo) bool {
	return a.CPUsTotal == b.CPUsTotal && a.CPUsOnline == b.CPUsOnline && a.MemoryBytes == b.MemoryBytes &&
		slices.Equal(a.KeyServices, b.KeyServices) && slices.Equal(a.Capabilities, b.Capabilities)
}

func (c *Core) sendInfo() {
	if len(c.pendingInfo) == 0 || c.now-c.infoTry < 2*c.t.heartbeat {
		return
	}
	c.infoTry = c.now
	for _, n := range slices.Sorted(maps.Keys(c.pendingInfo)) {
		if c.isMaster() {
			c.masterSetInfo(n, c.pendingInfo[n], c.st.LastSeq())
		} else if c.master != 0 {
			c.send(Message{Type: MsgSetInfo, To: c.master, Node: n, Info: c.pendingInfo[n], Applied: c.st.LastSeq()})
		}
	}
}

// CallbacksDone reports that this node ran its subsystem callbacks for
// transition id; failed names the subsystems that failed or timed out.
func (c *Core) CallbacksDone(id TransitionID, failed []string) {
	if c.phase != phaseMember {
		return
	}
	c.cbDone[id] = slices.Clone(failed)
	c.reportCallbacks(id)
}

func (c *Core) reportCallbacks(id TransitionID) {
	if c.isMaster() {
		c.masterCallbacksDone(c.self, id, c.cbDone[id])
	} else if c.master != 0 {
		c.send(Message{Type: MsgCallbacksDone, To: c.master, Transition: id, Failed: c.cbDone[id]})
	}
}

// resendCallbackReports sends a new master the reports of transitions still
// in progress: it cannot know who reported to its predecessor.
func (c *Core) resendCallbackReports() {
	for _, id := range slices.Sorted(maps.Keys(c.cbDone)) {
		t, ok := c.st.Transition(id)
		if !ok {
			delete(c.cbDone, id)
			continue
		}
		if m, _ := c.st.Member(t.Node); m.LastChange != id {
			delete(c.cbDone, id)
			continue
		}
		c.reportCallbacks(id)
	}
}

// learnMaster takes a claim that n leads in term (non-voters only: voters
// know from raft).
func (c *Core) learnMaster(n NodeNum, term uint64) {
	// Only an eligible node can be master; a claim naming another is a
	// peer breaking the protocol and would stall our imalives.
	if c.rn != nil || !c.eligible[n] || term < c.masterTerm || (term == c.masterTerm && n == c.master) {
		return
	}
	c.master, c.masterTerm = n, term
	c.masterChanged()
}

func (c *Core) masterChanged() {
	c.act(Action{Kind: ActMasterChanged, Node: c.master, Term: c.masterTerm})
	switch c.phase {
	case phaseJoining:
		c.joinTry = -1 << 40
	case phaseMember:
		c.lastHB = -1 << 40
		c.infoTry = -1 << 40
		c.resendCallbackReports()
		// A new master may not have seen the proofs we hold.
		for _, n := range slices.Sorted(maps.Keys(c.gone)) {
			if n != c.master && c.master != c.self {
				c.send(Message{Type: MsgCrashProof, To: c.master, Node: n, Inc: c.gone[n]})
			}
		}
	}
}

func (c *Core) imAliveAck(m Message) {
	if c.phase != phaseMember || m.Node != c.self || m.Inc != c.inc {
		return // not an answer to this incarnation's heartbeat
	}
	switch m.Status {
	case StatusOK:
		if at, ok := c.hbSent[m.Seq]; ok {
			c.stats.HeartbeatRTT[min(c.now-at, RTTBuckets-1)]++
			c.lease = max(c.lease, at+c.t.lease)
			c.lastAck = c.now
			c.lastAcked = max(c.lastAcked, m.Seq)
			c.learnMaster(m.From, m.Term)
			c.updateLease()
		}
	case StatusNotMember:
		if c.leaving {
			// Our SHUTDOWN may be committed and its push lost: the
			// records say whether we left or were declared down, and a
			// leave request gets them pushed (masterLeftAlready). Asking
			// costs nothing: a leaving node acts as a member no longer.
			// Not told within a lease (a master of an older version
			// does not push), it fences as before.
			if c.leaveDenied == 0 {
				c.leaveDenied = c.now
			}
			if c.now-c.leaveDenied < c.t.lease {
				c.sendLeave()
				return
			}
		}
		c.fence("the master says this incarnation is no longer a member")
	}
}

func (c *Core) stepRecords(m Message) {
	if c.rn != nil || !c.eligible[m.From] {
		return // voters apply their own log; only a master pushes
	}
	if len(m.Data) > 0 {
		// A state image: we need records the master no longer keeps.
		c.restore(m.Data, fmt.Sprintf("state image from node %d", m.From))
	}
	gap := Status(StatusOK)
	for _, r := range m.Records {
		if r.Seq > c.st.LastSeq()+1 {
			gap = StatusRetry // overtook an earlier push: ask for a resend now
		}
		if r.Seq != c.st.LastSeq()+1 {
			continue // a duplicate, or a gap
		}
		if !c.applyRecord(r) {
			break
		}
	}
	c.learnMaster(m.From, m.Term)
	c.send(Message{Type: MsgRecordsAck, To: m.From, Applied: c.st.LastSeq(), Status: gap})
}

// applyRecord applies one committed record and reacts to it.
func (c *Core) applyRecord(r Record) bool {
	var prev TransitionID
	if m := c.st.members[r.Transition.Node]; m != nil {
		prev = m.LastChange
	}
	if err := c.st.apply(r); err != nil {
		c.act(Action{Kind: ActLog, Reason: err.Error()})
		return false
	}
	c.recs = append(c.recs, r)
	if r.Kind == RecordKeyService {
		c.applyKeyRecord(r)
		c.keyPoll()
		return true
	}
	defer c.keyPoll()
	if r.Kind == RecordNodeInfo {
		if want, ok := c.pendingInfo[r.Transition.Node]; ok && infoEqual(want, r.Info) {
			delete(c.pendingInfo, r.Transition.Node)
		}
		if c.m != nil && c.m.ready {
			c.masterApplied(r)
		}
		return true
	}
	delete(c.cbDone, prev) // that transition is over: no report to resend
	c.stats.Transitions++
	c.react(r.Transition)
	if c.m != nil && c.m.ready {
		c.masterApplied(r)
	}
	return true
}

// react does what transition t asks of this node: join, leave or fence for
// its own incarnation; callbacks and refusals for a peer's.
func (c *Core) react(t Transition) {
	if t.Node == c.self && t.Incarnation == c.inc {
		switch t.To {
		case StateComingUp:
			if c.phase == phaseJoining {
				c.phase = phaseMember
				c.lastHB, c.lastAck = -1<<40, c.now
				c.act(Action{Kind: ActJoined, Node: c.self, Inc: c.inc, Transition: t.ID})
				c.act(Action{Kind: ActRunNodeUp, Node: t.Node, Inc: t.Incarnation, Transition: t.ID})
				c.tickMember()
			}
		case StateShutdown:
			if c.phase == phaseMember {
				c.phase = phaseLeft
				c.lease = 0
				c.updateLease()
				c.act(Action{Kind: ActLeft, Node: c.self, Inc: c.inc})
				c.dropMaster()
			}
		case StateGoingDown, StateKCleanup, StateUCleanup, StateDown:
			c.fence(fmt.Sprintf("declared down (%s, transition %d)", t.Cause, t.ID))
		}
	} else if c.phase == phaseMember && t.Node != c.self {
		switch t.To {
		case StateComingUp:
			c.act(Action{Kind: ActRunNodeUp, Node: t.Node, Inc: t.Incarnation, Transition: t.ID})
		case StateShutdown, StateGoingDown:
			c.act(Action{Kind: ActPeerDown, Node: t.Node, Inc: t.Incarnation, Transition: t.ID})
		case StateKCleanup:
			c.act(Action{Kind: ActRunNodeDown, Node: t.Node, Inc: t.Incarnation, Transition: t.ID})
		}
	}
}

// restore replaces the State with a state image (raft snapshot data, or a
// master's push) if it is newer, and reacts to what changed as if the
// records it skips had been applied: a peer's incarnation gone is refused,
// a new one's callbacks run, this incarnation joins or fences.
func (c *Core) restore(data []byte, what string) bool {
	st, err := decodeImage(data, c.cfg.Compaction.HistoryKeep)
	if err == nil && !st.sameNodes(c.st) {
		err = fmt.Errorf("node table %v, this node's %v", st.nodes, c.st.nodes)
	}
	if err != nil {
		c.act(Action{Kind: ActLog, Reason: fmt.Sprintf("%s refused: %v", what, err)})
		return false
	}
	if st.LastSeq() <= c.st.LastSeq() {
		return false // nothing we lack
	}
	old := c.st
	c.st = st
	c.recs = nil // the image covers them; the runner rebuilds from Restored
	c.stats.Transitions += uint64(st.LastTransition() - old.LastTransition())
	r := &Restored{Seq: st.LastSeq(), Members: st.Members(), LastTransition: st.LastTransition(),
		History: slices.Clone(st.history), Keys: st.KeyServices()}
	c.restored = r
	for _, n := range st.nodes {
		o, m := old.members[n], st.members[n]
		if o.LastChange == m.LastChange {
			continue
		}
		t := st.last[n]
		if n == c.self {
			if m.Incarnation == c.inc {
				if t.To == StateUp {
					t.To = StateComingUp // its COMINGUP is skipped: join now
				}
				c.react(t)
			}
			continue
		}
		if c.phase != phaseMember {
			continue
		}
		gone := o.State.IsMember() && (o.Incarnation != m.Incarnation || !m.State.IsMember())
		if gone && (o.Incarnation != m.Incarnation || (t.To != StateGoingDown && t.To != StateShutdown)) {
			// The records that took that incarnation down are skipped.
			c.act(Action{Kind: ActPeerDown, Node: n, Inc: o.Incarnation, Transition: t.ID})
		}
		if t.To == StateUp && o.Incarnation != m.Incarnation {
			// Its COMINGUP is skipped: it is up, reach it.
			c.act(Action{Kind: ActRunNodeUp, Node: n, Inc: m.Incarnation, Transition: t.ID})
			continue
		}
		if m.Incarnation != o.Incarnation || m.State != o.State {
			c.react(t)
		}
	}
	return true
}
