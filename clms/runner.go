package clms

import (
	"context"
	"errors"
	"fmt"
	"go.etcd.io/raft/v3/raftpb"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"

	"github.com/clusterinfra/ci/engine"
)

// Errors of the runner.
var (
	ErrFenced     = errors.New("clms: this node fenced itself")
	ErrStopped    = errors.New("clms: runner stopped")
	ErrNoStore    = errors.New("clms: a master-eligible node needs a store")
	ErrNotStarted = errors.New("clms: runner not started")
	// ErrNoQuorum: a planned shutdown that cannot be recorded, because
	// fewer than a majority of the master-eligible nodes may vote in this
	// node's view and its lease ran out, so no master can commit its
	// SHUTDOWN (Core.NoQuorum). It is what
	// the last nodes of a cluster stopped as a whole see; the node may
	// still stop (it is not fenced), and when the cluster starts again its
	// next incarnation replaces this one as after a crash.
	ErrNoQuorum = errors.New("clms: no majority of master-eligible nodes is left to commit the SHUTDOWN")
)

// RunnerConfig builds a Runner.
type RunnerConfig struct {
	// Engine is this node's ICS endpoint. Its Config.Incarnation must be
	// Incarnation, so that peers refuse exactly the process CLMS declares
	// down; NewRunner checks.
	Engine *engine.Node
	Nodes  []NodeConfig // the whole node table
	Timing Timing
	// Incarnation of this run: Store.Incarnation(), or NewIncarnation() on
	// a node without a store.
	Incarnation uint64
	Info        NodeInfo
	// Store keeps the raft log of a master-eligible node (required there)
	// and is closed by Runner.Close. Optional on other nodes.
	Store   *Store
	Fencing FencingPolicy // "" is DefaultFencing
	// Subsystems whose callbacks run on NODEUP and NODEDOWN; nil: none.
	Subsystems *Subsystems
	// KeyServices is this node's key-service registry; nil: none registered
	// here (the node still applies the cluster's key-service records). Every
	// node must register the same services, or list them in cluster.toml:
	// the core needs the same list everywhere (KeyServices.Specs). NewRunner
	// takes the list: register before it (later registrations fail).
	KeyServices *KeyServices
	// KeyServiceEntries is cluster.toml's [[key_services]]; with the
	// registry it makes Config.Keys.Services. Info.KeyServices says which
	// of them this node may run (services/node sets it from the node table).
	KeyServiceEntries []KeyServiceEntry
	// KeyServicePanic is cluster.toml's key_service_panic; "" is PanicHalt.
	KeyServicePanic PanicPolicy
	// OnFatal is called once, on its own goroutine, when this incarnation
	// can no longer be a member: fenced under FenceHalt (the error wraps
	// ErrFenced; the owner should exit with a distinct code), or the join
	// failed (wraps ErrJoinTimeout). Under FenceDebug a fence is not fatal:
	// the node stays up, isolated, and Status says so. Nil: only logged.
	OnFatal func(error)
	// OnApplied receives the committed records in order, every one once,
	// on the runner's goroutine: the cluster API's view is fed from it. It
	// must return quickly and must not call the Runner. The slice is the
	// callee's.
	OnApplied func([]Record)
	// OnRestored is called, on the runner's goroutine, when the core's
	// State was replaced by a state image (Ready.Restored): what OnApplied
	// built must be rebuilt from it, and OnApplied continues after it. Nil:
	// ignored (then OnApplied's consumer sees a gap in the records).
	OnRestored func(*Restored)
	// Compaction bounds the raft log and the history the core keeps
	// (docs/CLMS.md, "Log compaction"); zero fields take the defaults.
	Compaction Compaction
	Logger     *slog.Logger // nil: the engine's; the runner adds node=N
}

