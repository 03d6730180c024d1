package clms

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
)

// pushBatch is how many records one MsgRecords carries: a whole history of a
// few hundred transitions catches up in one or two round trips.
const pushBatch = 256

// masterState is what the master keeps beside the replicated state. None of
// it is replicated: a new master rebuilds it (silence clocks from its
// election, callback reports resent by the members).
type masterState struct {
	term       uint64
	since      int64
	readyIndex uint64 // raft index of its term's first entry: apply it before acting
	ready      bool
	acks       map[NodeNum]int64 // voter -> our latest stamp it accepted in this term
	watch      map[NodeNum]*watch
	waits      map[TransitionID]*cbWait
	proposed   map[proposalKey]int64
	// downPending: we proposed taking this incarnation down and the log has
	// not resolved it yet. No lease for it meanwhile, or a grant could
	// outlive the commit of its GOINGDOWN.
	downPending map[NodeNum]uint64
	keys        *keyMaster // key services (keymaster.go); made on first use
	// pushDue: records were applied in this Ready, and are pushed to the
	// members without raft once all are (pushAll): the records one raft
	// append committed together reach them in one MsgRecords.
	pushDue bool
	// early holds the callback reports that reached this leader before it
	// was ready (its term's first entry not applied yet): members resend
	// their reports when they see a new leader, which is at its first
	// append, before it may act. Replayed by masterReady; without them a
	// wait started there would last its whole CallbackTimeout.
	early map[earlyReport][]string
}

type earlyReport struct {
	from NodeNum
	id   TransitionID
}

// maxEarlyReports bounds the reports a leader holds until it is ready: far
// more than a cluster's members have outstanding (one per transition whose
// callbacks they ran and the master has not moved on from), so a peer
// spraying reports cannot grow it; one dropped falls to CallbackTimeout.
const maxEarlyReports = 16384

// watch is the master's view of one member's liveness.
type watch struct {
	inc     uint64
	heard   int64 // last imalive received (or the election, or the join)
	pinged  int64
	suspect bool
	applied uint64 // records the member applied (nodes without raft)
	sent    uint64 // records pushed
	pushed  int64
	// guessed: sent is a new master's guess (what was committed when it
	// became ready), not what it pushed; the member's first word on what
	// it applied replaces it (learnApplied).
	guessed bool
	// lapsed: since lapsedAt it says it holds no lease although we could
	// grant; withheld: since withheldAt we grant it nothing, as our grants
	// evidently do not reach it (a link cut one way).
	lapsed, withheld     bool
	lapsedAt, withheldAt int64
	// stalledAt is Core.stalled at heard: the ticks stalled since then were
	// our own deafness, not its silence. deferred: this silence was long
	// enough but for our stall (Stats.DownsDeferred).
	stalledAt int64
	deferred  bool
}

// cbWait collects the members' callback reports for one transition.
type cbWait struct {
	t       Transition
	started int64
	expect  map[NodeNum]bool
	failed  []string
}

type proposalKey struct {
	kind RecordKind
	node NodeNum
	inc  uint64
	to   NodeState
}

func newMasterState(term uint64, now int64, readyIndex uint64) *masterState {
	return &masterState{term: term, since: now, readyIndex: readyIndex, acks: map[NodeNum]int64{},
		watch: map[NodeNum]*watch{}, waits: map[TransitionID]*cbWait{}, proposed: map[proposalKey]int64{},
		downPending: map[NodeNum]uint64{}}
}

// quorumContact is the latest of our ticks such that a quorum of voters
// (us included) accepted a message we sent at or after it.
func (c *Core) quorumContact() int64 {
	ts := []int64{c.now}
	for _, v := range c.voters {
		if v != c.self {
			ts = append(ts, c.m.acks[v])
		}
	}
	slices.Sort(ts)
	slices.Reverse(ts)
	return ts[len(c.voters)/2]
}

// canGrant: no voter in our last quorum can have voted for another master
// yet, so no other master can exist and a lease we grant now ends before any
// successor starts counting silence.
func (c *Core) canGrant() bool { return c.isMaster() && c.now-c.quorumContact() <= c.t.grant }

