package clms

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Errors returned by the core.
var (
	ErrConfig      = errors.New("clms: invalid core configuration")
	ErrNotForMe    = errors.New("clms: message addressed to another node")
	ErrUnknownNode = errors.New("clms: message from a node outside the node table")
	ErrJoinTimeout = errors.New("clms: no join within the join timeout")
	ErrBadRaft     = errors.New("clms: raft message does not match its envelope")
	ErrNotMember   = errors.New("clms: this node is not a member")
)

// NodeConfig is one row of the node table as the core needs it.
type NodeConfig struct {
	Num            NodeNum
	MasterEligible bool // a raft voter; a candidate for CLMS master
}

// Config builds a Core.
type Config struct {
	Self  NodeNum
	Nodes []NodeConfig // the whole node table, this node included
	// Timing is converted to ticks once; Tick() must be called every
	// Timing.Tick of the node's monotonic clock.
	Timing Timing
	// Incarnation identifies this run of the process and must be larger
	// than any earlier run's (boot time in nanoseconds, or a persisted
	// counter): peers refuse messages of older incarnations.
	Incarnation uint64
	Info        NodeInfo
	// Storage is the raft state of a master-eligible node as restored from
	// disk: BootstrapStorage plus the persisted HardState and entries. Nil
	// starts from scratch. Unused on other nodes.
	Storage *raft.MemoryStorage
	// WallClock stamps transitions for people (Transition.Time); the
	// protocol never reads it. Nil leaves times zero.
	WallClock func() time.Time
	// Logger receives raft's log lines; nil discards them.
	Logger raft.Logger
	// Keys are the key services (the same list on every node) and their
	// panic policy and timeouts; Info.KeyServices says which this node may
	// run.
	Keys KeyConfig
	// Compaction bounds the raft log and the history kept; zero fields
	// take DefaultCompaction's.
	Compaction Compaction
}

// BootstrapStorage returns the raft storage every master-eligible node starts
// from: a snapshot at index 1 whose configuration is the eligible nodes of the
// table. It is the same on every node, so it is not persisted; a runner
// restarting a node appends its persisted state to a fresh one.
func BootstrapStorage(nodes []NodeConfig) *raft.MemoryStorage {
	s := raft.NewMemoryStorage()
	var voters []uint64
	for _, n := range nodes {
		if n.MasterEligible {
			voters = append(voters, uint64(n.Num))
		}
	}
	slices.Sort(voters)
	_ = s.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: new(uint64(1)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: voters},
	}})
	return s
}

type phase uint8

const (
	phaseJoining phase = iota // probing for the master and asking to join
	phaseMember               // our COMINGUP is committed
	phaseFenced               // declared down or lease lost: never a member again
	phaseLeft                 // planned shutdown committed
	phaseFailed               // join timed out
)

// ticks are the Timing durations in ticks.
type ticks struct {
	heartbeat, lease, margin, probe, election, raftHB, grant, callback, join int64
}