// Runner runs a Core for real: one goroutine serialises every call to it
// (ticks from a real clock, messages from the engine, evidence of peers'
// deaths, subsystem reports), persists the raft state, sends the core's
// messages over the engine and carries out its actions.
type Runner struct {
	cfg  RunnerConfig
	core *Core
	log  *slog.Logger
	// traced: the logger takes debug lines, so the runner logs its steps
	// (runner_trace.go).
	traced bool
	met    *runnerMetrics

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the runner

	inbox    chan Message // bulk messages
	urgentIn chan Message // urgent ones (Urgent): taken first
	evidence chan evidence
	cmds     chan func()
	cbQueue  chan Action // subsystem callbacks to run, in order
	cbDone   chan cbResult
	keyDone  chan keyResult // key-service routines' results
	guard    EpochGuard     // fed with every applied record

	outboxes map[NodeNum]*outbox // runner goroutine only
	lastInc  map[NodeNum]uint64  // highest incarnation heard from each peer; runner goroutine only
	fenced   bool                // runner goroutine only

	probeMu   sync.Mutex
	probing   map[NodeNum]bool      // guarded by probeMu
	lastProbe map[NodeNum]time.Time // guarded by probeMu

	infoWaits []infoWait        // SetNodeInfo calls waiting for their record; runner goroutine only
	keyWaits  []*keyWait        // MoveKeyService calls waiting for the outcome; runner goroutine only
	keyActing map[string]uint64 // services ActKeyOwner made serve, with the epoch; runner goroutine only

	status   atomic.Pointer[RunnerStatus]
	viewMu   sync.Mutex
	viewCh   chan struct{} // closed and replaced when the published view changes; guarded by viewMu
	joined   chan struct{}
	left     chan struct{}
	done     chan struct{}
	started  atomic.Bool
	closeMu  sync.Mutex
	closed   bool
	fatalOne sync.Once
	stopOnce sync.Once
}

// infoWait is a SetNodeInfo waiting for its record to be applied here.
type infoWait struct {
	node NodeNum
	info NodeInfo
	done chan struct{}
}

type cbResult struct {
	t      TransitionID
	failed []string
}

// RunnerStatus is a snapshot of the runner's view, for an admin endpoint.
type RunnerStatus struct {
	Self        NodeNum
	Incarnation uint64
	Master      NodeNum // who this node believes is the master; 0 unknown
	IsMaster    bool
	Joined      bool // this incarnation's COMINGUP is committed
	Left        bool // its planned SHUTDOWN is committed
	LeaseValid  bool // it may act as a member now
	// Formed: every critical key service has had a ready owner since this
	// incarnation joined (Core.Formed). Ready is LeaseValid && Formed:
	// the node's readiness (readyz).
	Formed      bool
	Ready       bool
	Fenced      bool
	FenceReason string
	Fencing     FencingPolicy
	RaftTerm    uint64
	RaftLeader  NodeNum
	// VotersAlive of Voters (the master-eligible nodes) may vote as far as
	// this node knows (Core.VotersAlive): members in its view, and newer
	// incarnations it heard from, not proven gone. At most half, once this
	// node's lease has run out too, means nothing can be committed until
	// some come back (Core.NoQuorum; Shutdown returns ErrNoQuorum).
	Voters, VotersAlive int
	noQuorum            bool     // Core.NoQuorum
	Members             []Member // every node of the table, in node order
	Last                TransitionID
	Stats               Stats
	// View counts the changes of what an admin endpoint shows of this
	// node (viewChanged: the master, readiness, lease, fencing, the last
	// applied transition, the key services); 1 for the first snapshot.
	// WaitView waits for it to pass a value.
	View uint64
}

