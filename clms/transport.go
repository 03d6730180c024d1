package clms

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/clusterinfra/ci/engine"
	"go.etcd.io/raft/v3/raftpb"
)

// The CLMS wire: one service on the CLMS channel, subservice 0 (the cluster
// API is 1, signal forwarding 2), with one procedure that takes an encoded
// Message as a one-way send. Messages the lease depends on (imalive, its
// ack, the master's ping, raft heartbeats and votes) go at priority 1, on
// the never-throttled ChanPrio1, so bulk traffic on the CLMS channel cannot
// delay them. Liveness probes use engine.Node.ProbePeer, a handshake-only
// connection on ChanCLMSProbe.

// ServiceID is the CLMS service's engine ID: ChanCLMS, subservice 0.
var ServiceID = engine.ServiceOn(engine.ChanCLMS, 0)

// ServiceName names the service in the engine's metrics.
const ServiceName = "clms"

const procMessage = 0

var methodMessage = engine.Method{Service: ServiceID, Proc: procMessage, Name: ServiceName}

// Urgent reports whether m goes at priority 1, and is taken before other
// input by the receiving runner.
func Urgent(m *Message) bool {
	switch m.Type {
	case MsgImAlive, MsgImAliveAck, MsgPing:
		return true
	case MsgRaft:
		switch m.Raft.GetType() {
		case raftpb.MsgHeartbeat, raftpb.MsgHeartbeatResp, raftpb.MsgVote, raftpb.MsgVoteResp,
			raftpb.MsgPreVote, raftpb.MsgPreVoteResp, raftpb.MsgTimeoutNow:
			return true
		}
	}
	return false
}

// outbox sends one peer's messages in order on its own goroutines, so that
// a peer that is slow, throttled or unreachable (a dial that waits for its
// timeout) delays nobody else, and urgent messages never wait behind bulk
// ones. A full queue drops the message: the protocol retries.
type outbox struct {
	r        *Runner
	to       NodeNum
	urgent   chan []byte
	bulk     chan []byte
	stopOnce sync.Once
}

// Queue lengths: a heartbeat period's worth of raft appends and records
// for bulk; a few imalives and acks for urgent (an older one is worthless
// once a newer one is queued).
const (
	bulkQueue   = 256
	urgentQueue = 16
)

func (r *Runner) outboxFor(to NodeNum) *outbox {
	if o := r.outboxes[to]; o != nil {
		return o
	}
	o := &outbox{r: r, to: to, urgent: make(chan []byte, urgentQueue), bulk: make(chan []byte, bulkQueue)}
	r.outboxes[to] = o
	r.wg.Add(2)
	go o.routineSend(o.urgent, engine.WithPriority(r.ctx, 1))
	go o.routineSend(o.bulk, r.ctx)
	return o
}

// send encodes m and queues it; on the runner's goroutine.
func (r *Runner) send(m *Message) {
	b, err := m.AppendEncode(nil)
	if err != nil {
		r.log.Error("clms: cannot encode message", "msg", m.String(), "err", err)
		return
	}
	if max := r.cfg.Engine.MaxPayload(); len(b) > max {
		// A state snapshot (raft's or a pushed image) over the bound the
		// engine refuses to send: the peer can never catch up this way.
		r.met.sendErrors.Inc()
		r.log.Error("clms: message over the engine's MaxPayload: not sent; lower compaction.history_keep or raise MaxPayload",
			"msg", m.Type.String(), "peer", m.To, "bytes", len(b), "max_payload", max)
		return
	}
	r.traceMsg("send", m)
	o := r.outboxFor(m.To)
	q := o.bulk
	if Urgent(m) {
		q = o.urgent
	}
	select {
	case q <- b:
	default:
		r.met.dropped.Inc()
	}
}

func (o *outbox) routineSend(q chan []byte, ctx context.Context) {
	defer o.r.wg.Done()
	for {
		select {
		case <-o.r.ctx.Done():
			return
		case b := <-q:
			// Bounded by the lease: a message older than that is of no use
			// to anyone, and the engine's dial timeout bounds the dial.
			sctx, cancel := context.WithTimeout(ctx, o.r.cfg.Timing.LeaseTimeout)
			err := o.r.cfg.Engine.Send(sctx, o.to, methodMessage, b)
			cancel()
			if err != nil {
				o.r.met.sendErrors.Inc()
				if errors.Is(err, engine.ErrDeclaredDown) {
					o.r.post(evidence{node: o.to, refusesUs: true})
					continue
				}
				if errors.Is(err, engine.ErrNodeDown) && !o.r.cfg.Engine.IsDown(o.to) && o.r.probeDue(o.to) {
					// Perhaps refused: find out whether the process is gone.
					o.r.probe(o.to)
				}
			}
		}
	}
}