// Core is one node's CLMS membership logic: a clock-free state machine in
// the style of etcd raft's RawNode. The runner feeds it ticks, messages and
// evidence, and after each input drains Ready and calls Advance. Not safe
// for concurrent use: the runner serialises every call.
type Core struct {
	cfg      Config
	self     NodeNum
	inc      uint64
	t        ticks
	now      int64
	eligible map[NodeNum]bool
	digest   uint64 // ConfigDigest(cfg): a joiner's must be the same
	// voteRefused: the digest each voter was last refused a vote for
	// (logged once per digest).
	voteRefused map[NodeNum]uint64
	voters      []NodeNum
	st          *State
	storage     *raft.MemoryStorage
	rn          *raft.RawNode // nil on nodes that are not master-eligible; call it through raft()
	// props are the commands proposed since raft was last called, in order:
	// raft() hands them to raft as one MsgProp before any other call, so
	// the proposals of one input (and of the inputs a runner steps before
	// its next Ready) are appended together and go out in one MsgApp.
	props     [][]byte
	rd        *raft.Ready // handed out by Ready, not yet Advanced
	applied   uint64      // raft index applied (voters)
	snapIndex uint64      // index of the storage's snapshot (voters)
	snapSent  []uint64    // followers sent a raft snapshot in the Ready not yet Advanced
	restored  *Restored   // State replaced by an image, not yet in a Ready

	phase      phase
	joinStart  int64
	joinTry    int64
	joinReason string
	leaving    bool
	leaveTry   int64
	// leaveDenied: when a leaving node was first told it is no longer a
	// member (imAliveAck), 0 before.
	leaveDenied int64
	master      NodeNum // who this node believes is the master
	masterTerm  uint64
	lead        uint64 // raft's leader, as last reported (voters)
	lease       int64  // tick at which the membership lease runs out
	leaseValid  bool
	hbSeq       uint64
	hbSent      map[uint64]int64
	lastHB      int64
	lastAck     int64
	lastAcked   uint64 // seq of the last answered imalive
	peerInc     map[NodeNum]uint64
	gone        map[NodeNum]uint64 // crash proofs: incarnation known gone
	echo        echoState
	cbDone      map[TransitionID][]string // callback reports made, resent to a new master
	fenceReason string
	force       forceState
	quiet       quietState           // when we last heard the leader, for maybeCampaign
	pendingInfo map[NodeNum]NodeInfo // SetNodeInfo requests not yet applied
	infoTry     int64
	handedAt    int64 // last leadership transfer started by handOver

	m  *masterState // while raft leader
	ks keyState
	// stalled counts the ticks the runner delivered late, at once (Late):
	// time in which this process could not hear anyone.
	stalled int64

	out     []Message
	actions []Action
	recs    []Record
	stats   Stats
}

// echoState is what a voter echoes to its leader: the leader's Stamp on the
// last append or heartbeat it accepted in Term (when its election timer was
// reset).
type echoState struct {
	lead        NodeNum
	term, stamp uint64
}

// quietState is the last tick at which this voter accepted an append or
// heartbeat from its leader.
type quietState struct {
	leader  NodeNum
	heard   int64
	tried   bool  // campaigned in this silence already
	triedAt int64 // when
}