// NewRunner builds a runner for cfg; nothing runs until Start.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if cfg.Engine == nil {
		return nil, fmt.Errorf("%w: no engine", ErrConfig)
	}
	if cfg.Incarnation == 0 || cfg.Engine.Incarnation() != cfg.Incarnation {
		return nil, fmt.Errorf("%w: incarnation %d, the engine's is %d: they must be one", ErrConfig, cfg.Incarnation, cfg.Engine.Incarnation())
	}
	if comp := cfg.Compaction; comp.Validate() == nil {
		if max := comp.maxImageBytes(len(cfg.Nodes)); max > cfg.Engine.MaxPayload() {
			return nil, fmt.Errorf("%w: compaction.history_keep %d makes state snapshots of up to ~%d bytes, over the engine's MaxPayload %d: lower history_keep or raise MaxPayload",
				ErrConfig, comp.HistoryKeep, max, cfg.Engine.MaxPayload())
		}
	}
	if cfg.Fencing == "" {
		cfg.Fencing = DefaultFencing
	}
	if cfg.Fencing != FenceHalt && cfg.Fencing != FenceDebug {
		return nil, fmt.Errorf("%w: fencing %q", ErrConfig, cfg.Fencing)
	}
	if cfg.Subsystems == nil {
		cfg.Subsystems = &Subsystems{}
	}
	if cfg.KeyServices == nil {
		cfg.KeyServices = &KeyServices{}
	}
	self := cfg.Engine.Num()
	ccfg := Config{Self: self, Nodes: cfg.Nodes, Timing: cfg.Timing, Incarnation: cfg.Incarnation, Info: cfg.Info,
		WallClock: time.Now, Compaction: cfg.Compaction,
		Keys: KeyConfig{Services: cfg.KeyServices.build(cfg.KeyServiceEntries), Panic: cfg.KeyServicePanic}}
	for _, n := range cfg.Nodes {
		if n.Num == self && n.MasterEligible {
			if cfg.Store == nil {
				return nil, fmt.Errorf("%w: node %d", ErrNoStore, self)
			}
			st, err := cfg.Store.Load(cfg.Nodes)
			if err != nil {
				return nil, err
			}
			ccfg.Storage = st
		}
	}
	log := cfg.Engine.Logger() // says which node
	if cfg.Logger != nil {
		log = cfg.Logger.With("node", self)
	}
	log = log.With("subsystem", "clms")
	if cfg.Store != nil && cfg.Store.Torn() > 0 {
		// A crash in the middle of a write; nothing it held was reported
		// saved, so the node goes on, but an operator may want to know.
		log.Warn("clms: the store's WAL ended in a torn record, which was cut off", "bytes", cfg.Store.Torn())
	}
	ccfg.Logger = raftLogger{log}
	core, err := NewCore(ccfg)
	if err != nil {
		return nil, err
	}
	r := &Runner{
		cfg: cfg, core: core, log: log, traced: tracing(log),
		inbox:     make(chan Message, 4096), // a burst from every node of a large cluster
		urgentIn:  make(chan Message, 1024), // an imalive from every node of the largest cluster, four times
		evidence:  make(chan evidence, 256),
		cmds:      make(chan func()),
		cbQueue:   make(chan Action, 1024), // transitions waiting for callbacks; more means a wedged subsystem
		cbDone:    make(chan cbResult, 16),
		keyDone:   make(chan keyResult, 16),
		keyActing: map[string]uint64{},
		outboxes:  map[NodeNum]*outbox{},
		lastInc:   map[NodeNum]uint64{},
		probing:   map[NodeNum]bool{},
		lastProbe: map[NodeNum]time.Time{},
		viewCh:    make(chan struct{}),
		joined:    make(chan struct{}),
		left:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.publishStatus(true)
	return r, nil
}

// Start registers the CLMS service on the engine, watches it for lost
// peers and starts the runner's goroutines. The engine may be started
// before or after.
func (r *Runner) Start() error {
	if !r.started.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: already started", ErrConfig)
	}
	err := r.cfg.Engine.Register(engine.Service{ID: ServiceID, Name: ServiceName, Inline: true,
		Procs: []engine.Handler{procMessage: r.handleMessage}})
	if err != nil {
		return err
	}
	r.met = newRunnerMetrics(r)
	r.cfg.Engine.OnNodeDown(func(n NodeNum, _ error) {
		if r.ctx.Err() == nil {
			r.post(evidence{node: n, lost: true})
		}
	})
	r.wg.Add(2)
	go r.routineCore()
	go r.routineCallbacks()
	return nil
}

// Joined is closed when this incarnation's COMINGUP is committed.
func (r *Runner) Joined() <-chan struct{} { return r.joined }

// Done is closed when the runner has stopped (Close).
func (r *Runner) Done() <-chan struct{} { return r.done }

