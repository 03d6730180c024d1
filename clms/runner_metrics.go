package clms

import (
	"errors"
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/engine"
)

// runnerMetrics are the runner's Prometheus series, on the engine node's
// metric set through engine.MetricFamilies (so each family has HELP and
// TYPE), each labelled node="N" like the engine's. Gauges and the counters
// kept in Stats read the status snapshot the runner publishes after every
// input, so a scrape never touches the core. docs/ADMIN.md ("Metrics")
// lists them.
type runnerMetrics struct {
	fams   *engine.Families
	series [][2]string // family, labels: what unregister removes

	dropped, sendErrors, badMessages *metrics.Counter
	connLost, crashProofs, fences    *metrics.Counter
	lateTicks                        *metrics.Counter
	refusalsIgnored                  *metrics.Counter

	// Key-service routines: durations and failures by action.
	keyRoutines map[ActionKind]*metrics.PrometheusHistogram
	keyErrors   *metrics.Counter
}

// keyRoutineBuckets are ci_clms_keysvc_routine_seconds' upper bounds, in
// seconds: 1-2-5 steps from 1 ms (a routine with nothing to do) to 5
// minutes, well past a routine's bound (CallbackTimeout, 10 s by default,
// twice that for HandOff and TakeOver) should an operator raise it.
var keyRoutineBuckets = []float64{
	1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3,
	1, 2, 5, 10, 20, 50, 100, 200, 300,
}

// keyRoutine records one key-service routine run here.
func (m *runnerMetrics) keyRoutine(k ActionKind, d time.Duration, err error) {
	if h := m.keyRoutines[k]; h != nil {
		h.Update(d.Seconds())
	}
	if err != nil && !errors.Is(err, ErrKeyCancelled) {
		m.keyErrors.Inc()
	}
}