// NewCore builds a core from cfg.
func NewCore(cfg Config) (*Core, error) {
	if err := cfg.Timing.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := validateKeys(cfg.Keys); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := cfg.Compaction.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if cfg.Self == 0 || cfg.Incarnation == 0 {
		return nil, fmt.Errorf("%w: self and incarnation must be nonzero", ErrConfig)
	}
	c := &Core{
		cfg: cfg, self: cfg.Self, inc: cfg.Incarnation, eligible: map[NodeNum]bool{}, digest: ConfigDigest(cfg),
		voteRefused: map[NodeNum]uint64{},
		hbSent:      map[uint64]int64{}, peerInc: map[NodeNum]uint64{}, gone: map[NodeNum]uint64{},
		cbDone: map[TransitionID][]string{}, pendingInfo: map[NodeNum]NodeInfo{},
	}
	tm := cfg.Timing
	c.t = ticks{
		heartbeat: int64(tm.Ticks(tm.Heartbeat)), lease: int64(tm.Ticks(tm.LeaseTimeout)),
		margin: int64(tm.Ticks(tm.LeaseMargin)), probe: int64(tm.Ticks(tm.ProbeAfter)),
		election: int64(tm.Ticks(tm.ElectionTimeout)), raftHB: int64(tm.Ticks(tm.RaftHeartbeat)),
		callback: int64(tm.Ticks(tm.CallbackTimeout)), join: int64(tm.Ticks(tm.JoinTimeout)),
	}
	// The master grants leases only while a quorum of voters accepted its
	// messages within this window. A voter refuses to vote for ElectionTimeout
	// ticks of its own clock after accepting one, so the window leaves a
	// quarter for clock-rate drift and one tick for tick granularity
	// (docs/CLMS.md, "Safety argument").
	c.t.grant = max(1, int64(tm.Ticks(tm.ElectionTimeout*3/4))-1)
	c.ks = newKeyState(cfg, c.t)

	seen := map[NodeNum]bool{}
	var nums []NodeNum
	for _, n := range cfg.Nodes {
		if n.Num == 0 || seen[n.Num] {
			return nil, fmt.Errorf("%w: node %d is zero or listed twice", ErrConfig, n.Num)
		}
		seen[n.Num] = true
		nums = append(nums, n.Num)
		if n.MasterEligible {
			c.eligible[n.Num] = true
			c.voters = append(c.voters, n.Num)
		}
	}
	slices.Sort(c.voters)
	if !seen[cfg.Self] {
		return nil, fmt.Errorf("%w: node %d is not in the node table", ErrConfig, cfg.Self)
	}
	if len(c.voters) == 0 {
		return nil, fmt.Errorf("%w: no master-eligible node", ErrConfig)
	}
	c.st = newState(nums, cfg.Compaction.HistoryKeep)
	c.joinStart, c.joinTry = 0, -1<<40
	if c.eligible[c.self] {
		if err := c.startRaft(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Core) startRaft() error {
	c.storage = c.cfg.Storage
	if c.storage == nil {
		c.storage = BootstrapStorage(c.cfg.Nodes)
	} else if fi, _ := c.storage.FirstIndex(); fi <= 1 {
		if li, _ := c.storage.LastIndex(); li == 0 {
			c.storage = BootstrapStorage(c.cfg.Nodes)
		}
	}
	logger := c.cfg.Logger
	if logger == nil {
		logger = &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)}
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:              uint64(c.self),
		ElectionTick:    int(c.t.election),
		HeartbeatTick:   int(c.t.raftHB),
		Storage:         c.storage,
		MaxSizePerMsg:   1 << 20, // a few thousand records per append
		MaxInflightMsgs: 256,     // pipelining on a LAN; raft's examples use 256
		CheckQuorum:     true,    // a leader cut from its quorum steps down (and we build on its lease)
		PreVote:         true,    // a partitioned voter rejoining does not depose a working leader
		Logger:          logger,
	})
	if err != nil {
		return fmt.Errorf("%w: raft: %w", ErrConfig, err)
	}
	c.rn = rn
	if snap, err := c.storage.Snapshot(); err == nil {
		c.snapIndex = snap.GetMetadata().GetIndex()
		if len(snap.GetData()) > 0 {
			// A restart from a compacted store: the State up to the
			// snapshot, then raft replays the log after it.
			c.restore(snap.GetData(), "stored snapshot")
		}
	}
	if len(c.voters) == 1 {
		// Alone, there is nobody to wait for.
		_ = c.raft().Campaign()
	}
	return nil
}

// campaigns reports whether this node may be master: a fenced, departed or
// failed node never is again (it still votes and stores the log, and hands
// raft leadership on if it gets it).
func (c *Core) campaigns() bool { return c.phase == phaseJoining || c.phase == phaseMember }

// Tick advances the core's clock by one Timing.Tick. A runner whose process
// was stopped (SIGSTOP, a frozen VM) must deliver every missed tick before
// any Step, so that an expired lease is noticed before a message is handled.
func (c *Core) Tick() {
	defer c.keyPoll()
	c.now++
	if c.rn != nil {
		// Raft ticks even on a node that may not lead any more: its vote
		// and its election timer keep the others' elections going.
		c.raft().Tick()
		c.maybeForce()
		c.maybeCampaign()
		c.handOver()
	}
	switch c.phase {
	case phaseJoining:
		c.tickJoin()
	case phaseMember:
		c.tickMember()
	}
	if c.m != nil && c.m.ready {
		c.tickMaster()
	}
}