// Status returns the latest snapshot; safe from any goroutine.
func (r *Runner) Status() RunnerStatus {
	s := *r.status.Load()
	s.Members = slices.Clone(s.Members)
	return s
}

// Subsystems is the registry the runner runs callbacks from.
func (r *Runner) Subsystems() *Subsystems { return r.cfg.Subsystems }

// Shutdown is the planned leave: the master commits SHUTDOWN for this
// node and Shutdown returns once that is applied here, or with ctx's error.
// A node that is not a member returns at once. Call Close afterwards.
func (r *Runner) Shutdown(ctx context.Context) error {
	if !r.started.Load() {
		return ErrNotStarted
	}
	if err := r.do(ctx, r.core.Shutdown); err != nil {
		return err
	}
	// Waiting out ctx would be pointless once no majority is left: the
	// other voters left or are proven gone, and only their return could
	// commit it.
	poll := time.NewTicker(quorumPoll)
	defer poll.Stop()
	for {
		select {
		case <-r.left:
			return nil
		case <-r.done:
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		case <-poll.C:
			if s := r.Status(); !s.Left && s.noQuorum {
				return fmt.Errorf("%w: %d of %d master-eligible nodes are members not proven gone", ErrNoQuorum, s.VotersAlive, s.Voters)
			}
		}
	}
}

// quorumPoll is how often a waiting Shutdown looks at the published status
// for a lost majority: an atomic load, so cheap, and a small delay beside
// the seconds a whole-cluster stop would otherwise wait.
const quorumPoll = 20 * time.Millisecond

// SetNodeInfo commits node n's new info through the master (CI's
// clusternode_setinfo) and returns once the record is applied on this node,
// so every node sees it in the same place of the history; or ctx's error
// (the request is still retried by the core). Only a member may ask
// (ErrNotMember).
func (r *Runner) SetNodeInfo(ctx context.Context, n NodeNum, info NodeInfo) error {
	if !r.started.Load() {
		return ErrNotStarted
	}
	w := infoWait{node: n, info: info, done: make(chan struct{})}
	errc := make(chan error, 1)
	if err := r.do(ctx, func() {
		err := r.core.SetNodeInfo(n, info)
		if err == nil {
			r.infoWaits = append(r.infoWaits, w)
		}
		errc <- err
	}); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	select {
	case <-w.done:
		return nil
	case <-r.done:
		return ErrStopped
	case <-ctx.Done():
		_ = r.do(context.Background(), func() { r.dropInfoWait(w.done) }) // an error: stopped, nothing to drop
		return ctx.Err()
	}
}

// infoApplied wakes the SetNodeInfo calls whose record was applied.
func (r *Runner) infoApplied(recs []Record) {
	for _, rec := range recs {
		if rec.Kind != RecordNodeInfo {
			continue
		}
		r.infoWaits = slices.DeleteFunc(r.infoWaits, func(w infoWait) bool {
			if w.node == rec.Transition.Node && infoEqual(w.info, rec.Info) {
				close(w.done)
				return true
			}
			return false
		})
	}
}

func (r *Runner) dropInfoWait(done chan struct{}) {
	r.infoWaits = slices.DeleteFunc(r.infoWaits, func(w infoWait) bool { return w.done == done })
}

