package clms

import (
	"errors"
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// runnerMetrics are the runner's Prometheus series, on the engine node's
// metric set, each labelled node="N" like the engine's. Gauges read the
// status snapshot the runner publishes after every input, so a scrape
// never touches the core.
type runnerMetrics struct {
	set   *metrics.Set
	names []string

	dropped, sendErrors, badMessages *metrics.Counter
	connLost, crashProofs, fences    *metrics.Counter
	lateTicks                        *metrics.Counter
	refusalsIgnored                  *metrics.Counter

	// Key-service routines: durations and failures by action.
	keyRoutines map[ActionKind]*metrics.Histogram
	keyErrors   *metrics.Counter
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
	m := &runnerMetrics{set: r.cfg.Engine.Metrics()}
	node := fmt.Sprintf(`node="%d"`, r.cfg.Engine.Num())
	name := func(family, extra string) string {
		l := node
		if extra != "" {
			l += "," + extra
		}
		n := family + "{" + l + "}"
		m.names = append(m.names, n)
		return n
	}
	counter := func(family, extra string) *metrics.Counter { return m.set.NewCounter(name(family, extra)) }
	gauge := func(family, extra string, f func(*RunnerStatus) float64) {
		m.set.NewGauge(name(family, extra), func() float64 { return f(r.status.Load()) })
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	m.dropped = counter("ci_clms_messages_dropped_total", "")
	m.sendErrors = counter("ci_clms_send_errors_total", "")
	m.badMessages = counter("ci_clms_bad_messages_total", "")
	m.connLost = counter("ci_clms_connection_losses_total", "")
	m.crashProofs = counter("ci_clms_crash_proofs_total", "")
	m.fences = counter("ci_clms_fences_total", "")
	m.lateTicks = counter("ci_clms_late_ticks_total", "")
	for st := StateNeverUp; st <= StateDown; st++ {
		gauge("ci_clms_members", fmt.Sprintf(`state="%s"`, st), func(s *RunnerStatus) float64 { return float64(s.Stats.MembersByState[st]) })
	}
	gauge("ci_clms_transitions_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.Transitions) })
	gauge("ci_clms_suspicions_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.Suspicions) })
	gauge("ci_clms_heartbeats_sent_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.HeartbeatsSent) })
	gauge("ci_clms_heartbeats_missed_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.HeartbeatsMissed) })
	gauge("ci_clms_lease_lapses_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.LeaseLapses) })
	gauge("ci_clms_raft_term", "", func(s *RunnerStatus) float64 { return float64(s.Stats.RaftTerm) })
	gauge("ci_clms_leader_changes_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.LeaderChanges) })
	gauge("ci_clms_is_master", "", func(s *RunnerStatus) float64 { return b(s.Stats.IsMaster) })
	gauge("ci_clms_lease_valid", "", func(s *RunnerStatus) float64 { return b(s.Stats.LeaseValid) })
	gauge("ci_clms_fenced", "", func(s *RunnerStatus) float64 { return b(s.Stats.Fenced) })
	gauge("ci_clms_last_transition", "", func(s *RunnerStatus) float64 { return float64(s.Last) })
	m.refusalsIgnored = counter("ci_clms_refusals_ignored_total", "")
	gauge("ci_clms_formed", "", func(s *RunnerStatus) float64 { return b(s.Formed) })
	gauge("ci_clms_ready", "", func(s *RunnerStatus) float64 { return b(s.Ready) })

	// Key services: the cluster-wide counters are the same on every node
	// (they count applied records); pull failures are this node's, as owner.
	gauge("ci_clms_keysvc_failovers_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.KeyFailovers) })
	gauge("ci_clms_keysvc_handovers_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.KeyHandovers) })
	gauge("ci_clms_keysvc_pull_failures_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.KeyPullFailures) })
	gauge("ci_clms_keysvc_degraded", "", func(s *RunnerStatus) float64 { return float64(len(s.Stats.KeyDegraded)) })
	m.keyErrors = counter("ci_clms_keysvc_routine_errors_total", "")
	m.keyRoutines = map[ActionKind]*metrics.Histogram{}
	for _, k := range []ActionKind{ActKeyFailover, ActKeyPullData, ActKeyFailoverData, ActKeyHandOff} {
		m.keyRoutines[k] = m.set.NewHistogram(name("ci_clms_keysvc_routine_seconds", fmt.Sprintf(`routine="%s"`, k)))
	}
	tick := r.cfg.Timing.Tick.Seconds()
	for _, sp := range r.core.KeyServiceSpecs() {
		svc := fmt.Sprintf("service=%q", sp.Name)
		get := func(s *RunnerStatus) KeyServiceStats {
			for _, k := range s.Stats.KeyServices {
				if k.Name == sp.Name {
					return k
				}
			}
			return KeyServiceStats{}
		}
		gauge("ci_clms_keysvc_owner", svc, func(s *RunnerStatus) float64 { return float64(get(s).Owner) })
		gauge("ci_clms_keysvc_epoch", svc, func(s *RunnerStatus) float64 { return float64(get(s).Epoch) })
		gauge("ci_clms_keysvc_ready", svc, func(s *RunnerStatus) float64 { return b(get(s).Phase == KeyReady) })
		gauge("ci_clms_keysvc_acting", svc, func(s *RunnerStatus) float64 { return b(get(s).Acting) })
		gauge("ci_clms_keysvc_critical", svc, func(s *RunnerStatus) float64 { return b(get(s).Critical) })
		// The last failover this node ran as owner, phase by phase, in
		// seconds (the core counts ticks).
		for phase, f := range map[string]func(KeyServiceStats) int64{
			"failover": func(k KeyServiceStats) int64 { return k.FailoverTicks },
			"pull":     func(k KeyServiceStats) int64 { return k.PullTicks },
			"data":     func(k KeyServiceStats) int64 { return k.DataTicks },
			"ready":    func(k KeyServiceStats) int64 { return k.ReadyTicks },
		} {
			gauge("ci_clms_keysvc_failover_phase_seconds", svc+fmt.Sprintf(`,phase="%s"`, phase),
				func(s *RunnerStatus) float64 { return float64(f(get(s))) * tick })
		}
	}
	return m
}

// unregister removes the runner's series, so that a node's set outlives a
// runner without reporting a stopped one.
func (m *runnerMetrics) unregister() {
	for _, n := range m.names {
		m.set.UnregisterMetric(n)
	}
}