// Late tells the core that the runner could not run it for the last n
// ticks, which it delivers now, at once, before any other input: the
// process was descheduled, stopped, or busy in a synced write. As master it
// does not count that time as a member's silence (up to LeaseTimeout per
// silence): an imalive that arrived meanwhile is still waiting to be read
// (docs/CLMS.md, "Local health"). Declaring later is always safe.
func (c *Core) Late(n int) {
	if n > 0 {
		c.stalled += int64(n)
	}
}

// Acting reports whether this node may act as a member at this tick: it is
// a member and holds a valid lease. The invariant checker asks it.
func (c *Core) Acting() bool { return c.phase == phaseMember && !c.leaving && c.now < c.lease }

// GrantsLeases reports whether this node, as master, would grant a lease at
// this tick. At most one node in the cluster does at any instant.
func (c *Core) GrantsLeases() bool { return c.canGrant() }

// Fenced reports whether this incarnation fenced itself, and why.
func (c *Core) Fenced() (bool, string) { return c.phase == phaseFenced, c.fenceReason }

// Now is the core's clock in ticks.
func (c *Core) Now() int64 { return c.now }

// State is the replicated state as this node has applied it. Read only.
func (c *Core) State() *State { return c.st }

// Self returns this node's number and incarnation.
func (c *Core) Self() (NodeNum, uint64) { return c.self, c.inc }

// Master returns the node this core believes is the master (0: unknown).
func (c *Core) Master() NodeNum { return c.master }

// IsMaster reports whether this node acts as master: raft leader, caught up
// with the log of its term, and not fenced.
func (c *Core) IsMaster() bool { return c.isMaster() }

func (c *Core) isMaster() bool { return c.m != nil && c.m.ready && c.campaigns() }

// RaftStatus returns raft's status on master-eligible nodes.
func (c *Core) RaftStatus() (raft.BasicStatus, bool) {
	if c.rn == nil {
		return raft.BasicStatus{}, false
	}
	return c.raft().BasicStatus(), true
}

// Stats returns the counters and gauges for metrics.
func (c *Core) Stats() Stats {
	s := c.stats
	c.st.countByState(&s.MembersByState)
	if c.rn != nil {
		s.RaftTerm = c.raft().BasicStatus().GetTerm()
		fi, _ := c.storage.FirstIndex()
		li, _ := c.storage.LastIndex()
		s.RaftLogEntries, s.SnapshotIndex = li+1-fi, c.snapIndex
	}
	s.HistoryKept = uint64(c.st.LastTransition() + 1 - c.st.FirstTransition())
	s.RecordsKept = c.st.LastSeq() + 1 - c.st.FirstSeq()
	s.IsMaster = c.isMaster()
	s.Fenced = c.phase == phaseFenced
	s.LeaseValid = c.Acting()
	c.keyStats(&s)
	return s
}

func (c *Core) act(a Action) { c.actions = append(c.actions, a) }

func (c *Core) send(m Message) {
	if m.To == c.self || m.To == 0 {
		// To ourselves while our own mastership is not ready (a report, a
		// leave): the tick that retries, or masterReady, handles it.
		return
	}
	m.From, m.FromInc = c.self, c.inc
	if c.m != nil {
		m.Stamp = uint64(c.now)
		if m.Term == 0 {
			m.Term = c.m.term
		}
	}
	if c.echo.lead != 0 && c.echo.lead == m.To {
		m.Echo, m.EchoTerm = c.echo.stamp, c.echo.term
	}
	c.out = append(c.out, m)
}