// do runs fn on the runner's goroutine.
func (r *Runner) do(ctx context.Context, fn func()) error {
	select {
	case r.cmds <- fn:
		return nil
	case <-r.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the runner without leaving (as a crash would, for the
// others), waits for its goroutines and closes the store. Subsystem
// callbacks still running are abandoned to their context.
func (r *Runner) Close() error {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.cancel()
	r.wg.Wait()
	r.stopServing()
	r.stopOnce.Do(func() { close(r.done) })
	if r.met != nil {
		r.met.unregister()
	}
	if r.cfg.Store != nil {
		return r.cfg.Store.Close()
	}
	return nil
}

// routineCore is the one goroutine that calls the core.
func (r *Runner) routineCore() {
	defer r.wg.Done()
	tick := r.cfg.Timing.Tick
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	start := time.Now() // monotonic: the core's clock is time since start, in whole ticks
	var ticks int64
	// catchUp delivers every tick that real time says is due, before any
	// other input: after a pause (SIGSTOP, a frozen VM) the core notices its
	// expired lease before it reads a message. It never runs ahead of real
	// time, so a lease is never judged on a clock faster than the real one.
	catchUp := func() {
		due := int64(time.Since(start) / tick)
		if behind := due - ticks; behind > 1 {
			r.met.lateTicks.Add(int(behind - 1))
			// As master, our stall is not the members' silence.
			r.core.Late(int(behind - 1))
		}
		for ticks < due {
			ticks++
			r.core.Tick()
			r.drain()
		}
	}
	r.drain() // a lone voter campaigned in NewCore
	for {
		// Urgent messages first, and never behind bulk ones: with a whole
		// cluster joining, thousands of joins and callback reports queue
		// up, each possibly followed by a synced write, and an imalive
		// waiting behind them is silence to the master.
		select {
		case <-r.ctx.Done():
			return
		case m := <-r.urgentIn:
			catchUp()
			r.stepBatch(m, catchUp)
			r.drain()
			continue
		default:
		}
		select {
		case <-r.ctx.Done():
			return
		case <-ticker.C:
			catchUp()
		case m := <-r.urgentIn:
			catchUp()
			r.stepBatch(m, catchUp)
		case m := <-r.inbox:
			catchUp()
			r.stepBatch(m, catchUp)
		case ev := <-r.evidence:
			catchUp()
			r.weigh(ev)
		case res := <-r.cbDone:
			catchUp()
			r.core.CallbacksDone(res.t, res.failed)
		case res := <-r.keyDone:
			if r.traced {
				r.log.Debug("clms: key-service routine done", "action", res.a.String(), "err", res.err)
			}
			catchUp()
			r.core.KeyReport(res.a, res.data, res.err)
		case fn := <-r.cmds:
			catchUp()
			fn()
		}
		r.drain()
	}
}

// stepBatch steps m and then the messages already queued, up to
// StepBatch, before the caller drains: the proposals of a whole batch of
// joins and callback reports share one Ready and so one synced write,
// instead of a write each. Urgent messages go first. Each is stepped after
// catchUp, as every input is. A raft message ends the batch, so raft still
// sees one network message per Ready (BatchEnds).
func (r *Runner) stepBatch(m Message, catchUp func()) {
	r.step(m)
	for k := 1; k < StepBatch && !BatchEnds(&m); k++ {
		select {
		case m = <-r.urgentIn:
		default:
			select {
			case m = <-r.urgentIn:
			case m = <-r.inbox:
			default:
				return
			}
		}
		catchUp()
		r.step(m)
	}
}

// BatchEnds reports whether m, once stepped, ends a batch of messages
// handed to the core before one Ready: a raft message does. Two raft
// messages in one Ready could make one write carry a vote (or entries) of
// a later term along with the answer to an earlier one; raft is built to
// cope, but the simulator's checker holds every answer to the disk that
// went out with it, and nothing is lost by keeping raft's rounds as they
// were.
func BatchEnds(m *Message) bool { return m.Type == MsgRaft }

// StepBatch bounds the messages stepped between two drains: enough to
// share a write among a burst of joins and callback reports, few enough
// that the first message's answer is not held long (stepping takes
// microseconds; the write after it milliseconds).
const StepBatch = 64

func (r *Runner) step(m Message) {
	r.traceMsg("step", &m)
	if m.FromInc > r.lastInc[m.From] {
		r.lastInc[m.From] = m.FromInc
	}
	if err := r.core.Step(m); err != nil {
		r.met.badMessages.Inc()
		r.log.Debug("clms: message refused", "msg", m.String(), "err", err)
	}
}

// weigh turns what the engine saw into evidence for the core. Only a
// refused connection or a newer incarnation is proof that a process is
// gone; a lost connection is only a reason to look.
func (r *Runner) weigh(ev evidence) {
	if r.traced {
		r.log.Debug("clms: evidence", "peer", ev.node, "lost", ev.lost, "refused", ev.refused, "probed", ev.probed, "refuses_us", ev.refusesUs)
	}
	n := ev.node
	known := r.lastInc[n]
	m, _ := r.core.State().Member(n)
	known = max(known, m.Incarnation)
	// Proof about a member is news worth a log line; about a node already
	// down it changes nothing (the core ignores it too).
	news := m.State.IsMember() && m.Incarnation == known
	switch {
	case ev.refusesUs:
		if !r.core.PeerRefusesUs(n) && r.core.Acting() {
			// Unauthenticated, and contradicted by our valid lease.
			r.met.refusalsIgnored.Inc()
			r.log.Warn("clms: a peer's address refused this incarnation as declared down while its lease is valid: ignored (forged, or a stale peer)", "peer", n)
		}
	case ev.lost:
		r.met.connLost.Inc()
		r.core.PeerConnectionLost(n)
		r.probe(n)
	case ev.refused && known != 0:
		if news {
			r.met.crashProofs.Inc()
			r.log.Info("clms: peer's address refused a connection: its process is gone", "peer", n, "incarnation", known)
		}
		r.core.PeerCrashProof(n, known)
	case ev.probed && known != 0 && ev.inc > known:
		if news {
			r.met.crashProofs.Inc()
			r.log.Info("clms: peer restarted", "peer", n, "incarnation", known, "new", ev.inc)
		}
		r.core.PeerCrashProof(n, known)
	}
}

// drain hands out every Ready of the core: send what may go before the
// write, persist, send the rest, apply, act, advance (the order Ready
// documents).
func (r *Runner) drain() {
	changed := false
	for r.core.HasReady() {
		rd := r.core.Ready()
		// The leader's appends go out before its own fsync, so that its
		// write and its followers' overlap (raft thesis 10.2.1): a raft
		// round costs one fsync on the critical path, not two. Safe because
		// the leader counts its own entries only from Advance, after Save
		// (SendBeforeSave); acknowledgements and votes wait for the write.
		var after []*Message
		for i := range rd.Messages {
			if m := &rd.Messages[i]; SendBeforeSave(m) {
				r.send(m)
			} else {
				after = append(after, m)
			}
		}
		saveStart := time.Now()
		if r.cfg.Store != nil {
			if err := r.cfg.Store.Save(rd.HardState, rd.Entries, rd.Snapshot, rd.MustSync); err != nil {
				// Without its log on disk a voter could vote twice after a
				// restart: it must not go on (and must not acknowledge).
				r.fatal(err)
				r.cancel()
				return
			}
		}
		for _, m := range after {
			r.send(m)
		}
		r.traceDrained(&rd, time.Since(saveStart))
		if rd.Restored != nil {
			changed = true
			r.restored(rd.Restored)
		}
		if len(rd.Applied) > 0 {
			changed = true
			r.refuseDown(rd.Applied)
			r.infoApplied(rd.Applied)
			r.guard.Observe(rd.Applied)
			r.keyApplied(rd.Applied)
			if r.cfg.OnApplied != nil {
				r.cfg.OnApplied(rd.Applied)
			}
		}
		for _, a := range rd.Actions {
			r.act(a)
		}
		r.compacted(rd.Compact)
		r.core.Advance()
	}
	r.publishStatus(changed)
}

// compacted stores the snapshot the core took and drops the stored entries
// it covers. A failure is logged, not fatal: the stored log stays whole,
// which Load still starts from.
func (r *Runner) compacted(snap *raftpb.Snapshot) {
	if snap == nil || r.cfg.Store == nil {
		return
	}
	if err := r.cfg.Store.Compact(snap); err != nil {
		r.log.Warn("clms: storing a snapshot of the log failed; the stored log stays whole", "index", snap.GetMetadata().GetIndex(), "err", err)
	}
}

// restored rebuilds what the runner built from applied records from a
// state image the core took instead of records: epochs seen, waits for
// info and key-service records, and OnApplied's view (OnRestored).
func (r *Runner) restored(st *Restored) {
	var recs []Record
	for _, k := range st.Keys {
		recs = append(recs, Record{Kind: RecordKeyService, Key: k})
	}
	for _, m := range st.Members {
		recs = append(recs, Record{Kind: RecordNodeInfo, Transition: Transition{Node: m.Node}, Info: m.Info})
	}
	r.infoApplied(recs)
	r.guard.Observe(recs)
	r.keyApplied(recs)
	if r.cfg.OnRestored != nil {
		r.cfg.OnRestored(st)
	}
}

// refuseDown refuses every incarnation that reached DOWN, whichever way:
// after a planned leave this is where it is refused (see ActPeerDown); after
// a failure it already was, and refusing again changes nothing.
func (r *Runner) refuseDown(recs []Record) {
	for _, rec := range recs {
		t := rec.Transition
		if rec.Kind == RecordTransition && t.To == StateDown && t.Node != r.core.self {
			r.cfg.Engine.NodeDownIncarnation(t.Node, t.Incarnation, fmt.Errorf("clms: incarnation %d is DOWN (transition %d)", t.Incarnation, t.ID))
		}
	}
}

func (r *Runner) act(a Action) {
	switch a.Kind {
	case ActRunNodeUp:
		if a.Node != r.core.self {
			// A new incarnation may be reached again (an older one stays refused).
			r.cfg.Engine.NodeUp(a.Node)
		}
		r.queueCallbacks(a)
	case ActRunNodeDown:
		r.queueCallbacks(a)
	case ActPeerDown:
		if t, ok := r.core.State().Transition(a.Transition); ok && t.To == StateShutdown {
			// A planned leave: the leaver still needs the commit of its
			// SHUTDOWN (a voter learns it from the raft log, others from
			// the master's push), so it is refused only once DOWN (refuseDown).
			r.log.Info("clms: node leaving", "peer", a.Node, "incarnation", a.Inc, "transition", a.Transition)
			return
		}
		r.log.Warn("clms: NODEDOWN", "peer", a.Node, "incarnation", a.Inc, "transition", a.Transition)
		r.cfg.Engine.NodeDownIncarnation(a.Node, a.Inc, fmt.Errorf("clms: incarnation %d declared down (transition %d)", a.Inc, a.Transition))
	case ActFence:
		r.fenced = true
		r.met.fences.Inc()
		if r.cfg.Fencing == FenceDebug {
			r.log.Error("clms: FENCED: this node is no longer a member and stays up isolated (fencing = debug); restart it to rejoin as a new incarnation",
				"reason", a.Reason, "incarnation", a.Inc)
			return
		}
		r.log.Error("clms: FENCED: this node is no longer a member (fencing = halt)", "reason", a.Reason, "incarnation", a.Inc)
		r.fatal(fmt.Errorf("%w: %s", ErrFenced, a.Reason))
	case ActJoined:
		r.log.Info("clms: joined", "incarnation", a.Inc, "transition", a.Transition)
		close(r.joined)
	case ActJoinFailed:
		r.log.Error("clms: join failed", "err", a.Err)
		r.fatal(a.Err)
	case ActLeft:
		r.log.Info("clms: left the cluster")
		select {
		case <-r.left:
		default:
			close(r.left)
		}
	case ActMasterChanged:
		r.log.Info("clms: master changed", "master", a.Node, "term", a.Term)
	case ActLease:
		if a.Valid {
			r.log.Debug("clms: lease valid")
		} else {
			r.log.Warn("clms: lease not valid: not acting as a member")
		}
	case ActLog:
		r.log.Warn("clms: "+a.Reason, "node", a.Node, "transition", a.Transition)
	case ActKeyOwner, ActKeyFailover, ActKeyPullData, ActKeyFailoverData, ActKeyHandOff:
		r.actKey(a)
	case ActFormed:
		r.log.Info("clms: formed: every critical key service has a ready owner")
	}
}

func (r *Runner) fatal(err error) {
	r.fatalOne.Do(func() {
		if r.cfg.OnFatal != nil {
			// Not one of the runner's goroutines: OnFatal may Close it.
			go r.cfg.OnFatal(err)
		}
	})
}

func (r *Runner) queueCallbacks(a Action) {
	select {
	case r.cbQueue <- a:
	default:
		// A subsystem wedged for a thousand transitions: report nothing for
		// this one; the master's callback timeout moves it along.
		r.log.Error("clms: subsystem callback queue full; transition not run here", "transition", a.Transition)
	}
}

// routineCallbacks runs subsystem callbacks, one transition after another
// in commit order, each callback bounded by CallbackTimeout.
func (r *Runner) routineCallbacks() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case a := <-r.cbQueue:
			res := r.cfg.Subsystems.Run(r.ctx, a.Kind == ActRunNodeUp, a.Node, a.Inc, r.cfg.Timing.CallbackTimeout)
			for _, x := range res {
				if x.Err != nil {
					r.log.Warn("clms: subsystem callback failed", "subsystem", x.Name, "action", a.Kind, "node", a.Node, "err", x.Err)
				}
			}
			select {
			case r.cbDone <- cbResult{t: a.Transition, failed: Failed(res)}:
			case <-r.ctx.Done():
				return
			}
		}
	}
}

