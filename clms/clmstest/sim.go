// Package clmstest runs many CLMS cores in one process over a simulated
// network and simulated time, with the faults CLMS must survive: message
// delay and loss, partitions, crashes, hangs (SIGSTOP), restarts with a new
// incarnation, and clocks that run fast or slow. Everything is driven by one
// seeded random source, so a run is a deterministic function of its seed and
// its script; an invariant checker runs after every step.
//
//	s := clmstest.New(t, clmstest.Options{Nodes: clmstest.Table(3, 3), Timing: clms.LANFastTiming()})
//	s.StartAll()
//	s.RunUntil(5*time.Second, s.AllUp)
//	s.Crash(2)
//	s.RunUntil(time.Second, func() bool { return s.DownEverywhere(2) })
package clmstest

import (
	"container/heap"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/clusterinfra/ci/clms"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// TB is the part of testing.TB the simulator uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// Options configure a simulation. Zero values take the defaults noted.
type Options struct {
	Seed  uint64
	Nodes []clms.NodeConfig
	// Compaction is every core's (zero: the defaults).
	Compaction clms.Compaction
	Timing     clms.Timing
	Step       time.Duration // simulated time per step (default 1 ms)
	Delay      time.Duration // one-way network delay (default 1 ms)
	Jitter     time.Duration // extra random delay up to this (default 1 ms)
	// CallbackTime is how long a node's subsystem callbacks take (default
	// 2 ms); Node.HangCallbacks makes them never finish.
	CallbackTime time.Duration
	// Verbose logs every action through TB.Logf.
	Verbose bool
	// Keys are the key services every core is configured with; KeyCapable
	// lists, per node, the ones it may run (its NodeInfo.KeyServices).
	Keys       clms.KeyConfig
	KeyCapable map[clms.NodeNum][]string
	// KeyTime is how long each key-service routine takes (default 2 ms);
	// Node.HangPull makes a node's PullData never return.
	KeyTime time.Duration
	// SaveTime is how long a master-eligible node's synced write of a
	// Ready's raft state takes (Ready.MustSync: its fsync; a write without
	// one is instant, and a crashed process does not lose it). The node
	// sends what clms.SendBeforeSave allows, is busy for SaveTime (no tick,
	// message or report is handled, as the runner's goroutine is in
	// Store.Save), then persists and sends the rest. A crash meanwhile
	// loses the write and the messages held back, as it loses a write not
	// yet synced. 0: every write is instant (the order of sends is the same).
	SaveTime time.Duration
	// OneQueue models the runner before urgent input went first: messages
	// that arrive while a node is busy (writing, stopped) wait in one queue
	// and are handed to the core one at a time, each followed by its own
	// Ready (and write). By default the simulator does what clms.Runner
	// does: urgent messages (clms.Urgent) first, and up to clms.StepBatch
	// queued messages stepped before one Ready (a raft message ends the
	// batch: clms.BatchEnds).
	OneQueue bool
	// Unaware models the runner before local health awareness: it does not
	// tell the core that ticks came late (clms.Core.Late), so a master
	// counts its own stall as its members' silence.
	Unaware bool
}

// Table returns a node table of n nodes numbered from 1, the first
// `eligible` of them master-eligible.
func Table(n, eligible int) []clms.NodeConfig {
	t := make([]clms.NodeConfig, n)
	for i := range t {
		t[i] = clms.NodeConfig{Num: clms.NodeNum(i + 1), MasterEligible: i < eligible}
	}
	return t
}

// Node is one simulated process (and the disk that outlives it).
type Node struct {
	Num      clms.NodeNum
	Eligible bool
	Core     *clms.Core
	Inc      uint64
	// Rate is the speed of this node's clock (1 exact, 0.9 runs 10% slow).
	Rate float64
	// ExtraDelay is added to every message to or from this node.
	ExtraDelay time.Duration
	// Timing, when set before Start, replaces the simulation's timing for
	// this node: a node started with another cluster.toml.
	Timing *clms.Timing
	// HangCallbacks: this node's subsystem callbacks never report.
	HangCallbacks bool
	// HangPull: this node's PullData never returns; FailPull: it fails;
	// HangHandOff: its HandOff never returns; FailHandOff: its HandOff
	// fails.
	HangPull, FailPull, HangHandOff, FailHandOff bool
	// FailoverTime, if set, is how long this node's Failover routine takes
	// (instead of Options.KeyTime).
	FailoverTime time.Duration
	// KeyGot is what FailoverData (or TakeOver, under the previous owner's
	// number) received on this process, by key service.
	KeyGot map[string]map[clms.NodeNum][]byte
	// SentMsgs and SentBytes count what this node sent (encoded), over all
	// its incarnations.
	SentMsgs, SentBytes int

	Paused, Dead, Started bool
	// Records is this process's history, as handed out by Ready.Applied
	// (and, for the records a state image replaced, as the checker saw
	// them applied elsewhere).
	Records []clms.Record
	// Restores counts this process's Ready.Restored; Compactions the
	// snapshots it stored (Ready.Compact), over its incarnations.
	Restores, Compactions int
	transitions           int // among Records
	Actions               []TimedAction
	JoinErr               error

	clock     float64 // nanoseconds of this incarnation on its own clock
	ticksDone int64
	lateTo    int64               // the last tick reported to the core as late (Core.Late)
	disk      *raft.MemoryStorage // what the runner persisted
	diskSnap  *raftpb.Snapshot    // the newest snapshot persisted (Ready.Snapshot or Ready.Compact)
	diskHS    *raftpb.HardState
	saving    *clms.Ready // the Ready whose write is under way (SaveTime)
	// stalled: stopped (Pause) and not yet caught up on its ticks since
	// (a write in the catch-up takes SaveTime): the checker treats it as
	// still stopped.
	stalled   bool
	connected map[clms.NodeNum]bool
	keyGen    map[string]int // bumped when ActKeyOwner turns false: cancels routines
	// inbox holds the messages that arrived while the process was busy or
	// stopped, in arrival order: the runner's input queues.
	inbox []queued
}

// queued is a message waiting in a node's inbox.
type queued struct {
	from *Node
	finc uint64
	m    clms.Message
}

// TimedAction is an action with the simulated time it was handed out.
type TimedAction struct {
	At  time.Duration
	Inc uint64 // the incarnation that was handed the action
	clms.Action
}

type event struct {
	at  time.Duration
	seq uint64
	fn  func()
}

type eventHeap []*event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(*event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// Sim is the simulated cluster.
type Sim struct {
	tb    TB
	opt   Options
	Now   time.Duration
	rng   *rand.Rand
	nodes []*Node
	byNum map[clms.NodeNum]*Node
	q     eventHeap
	seq   uint64
	drop  map[[2]clms.NodeNum]float64
	cut   map[[2]clms.NodeNum]bool
	dup   float64       // probability that a message is delivered twice
	late  time.Duration // the copy comes up to this much later
	buf   []byte
	Check *Checker
	// Sent counts messages sent, by type; SentOn by link and type. Both
	// count what a node handed the network, lost or not.
	Sent   map[clms.MsgType]int
	SentOn map[Link]int
	// UnsafeSendBeforeSave sends every message before the write, the
	// acknowledgements and votes too: a broken runner, for tests that show
	// the checker catches it.
	UnsafeSendBeforeSave bool
}

// New builds a simulation; nodes do not run until Start.
func New(tb TB, opt Options) *Sim {
	if opt.Step == 0 {
		opt.Step = time.Millisecond
	}
	if opt.Delay == 0 {
		opt.Delay = time.Millisecond
	}
	if opt.Jitter == 0 {
		opt.Jitter = time.Millisecond
	}
	if opt.CallbackTime == 0 {
		opt.CallbackTime = 2 * time.Millisecond
	}
	if opt.Timing.Tick == 0 {
		opt.Timing = clms.LANFastTiming()
	}
	if opt.KeyTime == 0 {
		opt.KeyTime = 2 * time.Millisecond
	}
	s := &Sim{tb: tb, opt: opt, rng: rand.New(rand.NewPCG(opt.Seed, opt.Seed^0x9e3779b97f4a7c15)),
		byNum: map[clms.NodeNum]*Node{}, drop: map[[2]clms.NodeNum]float64{}, cut: map[[2]clms.NodeNum]bool{},
		Sent: map[clms.MsgType]int{}, SentOn: map[Link]int{}}
	s.Check = newChecker(s)
	for _, nc := range opt.Nodes {
		n := &Node{Num: nc.Num, Eligible: nc.MasterEligible, Rate: 1, connected: map[clms.NodeNum]bool{}}
		s.nodes = append(s.nodes, n)
		s.byNum[nc.Num] = n
	}
	return s
}

// Node returns node n.
func (s *Sim) Node(n clms.NodeNum) *Node { return s.byNum[n] }

// Nodes returns every node in number order.
func (s *Sim) Nodes() []*Node { return s.nodes }

// Timing is the simulation's timing profile.
func (s *Sim) Timing() clms.Timing { return s.opt.Timing }

func (s *Sim) after(d time.Duration, fn func()) {
	s.seq++
	heap.Push(&s.q, &event{at: s.Now + d, seq: s.seq, fn: fn})
}

// Start starts node n's process with a new incarnation. A master-eligible
// node keeps its disk across restarts; the others start empty.
func (s *Sim) Start(num clms.NodeNum) {
	s.tb.Helper()
	n := s.byNum[num]
	n.Inc++
	var storage *raft.MemoryStorage
	if n.Eligible {
		storage = clms.BootstrapStorage(s.opt.Nodes)
		if n.diskSnap != nil {
			if err := storage.ApplySnapshot(n.diskSnap); err != nil {
				s.tb.Fatalf("node %d: restore snapshot: %v", num, err)
			}
		}
		if n.disk != nil {
			fi, _ := n.disk.FirstIndex()
			li, _ := n.disk.LastIndex()
			if li >= fi {
				ents, err := n.disk.Entries(fi, li+1, 1<<62)
				if err != nil {
					s.tb.Fatalf("node %d: read disk: %v", num, err)
				}
				if err := storage.Append(ents); err != nil {
					s.tb.Fatalf("node %d: restore disk: %v", num, err)
				}
			}
			if n.diskHS != nil {
				_ = storage.SetHardState(n.diskHS)
			}
		}
		if n.disk == nil {
			n.disk = clms.BootstrapStorage(s.opt.Nodes)
		}
	}
	now := s.Now
	timing := s.opt.Timing
	if n.Timing != nil {
		timing = *n.Timing
	}
	core, err := clms.NewCore(clms.Config{
		Self: num, Nodes: s.opt.Nodes, Timing: timing, Incarnation: n.Inc,
		Info: clms.NodeInfo{CPUsTotal: 4, CPUsOnline: 4, MemoryBytes: 1 << 30, Capabilities: []string{fmt.Sprintf("n%d", num)},
			KeyServices: s.opt.KeyCapable[num]},
		Keys:       s.opt.Keys,
		Storage:    storage,
		Compaction: s.opt.Compaction,
		WallClock:  func() time.Time { return time.Unix(1_800_000_000, 0).Add(now) },
	})
	if err != nil {
		s.tb.Fatalf("node %d: %v", num, err)
	}
	n.Core, n.Started, n.Dead, n.Paused, n.saving, n.stalled = core, true, false, false, nil, false
	n.clock, n.ticksDone, n.lateTo = 0, 0, 0
	n.Records, n.transitions, n.JoinErr = nil, 0, nil
	n.connected, n.inbox = map[clms.NodeNum]bool{}, nil
	n.KeyGot, n.keyGen = map[string]map[clms.NodeNum][]byte{}, map[string]int{}
	s.drain(n)
}

// SetCompaction sets every core's Compaction from the next Start on.
func (s *Sim) SetCompaction(c clms.Compaction) { s.opt.Compaction = c }

// StartAll starts every node.
func (s *Sim) StartAll() {
	for _, n := range s.nodes {
		s.Start(n.Num)
	}
}

// Crash kills node n's process: peers with a connection to it see the
// connection close, and whoever contacts it later is refused (crash proof).
func (s *Sim) Crash(num clms.NodeNum) {
	n := s.byNum[num]
	if n.Dead || !n.Started {
		return
	}
	n.Dead, n.Paused, n.inbox = true, false, nil // what its sockets held is lost
	for _, peer := range slices.Sorted(maps.Keys(n.connected)) {
		p := s.byNum[peer]
		pinc := p.Inc
		s.after(s.delay(num, peer), func() {
			s.input(p, pinc, func() { p.Core.PeerConnectionLost(num) })
		})
	}
}

// Restart crashes node n if needed and starts it again as a new incarnation.
func (s *Sim) Restart(num clms.NodeNum) {
	s.Crash(num)
	s.Start(num)
}

// LoseDisk throws away node n's persisted raft state, as a replaced or
// reformatted disk would: its next Start begins from the bootstrap state. No
// runner may do this to a node that was ever a voter (docs/CLMS.md, "What the
// runner must do"); tests use it to show what goes wrong if one does.
func (s *Sim) LoseDisk(num clms.NodeNum) {
	n := s.byNum[num]
	n.disk, n.diskHS, n.diskSnap = nil, nil, nil
}

// Pause stops node n's processing (SIGSTOP). Its monotonic clock keeps
// running, as CLOCK_MONOTONIC does, so on Resume it first catches up on its
// ticks; messages to it wait in its socket buffers.
func (s *Sim) Pause(num clms.NodeNum) { s.byNum[num].Paused = true }

// Resume continues a paused node.
func (s *Sim) Resume(num clms.NodeNum) {
	n := s.byNum[num]
	n.stalled = n.stalled || n.Paused
	n.Paused = false
}

// Drop drops messages from -> to with probability rate (0 heals).
func (s *Sim) Drop(from, to clms.NodeNum, rate float64) { s.drop[[2]clms.NodeNum{from, to}] = rate }

// Partition cuts every link between nodes of different groups. Nodes not
// listed form one more group.
func (s *Sim) Partition(groups ...[]clms.NodeNum) {
	group := map[clms.NodeNum]int{}
	for i, g := range groups {
		for _, n := range g {
			group[n] = i + 1
		}
	}
	s.cut = map[[2]clms.NodeNum]bool{}
	for _, a := range s.nodes {
		for _, b := range s.nodes {
			if group[a.Num] != group[b.Num] {
				s.cut[[2]clms.NodeNum{a.Num, b.Num}] = true
			}
		}
	}
}

// Duplicate delivers each message a second time with probability rate, the
// copy up to late after the original: a retransmission, or a message that
// took another path and arrives after newer ones (0 stops it). The copy is
// from the same incarnation of the sender, even if that process died since.
func (s *Sim) Duplicate(rate float64, late time.Duration) { s.dup, s.late = rate, late }

// Heal removes every partition and drop rate.
func (s *Sim) Heal() {
	s.cut = map[[2]clms.NodeNum]bool{}
	s.drop = map[[2]clms.NodeNum]float64{}
}

func (s *Sim) live(n *Node, inc uint64) bool { return n.Started && !n.Dead && n.Inc == inc }

func (s *Sim) delay(a, b clms.NodeNum) time.Duration {
	d := s.opt.Delay + s.byNum[a].ExtraDelay + s.byNum[b].ExtraDelay
	if s.opt.Jitter > 0 {
		d += time.Duration(s.rng.Int64N(int64(s.opt.Jitter) + 1))
	}
	return d
}

// input runs fn on the core of n's incarnation inc and hands out what
// follows; while n writes to its disk it waits, as the runner's goroutine
// is busy in Store.Save.
func (s *Sim) input(n *Node, inc uint64, fn func()) {
	if !s.live(n, inc) {
		return
	}
	if n.saving != nil {
		s.after(s.opt.Step, func() { s.input(n, inc, fn) })
		return
	}
	s.catchUp(n)
	fn()
	s.drain(n)
}

// drain hands out every Ready of n in the runner's order (clms.Ready): send
// what may go before the write, persist, send the rest, act, advance. With
// SaveTime the write takes that long, and the rest waits for it.
func (s *Sim) drain(n *Node) {
	for n.saving == nil && n.Core.HasReady() {
		rd := n.Core.Ready()
		var held []clms.Message
		for _, m := range rd.Messages {
			if s.UnsafeSendBeforeSave || clms.SendBeforeSave(&m) {
				s.send(n, m)
			} else {
				held = append(held, m)
			}
		}
		if n.Eligible && s.opt.SaveTime > 0 && rd.MustSync {
			n.saving = &rd
			s.saveDone(n, n.Inc, s.opt.SaveTime, held)
			return
		}
		s.saved(n, &rd, held)
	}
}

// saveDone ends n's write after d, unless the process died (the write is
// lost with it). A process stopped (SIGSTOP) meanwhile finishes when it is
// resumed.
func (s *Sim) saveDone(n *Node, inc uint64, d time.Duration, held []clms.Message) {
	s.after(d, func() {
		switch {
		case !s.live(n, inc):
		case n.Paused:
			s.saveDone(n, inc, s.opt.Step, held)
		default:
			rd := n.saving
			n.saving = nil
			s.saved(n, rd, held)
			s.catchUp(n) // ticks that fell due during the write come first
			s.drain(n)
			s.serve(n)
		}
	})
}

// saved persists rd's raft state to n's disk, then sends the held messages,
// hands out the records and actions and advances the core.
func (s *Sim) saved(n *Node, rd *clms.Ready, held []clms.Message) {
	if n.Eligible {
		if rd.Snapshot != nil {
			_ = n.disk.ApplySnapshot(rd.Snapshot)
			n.diskSnap = rd.Snapshot
		}
		if len(rd.Entries) > 0 {
			if err := n.disk.Append(rd.Entries); err != nil {
				s.tb.Fatalf("node %d: persist: %v", n.Num, err)
			}
		}
		if rd.HardState != nil && !raft.IsEmptyHardState(rd.HardState) {
			n.diskHS = rd.HardState
			s.Check.committed(n)
		}
	}
	for _, m := range held {
		s.send(n, m)
	}
	if rd.Restored != nil {
		s.Check.restored(n, rd.Restored)
	}
	for _, r := range rd.Applied {
		n.Records = append(n.Records, r)
		s.Check.record(n, r)
	}
	for _, a := range rd.Actions {
		s.action(n, a)
	}
	s.compact(n, rd.Compact)
	n.Core.Advance()
}

// compact stores a snapshot the core took (Ready.Compact) on n's disk as
// Store.Compact does: the snapshot, and no entry it covers.
func (s *Sim) compact(n *Node, snap *raftpb.Snapshot) {
	if snap == nil {
		return
	}
	n.diskSnap = snap
	if err := n.disk.Compact(snap.GetMetadata().GetIndex()); err != nil && !errors.Is(err, raft.ErrCompacted) {
		s.tb.Fatalf("node %d: compact disk: %v", n.Num, err)
	}
	n.Compactions++
}

func (s *Sim) action(n *Node, a clms.Action) {
	n.Actions = append(n.Actions, TimedAction{At: s.Now, Inc: n.Inc, Action: a})
	if s.opt.Verbose {
		s.tb.Logf("%8v node %d inc %d: %v", s.Now, n.Num, n.Inc, a)
	}
	switch a.Kind {
	case clms.ActRunNodeUp, clms.ActRunNodeDown:
		if n.HangCallbacks {
			return
		}
		inc, id := n.Inc, a.Transition
		s.after(s.opt.CallbackTime, func() {
			s.input(n, inc, func() { n.Core.CallbacksDone(id, nil) })
		})
	case clms.ActJoinFailed:
		n.JoinErr = a.Err
	default:
		s.keyAction(n, a)
	}
}

// Link names messages of one type from one node to another (Sim.SentOn).
type Link struct {
	From, To clms.NodeNum
	Type     clms.MsgType
}

func (s *Sim) send(from *Node, m clms.Message) {
	s.Sent[m.Type]++
	s.SentOn[Link{from.Num, m.To, m.Type}]++
	to := s.byNum[m.To]
	if to == nil || m.To == from.Num {
		s.tb.Fatalf("node %d sent to %d", from.Num, m.To)
	}
	s.Check.promise(from, m)
	key := [2]clms.NodeNum{from.Num, m.To}
	if s.cut[key] || (s.drop[key] > 0 && s.rng.Float64() < s.drop[key]) {
		return
	}
	// Every message goes through the codec, so every scenario tests it.
	var err error
	s.buf, err = m.AppendEncode(s.buf[:0])
	if err != nil {
		s.tb.Fatalf("encode %v: %v", m, err)
	}
	from.SentMsgs++
	from.SentBytes += len(s.buf)
	dm, err := clms.DecodeMessage(s.buf)
	if err != nil {
		s.tb.Fatalf("decode %v: %v", m, err)
	}
	finc := from.Inc
	s.after(s.delay(from.Num, m.To), func() { s.deliver(from, finc, to, dm) })
	if s.dup > 0 && s.rng.Float64() < s.dup {
		cp, err := clms.DecodeMessage(s.buf)
		if err != nil {
			s.tb.Fatalf("decode %v: %v", m, err)
		}
		late := time.Duration(s.rng.Int64N(int64(s.late) + 1))
		s.after(s.delay(from.Num, m.To)+late, func() { s.deliver(from, finc, to, cp) })
	}
}

func (s *Sim) deliver(from *Node, finc uint64, to *Node, m clms.Message) {
	if !to.Started {
		return
	}
	if to.Dead {
		// Connection refused: the sender learns the process is gone.
		tinc := to.Inc
		s.after(s.delay(to.Num, from.Num), func() {
			s.input(from, finc, func() { from.Core.PeerCrashProof(to.Num, tinc) })
		})
		return
	}
	if to.Paused || to.saving != nil || len(to.inbox) > 0 || to.stalled {
		to.inbox = append(to.inbox, queued{from, finc, m}) // waits in the runner's queue
		s.serve(to)
		return
	}
	s.receive(from, finc, to, m)
	s.drain(to)
}

// serve hands n's core the messages that waited while it was busy, as the
// runner's loop does: urgent ones first and a batch before one Ready, or
// (OneQueue) one at a time in arrival order, a Ready each. It stops when a
// write makes the node busy again (saveDone serves the rest).
func (s *Sim) serve(n *Node) {
	for len(n.inbox) > 0 && n.saving == nil && !n.Paused && !n.Dead {
		s.catchUp(n)
		if n.saving != nil {
			return
		}
		batch := clms.StepBatch
		if s.opt.OneQueue {
			batch = 1
		}
		for k := 0; k < batch && len(n.inbox) > 0; k++ {
			i := 0
			if !s.opt.OneQueue {
				if j := slices.IndexFunc(n.inbox, func(q queued) bool { return clms.Urgent(&q.m) }); j >= 0 {
					i = j
				}
			}
			q := n.inbox[i]
			n.inbox = slices.Delete(n.inbox, i, i+1)
			s.receive(q.from, q.finc, n, q.m)
			if clms.BatchEnds(&q.m) {
				break
			}
		}
		s.drain(n)
	}
}

// receive steps m into to's core.
func (s *Sim) receive(from *Node, finc uint64, to *Node, m clms.Message) {
	to.connected[from.Num] = true
	if s.live(from, finc) {
		from.connected[to.Num] = true
	}
	if err := to.Core.Step(m); err != nil {
		s.tb.Fatalf("node %d step %v: %v", to.Num, m, err)
	}
}

// Step advances simulated time by one step: clocks and ticks first (a
// resumed node catches up before it reads a message), then due events, then
// the invariant check.
func (s *Sim) Step() {
	s.tb.Helper()
	s.Now += s.opt.Step
	for _, n := range s.nodes {
		if !n.Started || n.Dead {
			continue
		}
		n.clock += n.Rate * float64(s.opt.Step)
		s.catchUp(n)
		s.serve(n)
	}
	for len(s.q) > 0 && s.q[0].at <= s.Now {
		e := heap.Pop(&s.q).(*event)
		e.fn()
	}
	s.Check.check()
}

// catchUp delivers the ticks n's clock says are due, as the runner does
// before any other input; not while n is stopped or writing (then when it
// can take them again). A resumed node counts as stopped until it has
// caught up: its catch-up takes SaveTime for each write on the way, as the
// runner's does (a node stopped during a write first finishes that Ready,
// as the runner returns from Store.Save).
func (s *Sim) catchUp(n *Node) {
	tick := float64(s.opt.Timing.Tick)
	if due := int64(n.clock / tick); !s.opt.Unaware && !n.Paused && n.saving == nil && due-1 > max(n.ticksDone, n.lateTo) {
		// Ticks delivered at once, as the runner tells the core (each
		// stalled tick once, though a write may cut the catch-up short).
		n.Core.Late(int(due - 1 - max(n.ticksDone, n.lateTo)))
		n.lateTo = due - 1
	}
	for !n.Paused && n.saving == nil && n.ticksDone < int64(n.clock/tick) {
		n.ticksDone++
		n.Core.Tick()
		s.drain(n)
	}
	if n.saving == nil {
		n.stalled = false
	}
}

// Run advances simulated time by d.
func (s *Sim) Run(d time.Duration) {
	s.tb.Helper()
	for end := s.Now + d; s.Now < end; {
		s.Step()
	}
}

// RunUntil steps until cond holds and returns how long it took; it fails
// the test if cond does not hold within max.
func (s *Sim) RunUntil(max time.Duration, cond func() bool) time.Duration {
	s.tb.Helper()
	start := s.Now
	for !cond() {
		if s.Now-start >= max {
			s.tb.Fatalf("at %v: condition not reached within %v\n%s", s.Now, max, s.Dump())
		}
		s.Step()
	}
	return s.Now - start
}

// Up reports whether node num (its current incarnation) is UP in the view
// of every live node that is a member.
func (s *Sim) Up(num clms.NodeNum) bool {
	n := s.byNum[num]
	for _, v := range s.viewers() {
		m, _ := v.Core.State().Member(num)
		if m.State != clms.StateUp || m.Incarnation != n.Inc {
			return false
		}
	}
	return len(s.viewers()) > 0
}

// AllUp reports whether every started, live node is UP everywhere.
func (s *Sim) AllUp() bool {
	for _, n := range s.nodes {
		if n.Started && !n.Dead && !s.Up(n.Num) {
			return false
		}
	}
	return true
}

// viewers are the live, unpaused processes that are members.
func (s *Sim) viewers() []*Node {
	var v []*Node
	for _, n := range s.nodes {
		if n.Started && !n.Dead && !n.Paused && n.Core.Acting() {
			v = append(v, n)
		}
	}
	return v
}

// DownEverywhere reports whether incarnation inc of node num is past UP
// (GOINGDOWN or later) in the view of every other live member.
func (s *Sim) DownEverywhere(num clms.NodeNum, inc uint64) bool {
	vs := 0
	for _, v := range s.viewers() {
		if v.Num == num {
			continue
		}
		vs++
		m, _ := v.Core.State().Member(num)
		gone := m.Incarnation > inc || (m.Incarnation == inc && !m.State.IsMember() && m.State != clms.StateNeverUp)
		if !gone {
			return false
		}
	}
	return vs > 0
}

// Master returns the node that acts as master (0 if none).
func (s *Sim) Master() clms.NodeNum {
	for _, n := range s.nodes {
		if n.Started && !n.Dead && !n.Paused && n.Core.IsMaster() {
			return n.Num
		}
	}
	return 0
}

// Inject delivers m to node m.To now, as if it came off the network (from
// the sender's current incarnation), and hands out what follows.
func (s *Sim) Inject(m clms.Message) {
	s.tb.Helper()
	from, to := s.byNum[m.From], s.byNum[m.To]
	m.FromInc = from.Inc
	s.deliver(from, from.Inc, to, m)
}

// RaftPending reports whether a master-eligible node has log entries it
// persisted but does not know to be committed.
func (n *Node) RaftPending() bool {
	if n.disk == nil || n.diskHS == nil {
		return false
	}
	li, _ := n.disk.LastIndex()
	return li > n.diskHS.GetCommit()
}

// Saving returns the entries n is writing to its disk now (Options.SaveTime)
// and whether a write is under way.
func (n *Node) Saving() ([]*raftpb.Entry, bool) {
	if n.saving == nil {
		return nil, false
	}
	return n.saving.Entries, true
}

// OnDisk reports whether n's disk holds the raft entry at index with term
// (compacted into its snapshot counts).
func (n *Node) OnDisk(index, term uint64) bool {
	if n.disk == nil {
		return false
	}
	t, err := n.disk.Term(index)
	return errors.Is(err, raft.ErrCompacted) || (err == nil && t == term)
}

// Fenced reports whether node num's current incarnation fenced itself.
func (n *Node) Fenced() bool {
	f, _ := n.Core.Fenced()
	return f
}

// Has reports whether n's current incarnation was handed an action of kind k
// (about node about, if nonzero).
func (n *Node) Has(k clms.ActionKind, about clms.NodeNum) bool {
	return slices.ContainsFunc(n.Actions, func(a TimedAction) bool {
		return a.Inc == n.Inc && a.Kind == k && (about == 0 || a.Node == about)
	})
}

// Dump describes every node for a failure message.
func (s *Sim) Dump() string {
	out := ""
	for _, n := range s.nodes {
		if !n.Started {
			continue
		}
		st := "live"
		switch {
		case n.Dead:
			st = "dead"
		case n.Paused:
			st = "paused"
		case n.saving != nil:
			st = "writing"
		}
		f, why := n.Core.Fenced()
		rs, _ := n.Core.RaftStatus()
		cs := n.Core.Stats()
		out += fmt.Sprintf("node %d inc %d %s acting=%v master=%v fenced=%v(%s) raft=%v/%d lead=%d applied=%d snapshot=%d log=%d records=%d view:", n.Num, n.Inc, st,
			n.Core.Acting(), n.Core.IsMaster(), f, why, rs.RaftState, rs.GetTerm(), rs.Lead, rs.Applied, cs.SnapshotIndex, cs.RaftLogEntries, n.Core.State().LastSeq())
		for _, m := range n.Core.State().Members() {
			out += fmt.Sprintf(" %d:%s/%d", m.Node, m.State, m.Incarnation)
		}
		out += "\n"
	}
	return out
}

// PullData returns what node num's PullData returns for a key service in
// an epoch: tests assert the data a new owner assembled.
func PullData(num clms.NodeNum, inc, epoch uint64) []byte {
	return fmt.Appendf(nil, "n%d.i%d.e%d", num, inc, epoch)
}

// HandOffData is what node num's HandOff returns.
func HandOffData(num clms.NodeNum, epoch uint64) []byte {
	return fmt.Appendf(nil, "handoff.n%d.e%d", num, epoch)
}

// errHandOff is the error of a HandOff with Node.FailHandOff set.
var errHandOff = errors.New("clmstest: HandOff failed (FailHandOff)")

// ErrPull is the error of a PullData with Node.FailPull set.
var ErrPull = errors.New("clmstest: PullData failed (FailPull)")

// keyAction is the simulated runner's part for key services: each routine
// takes KeyTime and is cancelled when ActKeyOwner turns false (the result
// of a cancelled routine is not reported, as docs/CLMS.md asks).
func (s *Sim) keyAction(n *Node, a clms.Action) {
	inc, name, ep := n.Inc, a.KeyService, a.Epoch
	gen := n.keyGen[name]
	after := func(d time.Duration, fn func()) {
		s.after(d, func() {
			s.input(n, inc, func() {
				if n.keyGen[name] == gen {
					fn()
				}
			})
		})
	}
	later := func(fn func()) { after(s.opt.KeyTime, fn) }
	switch a.Kind {
	case clms.ActKeyOwner:
		if !a.Valid {
			n.keyGen[name]++
		}
	case clms.ActKeyFailover:
		d := s.opt.KeyTime
		if n.FailoverTime > 0 {
			d = n.FailoverTime
		}
		after(d, func() { n.Core.KeyFailoverDone(name, ep, nil) })
	case clms.ActKeyPullData:
		if n.HangPull {
			return
		}
		owner := a.Node
		// PullData runs on a member for another owner: it is not gated on
		// this node's ownership.
		fail := n.FailPull
		s.after(s.opt.KeyTime, func() {
			s.input(n, inc, func() {
				if fail {
					n.Core.KeyPullDone(name, ep, owner, nil, ErrPull)
					return
				}
				n.Core.KeyPullDone(name, ep, owner, PullData(n.Num, inc, ep), nil)
			})
		})
	case clms.ActKeyFailoverData:
		got := a.Pulled
		later(func() {
			n.KeyGot[name] = got
			n.Core.KeyFailoverDataDone(name, ep, nil)
		})
	case clms.ActKeyHandOff:
		if n.HangHandOff {
			return
		}
		if n.FailHandOff {
			later(func() { n.Core.KeyHandOffDone(name, ep, nil, errHandOff) })
			return
		}
		later(func() { n.Core.KeyHandOffDone(name, ep, HandOffData(n.Num, ep), nil) })
	}
}

// DiskBytes is what node n's runner persisted of its raft log: the
// snapshot's bytes, the entries' bytes (protobuf) and their count.
func (n *Node) DiskBytes() (snapshot, entries, count int) {
	if n.diskSnap != nil {
		snapshot = proto.Size(n.diskSnap)
	}
	if n.disk == nil {
		return snapshot, 0, 0
	}
	fi, _ := n.disk.FirstIndex()
	li, _ := n.disk.LastIndex()
	if li < fi {
		return snapshot, 0, 0
	}
	ents, _ := n.disk.Entries(fi, li+1, 1<<62)
	for _, e := range ents {
		entries += proto.Size(e)
	}
	return snapshot, entries, len(ents)
}