// Step hands the core one message from the network.
func (c *Core) Step(m Message) error {
	if m.To != c.self {
		return fmt.Errorf("%w: to %d, I am %d", ErrNotForMe, m.To, c.self)
	}
	if _, ok := c.st.members[m.From]; !ok || m.From == c.self {
		return fmt.Errorf("%w: %d", ErrUnknownNode, m.From)
	}
	defer c.keyPoll()
	if known := c.peerInc[m.From]; m.FromInc < known {
		return nil // from a past run of that node: never applied
	} else if m.FromInc > known {
		if known != 0 {
			c.crashProof(m.From, known) // a new incarnation proves the old one gone
		}
		c.peerInc[m.From] = m.FromInc
	}
	if c.m != nil && m.EchoTerm == c.m.term && c.eligible[m.From] {
		c.m.acks[m.From] = max(c.m.acks[m.From], int64(m.Echo))
	}
	switch m.Type {
	case MsgRaft:
		return c.stepRaft(m)
	case MsgWhoIsMaster:
		if c.rn != nil {
			st := c.raft().BasicStatus()
			c.send(Message{Type: MsgMasterIs, To: m.From, Node: NodeNum(st.Lead), Term: st.GetTerm()})
		}
	case MsgMasterIs:
		c.learnMaster(m.Node, m.Term)
	case MsgJoin:
		if !c.isMaster() {
			c.send(Message{Type: MsgJoinReply, To: m.From, Status: StatusNotMaster, Node: c.master})
			return nil
		}
		if m.Digest != 0 && m.Digest != c.digest {
			// Checked before anything is proposed: a node with another node
			// table or lease must never count as a member. (0: a peer of a
			// version that does not send one.)
			reason := configMismatch(c.self, c.digest, m.From, m.Digest)
			c.act(Action{Kind: ActLog, Node: m.From, Reason: fmt.Sprintf("refusing node %d's join: %s", m.From, reason)})
			c.send(Message{Type: MsgJoinReply, To: m.From, Status: StatusConfigMismatch, Reason: reason})
			return nil
		}
		st, reason := c.masterJoin(m.From, m.FromInc, m.Info)
		c.send(Message{Type: MsgJoinReply, To: m.From, Status: st, Reason: reason})
	case MsgJoinReply:
		if c.phase != phaseJoining {
			return nil
		}
		switch m.Status {
		case StatusNotMaster:
			if c.rn == nil && m.Node != c.master {
				c.master = m.Node
				c.joinTry = -1 << 40
			}
		case StatusRetry:
			c.setJoinReason(m.Reason)
		case StatusNotMember:
			c.fence("declared down before it learned it had joined: " + m.Reason)
		case StatusConfigMismatch:
			c.phase = phaseFailed
			c.dropMaster()
			c.act(Action{Kind: ActJoinFailed, Err: fmt.Errorf("%w: %s", ErrConfigMismatch, m.Reason)})
		}
	case MsgImAlive:
		c.masterImAlive(m)
	case MsgImAliveAck:
		c.imAliveAck(m)
	case MsgPing:
		if c.phase == phaseMember && !c.isMaster() {
			if c.rn == nil && m.Term >= c.masterTerm && m.Term != 0 {
				c.learnMaster(m.From, m.Term)
			}
			c.sendImAlive()
		}
	case MsgRecords:
		c.stepRecords(m)
	case MsgRecordsAck:
		if c.isMaster() {
			if w := c.m.watch[m.From]; w != nil && w.inc == m.FromInc {
				w.learnApplied(m.Applied)
				if m.Status == StatusRetry {
					w.sent = min(w.sent, w.applied) // a push was overtaken and dropped: resend from what it has
				}
				c.maybePush(m.From, w)
			}
		}
	case MsgCallbacksDone:
		switch {
		case c.isMaster():
			c.masterCallbacksDone(m.From, m.Transition, m.Failed)
		case c.m != nil && !c.m.ready && c.campaigns():
			c.holdEarlyReport(m.From, m.Transition, m.Failed)
		}
	case MsgCrashProof:
		if mem := c.st.members[m.From]; mem.State.IsMember() && mem.Incarnation == m.FromInc {
			c.PeerCrashProof(m.Node, m.Inc)
		}
	case MsgLeave:
		if c.isMaster() {
			c.masterLeave(m.From, m.FromInc)
			c.masterLeftAlready(m.From, m.FromInc, m.Applied)
		}
	case MsgSetInfo:
		if mem := c.st.members[m.From]; c.isMaster() && mem.State.IsMember() && mem.Incarnation == m.FromInc {
			c.masterSetInfo(m.Node, m.Info, m.Applied)
		}
	case MsgKeyPull, MsgKeyData, MsgKeyReady, MsgKeyMove, MsgKeyReleased:
		c.stepKey(m)
	default:
		return fmt.Errorf("%w: message type %d", ErrDecode, m.Type)
	}
	return nil
}