// publishStatus stores a new snapshot; members are copied only when
// records were applied.
func (r *Runner) publishStatus(membersChanged bool) {
	c := r.core
	self, inc := c.Self()
	s := &RunnerStatus{Self: self, Incarnation: inc, Master: c.Master(), IsMaster: c.IsMaster(), LeaseValid: c.Acting(),
		Formed: c.Formed(), Fencing: r.cfg.Fencing, Stats: c.Stats(), Last: c.State().LastTransition()}
	s.Ready = s.LeaseValid && s.Formed
	s.VotersAlive, s.Voters = c.VotersAlive()
	s.noQuorum = c.NoQuorum()
	s.Fenced, s.FenceReason = c.Fenced()
	s.Joined = c.phase == phaseMember || c.phase == phaseFenced || c.phase == phaseLeft
	s.Left = c.phase == phaseLeft
	if rs, ok := c.RaftStatus(); ok {
		s.RaftTerm, s.RaftLeader = rs.GetTerm(), NodeNum(rs.Lead)
	}
	if old := r.status.Load(); old != nil && !membersChanged {
		s.Members = old.Members
	} else {
		s.Members = c.State().Members()
	}
	old := r.status.Load()
	if old == nil || viewChanged(old, s) {
		s.View = 1
		if old != nil {
			s.View = old.View + 1
		}
		r.status.Store(s)
		r.viewChangedNow()
		return
	}
	s.View = old.View
	r.status.Store(s)
}

