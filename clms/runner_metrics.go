package clms

import (
	"fmt"

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
	gauge("ci_clms_raft_term", "", func(s *RunnerStatus) float64 { return float64(s.Stats.RaftTerm) })
	gauge("ci_clms_leader_changes_total", "", func(s *RunnerStatus) float64 { return float64(s.Stats.LeaderChanges) })
	gauge("ci_clms_is_master", "", func(s *RunnerStatus) float64 { return b(s.Stats.IsMaster) })
	gauge("ci_clms_lease_valid", "", func(s *RunnerStatus) float64 { return b(s.Stats.LeaseValid) })
	gauge("ci_clms_fenced", "", func(s *RunnerStatus) float64 { return b(s.Stats.Fenced) })
	gauge("ci_clms_last_transition", "", func(s *RunnerStatus) float64 { return float64(s.Last) })
	return m
}

// unregister removes the runner's series, so that a node's set outlives a
// runner without reporting a stopped one.
func (m *runnerMetrics) unregister() {
	for _, n := range m.names {
		m.set.UnregisterMetric(n)
	}
}