func (c *Core) stepRaft(m Message) error {
	if c.rn == nil || m.Raft == nil || !c.eligible[m.From] || m.Raft.GetFrom() != uint64(m.From) || m.Raft.GetTo() != uint64(c.self) {
		return fmt.Errorf("%w: %v", ErrBadRaft, m)
	}
	if t := m.Raft.GetType(); t == raftpb.MsgVote || t == raftpb.MsgPreVote {
		if m.Digest != 0 && m.Digest != c.digest {
			// A master refuses every join whose digest is not its own: a
			// voter with another cluster.toml, elected, would lock out
			// every node of the cluster's configuration. No vote for it,
			// whatever the request (a transfer too): only a majority that
			// shares a configuration can elect, and the odd node is the
			// one refused at its join. (0: a peer that does not send one.)
			if c.voteRefused[m.From] != m.Digest {
				c.voteRefused[m.From] = m.Digest
				c.act(Action{Kind: ActLog, Node: m.From, Reason: fmt.Sprintf("no vote for node %d: %s",
					m.From, configMismatch(c.self, c.digest, m.From, m.Digest))})
			}
			return nil
		}
		if !c.mayVote(m.Raft) {
			return nil
		}
	}
	if err := c.raft().Step(m.Raft); err != nil {
		return nil // raft drops what it cannot use (a local type, an unknown peer's reply)
	}
	switch m.Raft.GetType() {
	case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
		// raft reset its election timer for an accepted leader: echo the
		// leader's stamp so it can count us in its quorum contact.
		if st := c.raft().BasicStatus(); st.Lead == uint64(m.From) && st.GetTerm() == m.Raft.GetTerm() && m.Stamp != 0 {
			if c.echo.lead != m.From || c.echo.term != st.GetTerm() || c.echo.stamp < m.Stamp {
				c.echo = echoState{lead: m.From, term: st.GetTerm(), stamp: m.Stamp}
			}
		}
		if st := c.raft().BasicStatus(); st.Lead == uint64(m.From) && st.GetTerm() == m.Raft.GetTerm() {
			c.quiet = quietState{leader: m.From, heard: c.now}
		}
	}
	return nil
}

// mayVote enforces A3 (docs/CLMS.md) where raft's CheckQuorum lease does not:
//   - it lives in memory: our previous incarnation may have accepted the
//     master's heartbeat just before it died, and the master counts that in
//     its quorum contact. So a new incarnation votes for nobody until
//     ElectionTimeout has passed on its own clock, as if it had accepted a
//     heartbeat at its start (TestRestartedVoterKeepsLeaderLease);
//   - raft checks it only on vote requests of a higher term: any other
//     message of a higher term moves us to that term with no leader, and a
//     vote request of that term then passes (a late answer to a heartbeat we
//     sent when we led, from a voter that became a candidate since). So no
//     vote within ElectionTimeout of accepting a leader's append or heartbeat,
//     whatever raft's state (TestVoterKeepsLeaseAfterHigherTermAnswer).
//
// A forced campaign (leadership handed over, or crash proof of the leader)
// skips both rules, as it skips raft's: the leader grants nothing any more.
// The first is the second for a heartbeat we may have accepted before we
// restarted, so it yields in the same case: a forced candidate of term T+1
// proves the leader of T gone, a leader of T+1 cannot coexist with it (raft's
// persisted votes), and a heartbeat of a term past T+1 would have moved our
// persisted term there, where raft refuses the request itself. Refusing it
// cost a 3-voter cluster whose master crashed within ElectionTimeout of a
// voter's restart its forced election: a split vote, then raft's timeout
// (TestMasterCrashSoonAfterVoterRestart).
func (c *Core) mayVote(m *raftpb.Message) bool {
	if bytes.Equal(m.GetContext(), []byte("CampaignTransfer")) { // raft's campaignTransfer
		return true
	}
	if c.now < c.t.election {
		return false
	}
	return c.quiet.leader == 0 || c.now-c.quiet.heard >= c.t.election
}