// raftLogger routes raft's log lines to slog at debug (warnings and
// errors at their level).
type raftLogger struct{ l *slog.Logger }

var _ raft.Logger = raftLogger{}

func (g raftLogger) Debug(v ...any)              { g.l.Debug(fmt.Sprint(v...), "src", "raft") }
func (g raftLogger) Debugf(f string, v ...any)   { g.l.Debug(fmt.Sprintf(f, v...), "src", "raft") }
func (g raftLogger) Info(v ...any)               { g.l.Debug(fmt.Sprint(v...), "src", "raft") }
func (g raftLogger) Infof(f string, v ...any)    { g.l.Debug(fmt.Sprintf(f, v...), "src", "raft") }
func (g raftLogger) Warning(v ...any)            { g.l.Warn(fmt.Sprint(v...), "src", "raft") }
func (g raftLogger) Warningf(f string, v ...any) { g.l.Warn(fmt.Sprintf(f, v...), "src", "raft") }
func (g raftLogger) Error(v ...any)              { g.l.Error(fmt.Sprint(v...), "src", "raft") }
func (g raftLogger) Errorf(f string, v ...any)   { g.l.Error(fmt.Sprintf(f, v...), "src", "raft") }
func (g raftLogger) Fatal(v ...any) {
	g.l.Error(fmt.Sprint(v...), "src", "raft")
	panic(fmt.Sprint(v...))
}
func (g raftLogger) Fatalf(f string, v ...any) {
	g.l.Error(fmt.Sprintf(f, v...), "src", "raft")
	panic(fmt.Sprintf(f, v...))
}
func (g raftLogger) Panic(v ...any)            { panic(fmt.Sprint(v...)) }
func (g raftLogger) Panicf(f string, v ...any) { panic(fmt.Sprintf(f, v...)) }