// handleMessage is the service's procedure: decode on the event loop
// (DecodeMessage retains nothing of the frame) and hand to the runner.
func (r *Runner) handleMessage(_ context.Context, req *engine.Request, _ *engine.Response) error {
	m, err := DecodeMessage(req.Args)
	if err != nil {
		r.met.badMessages.Inc()
		return engine.ErrCantDecodeArgs
	}
	if m.From != req.From {
		// The engine authenticated the sender; a message claiming to be from
		// someone else is not believed.
		r.met.badMessages.Inc()
		return engine.ErrCantDecodeArgs
	}
	r.traceMsg("received", &m)
	in := r.inbox
	if Urgent(&m) {
		// Imalives, their answers, pings and raft's heartbeats and votes
		// must not wait behind bulk input and the writes it causes: a
		// queued imalive is silence to the master (docs/CLMS.md, "Loaded
		// nodes").
		in = r.urgentIn
	}
	select {
	case in <- m:
	case <-r.ctx.Done():
	default:
		r.met.dropped.Inc() // the runner is behind; the protocol retries
	}
	return nil
}

// probe asks whether peer n's process is still there, at most one probe
// per peer at a time. The answer comes back to the runner's goroutine as
// evidence.
func (r *Runner) probe(n NodeNum) {
	r.probeMu.Lock()
	if r.probing[n] || r.ctx.Err() != nil {
		r.probeMu.Unlock()
		return
	}
	r.probing[n] = true
	r.wg.Add(1)
	r.probeMu.Unlock()
	go func() {
		defer r.wg.Done()
		// A probe answered after the lease is stale: the master has judged by then.
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.Timing.LeaseTimeout)
		start := time.Now()
		var inc uint64
		var err error
		// A process killed with SIGKILL drops its connections and closes its
		// listener in one teardown, in no set order: a probe right after the
		// first may still be accepted and then reset. Retry a quick failure a
		// moment later, when the address refuses: soon at first, since the
		// teardown takes well under a millisecond and every millisecond here
		// is a millisecond of failover, then backing off.
		wait := probeRetryFirst
		for try := 0; ; try++ {
			inc, err = r.cfg.Engine.ProbePeer(ctx, n)
			if err == nil || errors.Is(err, engine.ErrPeerRefused) || errors.Is(err, engine.ErrDeclaredDown) || ctx.Err() != nil || try == probeRetries {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			wait *= 2
		}
		cancel()
		r.probeMu.Lock()
		delete(r.probing, n)
		r.probeMu.Unlock()
		ev := evidence{node: n, probed: true, inc: inc, refused: errors.Is(err, engine.ErrPeerRefused),
			refusesUs: errors.Is(err, engine.ErrDeclaredDown)}
		if err != nil && !ev.refused && !ev.refusesUs {
			r.log.Debug("clms: probe unanswered", "peer", n, "after", time.Since(start), "err", err)
			return
		}
		r.post(ev)
	}()
}

// A probe that failed quickly (reset, not refused) is tried again
// probeRetries times, probeRetryFirst after the first failure and twice as
// long after each next one (0.5, 1, 2, 4, 8 ms: 15.5 ms in all, more than
// a teardown on a loaded machine takes). With a single 5 ms wait, a probe
// that met the reset cost the failover 5-8 ms (cibench failover on 3
// cinodes, 2026-12-01): a crash proof is worth having before the next tick.
const (
	probeRetries    = 5
	probeRetryFirst = 500 * time.Microsecond
)

// probeDue limits the probes that failed sends start to one per heartbeat
// per peer: a dead peer that raft keeps sending to must not be probed in a
// loop. A lost connection always probes.
func (r *Runner) probeDue(n NodeNum) bool {
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	now := time.Now()
	if now.Sub(r.lastProbe[n]) < r.cfg.Timing.Heartbeat {
		return false
	}
	r.lastProbe[n] = now
	return true
}

// evidence is what the engine tells the runner about a peer.
type evidence struct {
	node    NodeNum
	lost    bool   // a connection to it dropped
	probed  bool   // a probe finished
	refused bool   // the probe's connection was refused: the process is gone
	inc     uint64 // the incarnation that answered the probe
	// refusesUs: its engine refused us as an incarnation declared down.
	refusesUs bool
}

func (r *Runner) post(ev evidence) {
	select {
	case r.evidence <- ev:
	case <-r.ctx.Done():
	}
}