// HasReady reports whether Ready has anything.
func (c *Core) HasReady() bool {
	return len(c.out) > 0 || len(c.actions) > 0 || len(c.recs) > 0 || c.restored != nil || (c.rn != nil && c.rd == nil && c.raft().HasReady())
}

// Ready returns what the runner must persist, send and do (see Ready). Call
// Advance after acting on it, before the next Ready.
func (c *Core) Ready() Ready {
	var rd Ready
	if c.rn != nil && c.rd == nil && c.raft().HasReady() {
		r := c.raft().Ready()
		c.rd = &r
		if !raft.IsEmptySnap(r.Snapshot) {
			_ = c.storage.ApplySnapshot(r.Snapshot)
		}
		if len(r.Entries) > 0 {
			_ = c.storage.Append(r.Entries)
		}
		if r.HardState != nil && !raft.IsEmptyHardState(r.HardState) {
			_ = c.storage.SetHardState(r.HardState)
		}
		rd.HardState, rd.Entries, rd.MustSync = r.HardState, r.Entries, r.MustSync
		if !raft.IsEmptySnap(r.Snapshot) {
			rd.Snapshot = r.Snapshot
			// We fell behind the leader's compacted log: its snapshot
			// replaces our State, and raft applies the log after it.
			c.snapIndex = r.Snapshot.GetMetadata().GetIndex()
			c.applied = max(c.applied, c.snapIndex)
			c.restore(r.Snapshot.GetData(), "raft snapshot")
		}
		for _, m := range r.Messages {
			out := Message{Type: MsgRaft, To: NodeNum(m.GetTo()), Raft: m}
			if t := m.GetType(); t == raftpb.MsgVote || t == raftpb.MsgPreVote {
				out.Digest = c.digest // stepRaft: no vote for another configuration
			} else if t == raftpb.MsgSnap {
				c.snapSent = append(c.snapSent, m.GetTo())
			}
			c.send(out)
		}
		if r.SoftState != nil {
			c.softState(r.SoftState)
		}
		for _, e := range r.CommittedEntries {
			c.applyEntry(e)
		}
		if c.m != nil && c.m.pushDue {
			c.pushAll()
		}
		if c.m != nil && !c.m.ready && c.applied >= c.m.readyIndex {
			c.masterReady()
			// masterReady declares down the members with crash proof: their
			// key services' new owners go right behind, in the same append
			// (masterKeys), not at the next input's poll.
			c.keyPoll()
		}
		if c.applied >= c.snapIndex+c.cfg.Compaction.SnapshotEvery {
			rd.Compact = c.compact()
		}
	}
	rd.Messages, rd.Actions, rd.Applied, rd.Restored = c.out, c.actions, c.recs, c.restored
	c.out, c.actions, c.recs, c.restored = nil, nil, nil, nil
	return rd
}