// masterReady runs once the new master applied its term's first entry, so
// its replicated state is complete.
func (c *Core) masterReady() {
	m := c.m
	m.ready = true
	for _, v := range c.voters {
		if v != c.self {
			c.send(Message{Type: MsgMasterIs, To: v, Node: c.self})
		}
	}
	for _, mem := range c.st.Members() {
		n := mem.Node
		if n != c.self && !c.eligible[n] && mem.State != StateNeverUp {
			c.send(Message{Type: MsgMasterIs, To: n, Node: c.self})
		}
		if n != c.self && mem.State.IsMember() && m.watch[n] == nil {
			// Watched now, not at the first tick: the members without raft
			// learn this term's records (a crashed master's GOINGDOWN, a
			// key service's new owner) as each Ready applies them
			// (pushAll), not up to a Tick later. Every member's silence
			// clock starts here, after the election, as the lease argument
			// needs: we cannot know when our predecessor last renewed its
			// lease. What they applied is not known yet: pushes start
			// after what is committed now (the guess), and a member
			// missing earlier records gets them at its first word (a gap
			// in a push: StatusRetry; an imalive) or, silent until the
			// first tick (a joiner, a lost imalive), from the start then,
			// as before (tickMaster).
			m.watch[n] = &watch{inc: mem.Incarnation, heard: c.now, stalledAt: c.stalled, sent: c.st.LastSeq(), pushed: c.now, guessed: true}
		}
		switch mem.State {
		case StateComingUp, StateKCleanup:
			c.startWait(c.st.last[n])
		case StateGoingDown, StateShutdown:
			c.propose(Transition{Node: n, Incarnation: mem.Incarnation, From: mem.State, To: StateKCleanup, Cause: CauseCleanupDone})
		case StateUCleanup:
			c.propose(Transition{Node: n, Incarnation: mem.Incarnation, From: mem.State, To: StateDown, Cause: CauseCleanupDone})
		}
		if g := c.gone[n]; g != 0 {
			c.masterCrashProof(n, g)
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(m.early), func(a, b earlyReport) int {
		return cmp.Or(cmp.Compare(a.id, b.id), cmp.Compare(a.from, b.from))
	}) {
		c.masterCallbacksDone(k.from, k.id, m.early[k])
	}
	m.early = nil
	c.resendCallbackReports()
	if c.phase == phaseJoining {
		c.masterJoin(c.self, c.inc, c.cfg.Info)
	}
}

func (c *Core) tickMaster() {
	m := c.m
	last := c.st.LastSeq()
	for _, n := range c.st.nodes { // in order: the simulator replays runs exactly
		mem := c.st.members[n]
		if n == c.self {
			continue
		}
		w := m.watch[n]
		if !mem.State.IsMember() {
			if w != nil && mem.State != StateDown && !c.eligible[n] {
				c.maybePush(n, w) // so it learns it was declared down
			}
			if mem.State == StateDown {
				delete(m.watch, n)
			}
			continue
		}
		if w == nil || w.inc != mem.Incarnation {
			w = &watch{inc: mem.Incarnation, heard: c.now, stalledAt: c.stalled}
			m.watch[n] = w
		}
		silence := c.silence(w)
		switch {
		case silence >= c.t.lease+c.t.margin:
			// Its lease ran out on its own clock by now, even a slow one: it
			// has fenced itself, so declaring it down is safe.
			c.propose(Transition{Node: n, Incarnation: w.inc, From: mem.State, To: StateGoingDown, Cause: CauseSilence})
		case w.withheld && c.now-w.withheldAt >= c.t.lease+c.t.margin:
			// It hears none of our grants, and the last one we sent answered
			// an imalive received before withheldAt: by the argument above
			// every lease it holds ran out, and it cannot act until a master
			// that can reach it grants again. Declare it down rather than
			// leave it UP and suspended for as long as the cut lasts.
			c.propose(Transition{Node: n, Incarnation: w.inc, From: mem.State, To: StateGoingDown, Cause: CauseFenced})
		case silence >= c.t.probe || w.suspect:
			c.suspect(n, w)
		}
		if w.guessed {
			w.learnApplied(0) // no word yet: push from what it acknowledged, as a new watch does
		}
		if !c.eligible[n] && w.applied < last {
			c.maybePush(n, w)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(m.waits)) {
		if wt := m.waits[id]; c.now-wt.started >= c.t.callback {
			missing := slices.Sorted(func(yield func(NodeNum) bool) {
				for n := range wt.expect {
					if !yield(n) {
						return
					}
				}
			})
			c.act(Action{Kind: ActLog, Node: wt.t.Node, Transition: wt.t.ID,
				Reason: fmt.Sprintf("callbacks for transition %d not reported within %s by nodes %v", wt.t.ID, c.cfg.Timing.CallbackTimeout, missing)})
			c.completeWait(wt)
		}
	}
}

// silence is how long member w has not been heard from, less the ticks in
// which we could not have heard it because this process was stalled (Late)
// — Lifeguard's local health awareness (memberlist's "awareness"), in the
// form of a deadline extended by our own deafness. At most LeaseTimeout is
// forgiven per silence, so a dead member is still declared, at most
// LeaseTimeout later than by a master that never stalls. Safe because
// declaring later is: the member's lease ended LeaseTimeout+LeaseMargin of
// the master's clock after the receipt, however late we declare.
func (c *Core) silence(w *watch) int64 {
	forgiven := min(c.stalled-w.stalledAt, c.t.lease)
	if forgiven > 0 && !w.deferred && c.now-w.heard >= c.t.lease+c.t.margin && c.now-w.heard-forgiven < c.t.lease+c.t.margin {
		w.deferred = true
		c.stats.DownsDeferred++
	}
	return c.now - w.heard - forgiven
}

// suspect probes a member directly, at most once per heartbeat: its answer
// is an imalive, so one lost packet or a slow node is not a NODEDOWN.
func (c *Core) suspect(n NodeNum, w *watch) {
	if !w.suspect || c.now-w.pinged >= c.t.heartbeat {
		if !w.suspect {
			c.stats.Suspicions++
		}
		w.suspect = true
		w.pinged = c.now
		c.send(Message{Type: MsgPing, To: n})
	}
}

// learnApplied takes what the member says it applied. The first word after
// a new master guessed (masterReady) also corrects the guess, so that a
// member behind it gets the rest at once, not a heartbeat later.
func (w *watch) learnApplied(applied uint64) {
	w.applied = max(w.applied, applied)
	if w.guessed {
		w.sent, w.guessed = min(w.sent, w.applied), false
	}
}

func (c *Core) maybePush(n NodeNum, w *watch) {
	last := c.st.LastSeq()
	if w.applied >= last {
		return
	}
	from := w.sent
	if w.sent < w.applied || c.now-w.pushed >= c.t.heartbeat {
		from = w.applied // resend what was not acknowledged
	}
	if from >= last {
		return
	}
	if from < c.st.FirstSeq()-1 {
		// It needs records we no longer keep: push the whole State, and
		// the records after it from the next push on.
		w.sent, w.pushed = last, c.now
		c.send(Message{Type: MsgRecords, To: n, Data: c.st.encodeImage()})
		return
	}
	recs := c.st.Records(from)
	if len(recs) > pushBatch {
		recs = recs[:pushBatch]
	}
	w.sent, w.pushed = recs[len(recs)-1].Seq, c.now
	c.send(Message{Type: MsgRecords, To: n, Records: slices.Clone(recs)})
}

func (c *Core) masterImAlive(m Message) {
	if !c.isMaster() {
		if c.rn != nil {
			st := c.raft().BasicStatus()
			c.send(Message{Type: MsgMasterIs, To: m.From, Node: NodeNum(st.Lead), Term: st.GetTerm()})
		}
		return
	}
	mem := c.st.members[m.From]
	if mem.Incarnation != m.FromInc {
		return // not joined yet: it learns from its join
	}
	if !mem.State.IsMember() {
		c.send(Message{Type: MsgImAliveAck, To: m.From, Seq: m.Seq, Status: StatusNotMember, Node: m.From, Inc: m.FromInc})
		return
	}
	w := c.m.watch[m.From]
	if w == nil || w.inc != mem.Incarnation {
		w = &watch{inc: mem.Incarnation}
		c.m.watch[m.From] = w
	}
	// Counting silence from the receipt is safe: the lease we grant runs
	// from the imalive's send time, which is earlier.
	w.heard, w.stalledAt, w.suspect, w.deferred = c.now, c.stalled, false, false
	w.learnApplied(m.Applied)
	switch {
	case m.Status != StatusNoLease:
		w.lapsed, w.withheld = false, false // our grants reach it
	case !c.canGrant():
		// Its lease lapsing is our doing (no quorum contact), not the link's.
	case !w.lapsed:
		w.lapsed, w.lapsedAt = true, c.now
	case !w.withheld && c.now-w.lapsedAt >= c.t.lease:
		// A lease's worth of grants lost in a row: stop granting, so that
		// declaring it down later is safe (tickMaster).
		w.withheld, w.withheldAt = true, c.now
	}
	st := StatusNoLease
	if c.canGrant() && c.m.downPending[m.From] != mem.Incarnation && !w.withheld {
		st = StatusOK
	}
	// Name the incarnation: sequence numbers restart with each one, and a
	// grant must never reach a later process (TestStaleGrantForPreviousIncarnation).
	c.send(Message{Type: MsgImAliveAck, To: m.From, Seq: m.Seq, Status: st, Node: m.From, Inc: m.FromInc})
	if !c.eligible[m.From] {
		c.maybePush(m.From, w)
	}
}

// masterJoin admits incarnation inc of node n, or says why not yet.
func (c *Core) masterJoin(n NodeNum, inc uint64, info NodeInfo) (Status, string) {
	mem := c.st.members[n]
	switch {
	case inc < mem.Incarnation:
		return StatusRetry, "an incarnation newer than this one has joined"
	case inc == mem.Incarnation && !mem.State.IsMember():
		// Admitted, then declared down before it heard of either (its
		// answers were lost): it joins once, so it must hear now that this
		// incarnation is over (TestJoinOfIncarnationAlreadyDown).
		return StatusNotMember, fmt.Sprintf("this incarnation was admitted and is %s since transition %d", mem.State, mem.LastChange)
	case mem.State == StateNeverUp || mem.State == StateDown:
		c.propose(Transition{Node: n, Incarnation: inc, From: mem.State, To: StateComingUp, Cause: CauseJoin}, info)
		return StatusOK, ""
	case inc == mem.Incarnation:
		return StatusOK, "" // already in; the records tell it
	case mem.State.IsMember():
		c.propose(Transition{Node: n, Incarnation: mem.Incarnation, From: mem.State, To: StateGoingDown, Cause: CauseRestart})
		return StatusRetry, fmt.Sprintf("taking the previous incarnation %d down first", mem.Incarnation)
	default:
		return StatusRetry, fmt.Sprintf("the previous incarnation %d is still %s", mem.Incarnation, mem.State)
	}
}

func (c *Core) masterLeave(n NodeNum, inc uint64) {
	if mem := c.st.members[n]; mem.Incarnation == inc && mem.State.IsMember() {
		c.propose(Transition{Node: n, Incarnation: inc, From: mem.State, To: StateShutdown, Cause: CauseShutdown})
	}
}

// masterLeftAlready answers a leave request from an incarnation that is no
// longer a member, from a node without raft: it still asks, so it missed
// the push that carried its SHUTDOWN (or its GOINGDOWN), and once it is
// DOWN the master keeps no watch of it that would resend. Pushed again from
// what it says it applied; it asks every heartbeat, so a push lost again is
// sent again, and a history longer than one push goes a push per request.
// At most one push per half heartbeat: a node spraying requests (each
// could ask for a whole batch of records) gets no more
// (TestLeaveRequestsOfALeftNodeBounded).
func (c *Core) masterLeftAlready(n NodeNum, inc uint64, applied uint64) {
	mem := c.st.members[n]
	if mem == nil || c.eligible[n] || mem.Incarnation != inc || mem.State.IsMember() || mem.State == StateNeverUp {
		return
	}
	w := c.m.watch[n]
	if w == nil || w.inc != inc {
		w = &watch{inc: inc, heard: c.now, stalledAt: c.stalled, pushed: -1 << 40}
		c.m.watch[n] = w // until tickMaster drops it (DOWN): long enough for the acks
	}
	if c.now-w.pushed < c.t.heartbeat/2 {
		return
	}
	w.learnApplied(applied)
	w.sent = min(w.sent, w.applied)
	c.maybePush(n, w)
}

func (c *Core) masterCrashProof(n NodeNum, inc uint64) {
	if mem := c.st.members[n]; mem.State.IsMember() && mem.Incarnation <= inc && n != c.self {
		c.propose(Transition{Node: n, Incarnation: mem.Incarnation, From: mem.State, To: StateGoingDown, Cause: CauseCrash})
	}
}

// holdEarlyReport keeps a callback report that reached this leader before
// it was ready, for masterReady.
func (c *Core) holdEarlyReport(from NodeNum, id TransitionID, failed []string) {
	k := earlyReport{from, id}
	if _, dup := c.m.early[k]; !dup && len(c.m.early) >= maxEarlyReports {
		return
	}
	if c.m.early == nil {
		c.m.early = map[earlyReport][]string{}
	}
	c.m.early[k] = slices.Clone(failed)
}

func (c *Core) masterCallbacksDone(from NodeNum, id TransitionID, failed []string) {
	for _, wt := range c.m.waits {
		if wt.t.ID == id && wt.expect[from] {
			delete(wt.expect, from)
			for _, f := range failed {
				wt.failed = append(wt.failed, fmt.Sprintf("%d:%s", from, f))
			}
			if len(wt.expect) == 0 {
				c.completeWait(wt)
			}
		}
	}
}

// masterApplied moves transitions along as they are applied.
func (c *Core) masterApplied(r Record) {
	t := r.Transition
	next, chained := leftAtOnce(t.To)
	for k := range c.m.proposed {
		// The step proposed with this one is still on its way: proposed
		// again here, it would cost a raft round that applies as a no-op.
		if k.node == t.Node && k.kind == r.Kind && !(chained && r.Kind == RecordTransition && k.inc == t.Incarnation && k.to == next) {
			delete(c.m.proposed, k)
		}
	}
	c.m.pushDue = true // Ready pushes once everything committed is applied
	if r.Kind != RecordTransition {
		return
	}
	switch t.To {
	case StateComingUp, StateKCleanup:
		c.startWait(t)
	case StateGoingDown, StateShutdown:
		c.propose(Transition{Node: t.Node, Incarnation: t.Incarnation, From: t.To, To: StateKCleanup, Cause: CauseCleanupDone})
		for _, id := range slices.Sorted(maps.Keys(c.m.waits)) {
			if wt := c.m.waits[id]; wt != nil && wt.expect[t.Node] {
				delete(wt.expect, t.Node)
				if len(wt.expect) == 0 {
					c.completeWait(wt)
				}
			}
		}
	case StateUCleanup:
		c.propose(Transition{Node: t.Node, Incarnation: t.Incarnation, From: t.To, To: StateDown, Cause: CauseCleanupDone})
	}
}

// pushAll pushes the records applied in this Ready to the members without
// raft, all of them, pushBatch records a message. Pushed one record at a
// time, as each was applied, the records one raft append committed together
// (a failed owner's GOINGDOWN and its successor) went in separate messages
// that the network may deliver apart.
func (c *Core) pushAll() {
	c.m.pushDue = false
	for _, n := range slices.Sorted(maps.Keys(c.m.watch)) {
		if w := c.m.watch[n]; !c.eligible[n] {
			for sent := w.sent; ; sent = w.sent {
				c.maybePush(n, w)
				if w.sent == sent || w.sent >= c.st.LastSeq() {
					break
				}
			}
		}
	}
}

// startWait waits for every member's callback report on t (the subject of a
// NODEUP included, as it runs its own).
func (c *Core) startWait(t Transition) {
	wt := &cbWait{t: t, started: c.now, expect: map[NodeNum]bool{}}
	for _, mem := range c.st.members {
		if mem.State.IsMember() {
			wt.expect[mem.Node] = true
		}
	}
	c.m.waits[t.ID] = wt
	if len(wt.expect) == 0 {
		c.completeWait(wt)
	}
}

func (c *Core) completeWait(wt *cbWait) {
	delete(c.m.waits, wt.t.ID)
	if len(wt.failed) > 0 {
		c.act(Action{Kind: ActLog, Node: wt.t.Node, Transition: wt.t.ID,
			Reason: fmt.Sprintf("callbacks failed for transition %d: %v", wt.t.ID, wt.failed)})
	}
	next, cause := StateUp, CauseNodeUpDone
	if wt.t.To == StateKCleanup {
		next, cause = StateUCleanup, CauseCleanupDone
	}
	c.propose(Transition{Node: wt.t.Node, Incarnation: wt.t.Incarnation, From: wt.t.To, To: next, Cause: cause})
}

// propose appends a transition to the raft log, once per election timeout
// at most (a lost proposal is retried; a duplicate applies as a no-op).
func (c *Core) propose(t Transition, info ...NodeInfo) {
	if !c.isMaster() {
		return
	}
	cmd := command{Kind: RecordTransition, T: t}
	if len(info) > 0 {
		cmd.Info = info[0]
	}
	if !c.proposeCmd(cmd) {
		return
	}
	if !t.To.IsMember() && t.From.IsMember() {
		c.m.downPending[t.Node] = t.Incarnation
	}
	if next, ok := leftAtOnce(t.To); ok {
		// Proposed in the same step, the two travel in one raft append
		// and commit together: one synced write on each voter instead of
		// two rounds in a row, and in a failover the second round's write
		// held every runner's loop while the key service's steps waited
		// (the new owner's Failover report, a member's pushed pull data).
		// If the first is refused when applied, so is this one (its From
		// no longer matches).
		c.propose(Transition{Node: t.Node, Incarnation: t.Incarnation, From: t.To, To: next, Cause: CauseCleanupDone})
	}
}

// leftAtOnce says which state follows s with nothing to wait for: a node
// declared down or leaving goes to KCLEANUP at once (its survivors' NODEDOWN
// callbacks start there), and UCLEANUP, where user-level watchers hear of
// it, is left for DOWN at once.
func leftAtOnce(s NodeState) (NodeState, bool) {
	switch s {
	case StateGoingDown, StateShutdown:
		return StateKCleanup, true
	case StateUCleanup:
		return StateDown, true
	}
	return 0, false
}

// proposeCmd proposes cmd unless the same one is in flight, and says
// whether it did.
func (c *Core) proposeCmd(cmd command) bool {
	k := proposalKey{cmd.Kind, cmd.T.Node, cmd.T.Incarnation, cmd.T.To}
	if at, ok := c.m.proposed[k]; ok && c.now-at < 2*c.t.election {
		return false
	}
	c.m.proposed[k] = c.now
	cmd.T.Time = wallTime(c.cfg.WallClock)
	c.proposeData(cmd.encode())
	return true
}

// masterSetInfo proposes node n's new info, asked for by a node that had
// applied the records up to base.
func (c *Core) masterSetInfo(n NodeNum, info NodeInfo, base uint64) {
	if _, ok := c.st.members[n]; ok {
		c.proposeCmd(command{Kind: RecordNodeInfo, T: Transition{Node: n}, Info: info, InfoBase: base})
	}
}