func newRunnerMetrics(r *Runner) *runnerMetrics {
	m := &runnerMetrics{fams: engine.MetricFamilies(r.cfg.Engine.Metrics())}
	node := engine.MetricLabel("node", fmt.Sprint(r.cfg.Engine.Num()))
	labels := func(family, extra string) string {
		l := node
		if extra != "" {
			l += "," + extra
		}
		m.series = append(m.series, [2]string{family, l})
		return l
	}
	counter := func(family, help string) *metrics.Counter {
		return m.fams.Counter(family, help, labels(family, ""))
	}
	// A count the core keeps in Stats: a counter read at scrape time.
	stat := func(family, help string, f func(*Stats) uint64) {
		m.fams.CounterFunc(family, help, labels(family, ""), func() float64 { return float64(f(&r.status.Load().Stats)) })
	}
	gauge := func(family, help, extra string, f func(*RunnerStatus) float64) {
		m.fams.Gauge(family, help, labels(family, extra), func() float64 { return f(r.status.Load()) })
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}

	// Counted by the runner.
	m.dropped = counter("ci_clms_messages_dropped_total", "CLMS messages dropped because a queue was full: an outbound queue to a peer, or the runner's inbox (the protocol retries).")
	m.sendErrors = counter("ci_clms_send_errors_total", "CLMS messages the engine failed to send to a peer (peer down, timed out).")
	m.badMessages = counter("ci_clms_bad_messages_total", "CLMS messages refused: undecodable, claiming another sender than the authenticated one, or rejected by the core.")
	m.connLost = counter("ci_clms_connection_losses_total", "Connections to a peer the engine reported lost; each makes the master probe the peer.")
	m.crashProofs = counter("ci_clms_crash_proofs_total", "Proofs that a peer's incarnation crashed (its address refused it, or answered as a newer incarnation).")
	m.fences = counter("ci_clms_fences_total", "Times this node fenced itself (declared down, or its membership lease ran out).")
	m.lateTicks = counter("ci_clms_late_ticks_total", "CLMS ticks that ran late by a whole tick or more (the runner was starved of CPU), counted in ticks.")
	m.refusalsIgnored = counter("ci_clms_refusals_ignored_total", "Refusals from a peer saying this incarnation was declared down, ignored because this node's lease was valid (forged or stale).")

	// Counted by the core, in Stats.
	stat("ci_clms_transitions_total", "Membership transitions this node applied.", func(s *Stats) uint64 { return s.Transitions })
	stat("ci_clms_downs_deferred_total", "Silences this node, as master, did not declare down when they reached lease_timeout+lease_margin, because part of them was its own stall (late ticks).", func(s *Stats) uint64 { return s.DownsDeferred })
	stat("ci_clms_suspicions_total", "Members this node, as master, probed after silence or a lost connection.", func(s *Stats) uint64 { return s.Suspicions })
	stat("ci_clms_heartbeats_sent_total", "Heartbeats (imalives) this node sent to the master.", func(s *Stats) uint64 { return s.HeartbeatsSent })
	stat("ci_clms_heartbeats_missed_total", "Heartbeats this node sent that the master did not answer before the next one was due.", func(s *Stats) uint64 { return s.HeartbeatsMissed })
	stat("ci_clms_lease_lapses_total", "Times this node's membership lease ran out, suspending it until a master granted one again: a near miss of a NODEDOWN.", func(s *Stats) uint64 { return s.LeaseLapses })
	stat("ci_clms_leader_changes_total", "Raft leader changes this node saw.", func(s *Stats) uint64 { return s.LeaderChanges })
	stat("ci_clms_raft_proposals_total", "Commands this node, as master, proposed to raft.", func(s *Stats) uint64 { return s.Proposals })
	stat("ci_clms_raft_proposal_batches_total", "Raft appends that carried this node's proposals: the proposals of the inputs stepped before one Ready go out together.", func(s *Stats) uint64 { return s.ProposalBatches })
	stat("ci_clms_snapshots_total", "Snapshots of the CLMS state this node took to compact its raft log (voters).", func(s *Stats) uint64 { return s.Snapshots })
	// The cluster-wide key-service counters are the same on every node
	// (they count applied records); pull failures are this node's, as
	// owner.
	stat("ci_clms_keysvc_failovers_total", "Key services that got a new owner after their owner died (applied records, the same on every node).", func(s *Stats) uint64 { return s.KeyFailovers })
	stat("ci_clms_keysvc_handovers_total", "Planned moves of a key service to another owner (applied records, the same on every node).", func(s *Stats) uint64 { return s.KeyHandovers })
	stat("ci_clms_keysvc_pull_failures_total", "Members left out of a key-service data pull this node ran as owner (PullData failed, the member died, or the pull timed out).", func(s *Stats) uint64 { return s.KeyPullFailures })
	stat("ci_clms_keysvc_pulls_pushed_total", "Members' answers to a key-service data pull this node ran as owner that came unasked (pushed when the member applied the new owner's record), so the member was not asked.", func(s *Stats) uint64 { return s.KeyPullsPushed })

	// States.
	for st := StateNeverUp; st <= StateDown; st++ {
		gauge("ci_clms_members", "Nodes of the node table in each membership state, as this node has the membership committed.", fmt.Sprintf(`state="%s"`, st),
			func(s *RunnerStatus) float64 { return float64(s.Stats.MembersByState[st]) })
	}
	gauge("ci_clms_raft_term", "The raft term this node is in.", "", func(s *RunnerStatus) float64 { return float64(s.Stats.RaftTerm) })
	gauge("ci_clms_raft_log_entries", "Entries in this node's in-memory raft log (voters): compaction keeps it under snapshot_every + log_margin.", "", func(s *RunnerStatus) float64 { return float64(s.Stats.RaftLogEntries) })
	gauge("ci_clms_history_kept", "Transitions the CLMS core keeps (history_keep and a quarter at most).", "", func(s *RunnerStatus) float64 { return float64(s.Stats.HistoryKept) })
	gauge("ci_clms_is_master", "1 if this node is the CLMS master, else 0.", "", func(s *RunnerStatus) float64 { return b(s.Stats.IsMaster) })
	gauge("ci_clms_lease_valid", "1 while this node holds a valid membership lease (it may act as a member), else 0.", "", func(s *RunnerStatus) float64 { return b(s.Stats.LeaseValid) })
	gauge("ci_clms_fenced", "1 once this incarnation is fenced (declared down or its lease ran out), else 0.", "", func(s *RunnerStatus) float64 { return b(s.Stats.Fenced) })
	gauge("ci_clms_last_transition", "The ID of the last membership transition this node applied (IDs only grow; a change means a transition).", "", func(s *RunnerStatus) float64 { return float64(s.Last) })
	gauge("ci_clms_formed", "1 once every critical key service has had a ready owner since this incarnation joined, else 0.", "", func(s *RunnerStatus) float64 { return b(s.Formed) })
	gauge("ci_clms_ready", "1 while this node is ready (lease valid and formed: what /readyz says), else 0.", "", func(s *RunnerStatus) float64 { return b(s.Ready) })
	gauge("ci_clms_keysvc_degraded", "Critical key services running without an owner under panic = \"degraded\".", "", func(s *RunnerStatus) float64 { return float64(len(s.Stats.KeyDegraded)) })

	// Key-service routines run here.
	m.keyErrors = counter("ci_clms_keysvc_routine_errors_total", "Key-service routines run on this node that failed (cancelled ones not counted).")
	m.keyRoutines = map[ActionKind]*metrics.PrometheusHistogram{}
	for _, k := range []ActionKind{ActKeyFailover, ActKeyPullData, ActKeyFailoverData, ActKeyHandOff} {
		name := "ci_clms_keysvc_routine_seconds"
		m.keyRoutines[k] = m.fams.Histogram(name, "Time key-service routines run on this node took, by routine, in seconds.",
			labels(name, engine.MetricLabel("routine", k.String())), keyRoutineBuckets)
	}
	tick := r.cfg.Timing.Tick.Seconds()
	for _, sp := range r.core.KeyServiceSpecs() {
		svc := engine.MetricLabel("service", sp.Name)
		get := func(s *RunnerStatus) KeyServiceStats {
			for _, k := range s.Stats.KeyServices {
				if k.Name == sp.Name {
					return k
				}
			}
			return KeyServiceStats{}
		}
		gauge("ci_clms_keysvc_owner", "The node owning each key service (0: none).", svc, func(s *RunnerStatus) float64 { return float64(get(s).Owner) })
		gauge("ci_clms_keysvc_epoch", "Each key service's ownership epoch (one more at every new owner).", svc, func(s *RunnerStatus) float64 { return float64(get(s).Epoch) })
		gauge("ci_clms_keysvc_ready", "1 while each key service's owner is ready, else 0.", svc, func(s *RunnerStatus) float64 { return b(get(s).Phase == KeyReady) })
		gauge("ci_clms_keysvc_acting", "1 while this node acts as each key service's owner, else 0.", svc, func(s *RunnerStatus) float64 { return b(get(s).Acting) })
		gauge("ci_clms_keysvc_critical", "1 if each key service is critical (the cluster is not formed without a ready owner), else 0.", svc, func(s *RunnerStatus) float64 { return b(get(s).Critical) })
		// The last failover this node ran as owner, phase by phase, in
		// seconds (the core counts ticks).
		for phase, f := range map[string]func(KeyServiceStats) int64{
			"failover": func(k KeyServiceStats) int64 { return k.FailoverTicks },
			"pull":     func(k KeyServiceStats) int64 { return k.PullTicks },
			"data":     func(k KeyServiceStats) int64 { return k.DataTicks },
			"ready":    func(k KeyServiceStats) int64 { return k.ReadyTicks },
		} {
			gauge("ci_clms_keysvc_failover_phase_seconds", "How long each phase of the last failover of each key service this node ran as owner took, in seconds (counted in CLMS ticks).",
				svc+","+engine.MetricLabel("phase", phase), func(s *RunnerStatus) float64 { return float64(f(get(s))) * tick })
		}
	}
	return m
}

// unregister removes the runner's series, so that a node's set outlives a
// runner without reporting a stopped one.
func (m *runnerMetrics) unregister() {
	for _, s := range m.series {
		m.fams.Unregister(s[0], s[1])
	}
}