// Advance tells the core the last Ready was acted on.
func (c *Core) Advance() {
	if c.rd != nil {
		c.raft().Advance(*c.rd)
		c.rd = nil
	}
	for _, to := range c.snapSent {
		// Raft pauses a follower it sent a snapshot to until told the send
		// is over. Sends are fire-and-forget here: report each as done, so
		// raft probes the follower again, and sends the snapshot anew if
		// it was lost (TestRandomizedCompaction).
		c.raft().ReportSnapshot(to, raft.SnapshotFinish)
	}
	c.snapSent = c.snapSent[:0]
}

// compact snapshots the applied State into the raft storage and drops the
// log before it but for Compaction.LogMargin entries, which a follower a
// little behind still catches up from. It returns the snapshot for the
// runner to store (Ready.Compact).
func (c *Core) compact() *raftpb.Snapshot {
	prev, err := c.storage.Snapshot()
	if err != nil {
		return nil
	}
	snap, err := c.storage.CreateSnapshot(c.applied, prev.GetMetadata().GetConfState(), c.st.encodeImage())
	if err != nil {
		c.act(Action{Kind: ActLog, Reason: fmt.Sprintf("snapshot at raft index %d: %v", c.applied, err)})
		return nil
	}
	c.snapIndex = c.applied
	if margin := c.cfg.Compaction.LogMargin; c.applied > margin {
		if err := c.storage.Compact(c.applied - margin); err != nil && !errors.Is(err, raft.ErrCompacted) {
			c.act(Action{Kind: ActLog, Reason: fmt.Sprintf("compact the raft log at index %d: %v", c.applied-margin, err)})
		}
	}
	c.stats.Snapshots++
	return snap
}

func (c *Core) softState(ss *raft.SoftState) {
	lead := ss.Lead
	if lead != c.lead {
		c.lead = lead
		c.stats.LeaderChanges++
		term := c.raft().BasicStatus().GetTerm()
		switch {
		case lead == 0 && ss.RaftState == raft.StatePreCandidate && term == c.masterTerm && c.master != c.self:
			// A pre-vote changes no term: the master of this term is still
			// the master as far as anyone knows, and a voter starved of CPU
			// pre-votes when it reads the master's heartbeats late. Forgetting
			// the master here skipped its imalive and its answer to the
			// master's probe, and got it declared down for silence
			// (TestPreCandidateKeepsImAlive, docs/CLMS.md "Loaded nodes").
			// The master validates what it receives, so sending to it is safe.
			// Not when the master of the term was this node: it stepped
			// down (no quorum) and pre-campaigns in the same tick, and is
			// certainly not the master any more (TestCutMasterForgetsItself).
		case NodeNum(lead) != c.master || term != c.masterTerm:
			c.master = NodeNum(lead)
			c.masterTerm = term
			c.masterChanged()
		}
	}
	if ss.RaftState == raft.StateLeader && c.m == nil && c.campaigns() {
		li, _ := c.storage.LastIndex()
		c.m = newMasterState(c.raft().BasicStatus().GetTerm(), c.now, li)
	} else if ss.RaftState != raft.StateLeader && c.m != nil {
		c.m = nil
	}
}

func (c *Core) applyEntry(e *raftpb.Entry) {
	c.applied = e.GetIndex()
	if e.GetType() != raftpb.EntryNormal || len(e.GetData()) == 0 {
		return
	}
	cmd, err := decodeCommand(e.GetData())
	if err != nil {
		c.act(Action{Kind: ActLog, Reason: fmt.Sprintf("raft entry %d: %v", e.GetIndex(), err)})
		return
	}
	if r, ok := c.st.decide(cmd); ok {
		c.applyRecord(r)
	}
	if c.m != nil {
		delete(c.m.proposed, proposalKey{cmd.Kind, cmd.T.Node, cmd.T.Incarnation, cmd.T.To})
		if c.m.downPending[cmd.T.Node] == cmd.T.Incarnation && !cmd.T.To.IsMember() {
			delete(c.m.downPending, cmd.T.Node) // committed: applied, or moot
		}
	}
}
