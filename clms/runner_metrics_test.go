package clms_test

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine/metricstest"
)

// TestRunnerMetricsLint: a runner's families, on its engine's set next to
// the engine's own, have HELP and TYPE and pass promtool's rules; the
// counts the core keeps are counters, the states gauges; and a closed
// runner takes its series with it.
func TestRunnerMetricsLint(t *testing.T) {
	c := newRunnerCluster(t, 2, 1, nil)
	c.waitFor("both up", []clms.NodeNum{1, 2}, allUp(1, 2))
	scrape := func(n clms.NodeNum) string {
		var b strings.Builder
		c.nodes[n].eng.Metrics().WritePrometheus(&b)
		return b.String()
	}
	for _, n := range []clms.NodeNum{1, 2} {
		body := scrape(n)
		fams := metricstest.Lint(t, body)
		metricstest.Promtool(t, body)
		for name, want := range map[string]dto.MetricType{
			"ci_clms_transitions_total":           dto.MetricType_COUNTER,
			"ci_clms_heartbeats_sent_total":       dto.MetricType_COUNTER,
			"ci_clms_heartbeats_missed_total":     dto.MetricType_COUNTER,
			"ci_clms_suspicions_total":            dto.MetricType_COUNTER,
			"ci_clms_downs_deferred_total":        dto.MetricType_COUNTER,
			"ci_clms_lease_lapses_total":          dto.MetricType_COUNTER,
			"ci_clms_leader_changes_total":        dto.MetricType_COUNTER,
			"ci_clms_raft_proposals_total":        dto.MetricType_COUNTER,
			"ci_clms_raft_proposal_batches_total": dto.MetricType_COUNTER,
			"ci_clms_keysvc_failovers_total":      dto.MetricType_COUNTER,
			"ci_clms_keysvc_handovers_total":      dto.MetricType_COUNTER,
			"ci_clms_keysvc_pull_failures_total":  dto.MetricType_COUNTER,
			"ci_clms_keysvc_pulls_pushed_total":   dto.MetricType_COUNTER,
			"ci_clms_messages_dropped_total":      dto.MetricType_COUNTER,
			"ci_clms_members":                     dto.MetricType_GAUGE,
			"ci_clms_raft_term":                   dto.MetricType_GAUGE,
			"ci_clms_is_master":                   dto.MetricType_GAUGE,
			"ci_clms_keysvc_routine_seconds":      dto.MetricType_HISTOGRAM,
			"ci_ics_frames_in_total":              dto.MetricType_COUNTER,
		} {
			if f := fams[name]; f == nil || f.GetType() != want || f.GetHelp() == "" {
				t.Errorf("node %d: %s: %v", n, name, f)
			}
		}
		// Each node applied at least its own UP.
		if v := fams["ci_clms_transitions_total"].GetMetric()[0].GetCounter().GetValue(); v < 1 {
			t.Errorf("node %d: ci_clms_transitions_total = %v", n, v)
		}
	}
	_ = c.nodes[2].r.Close()
	body := scrape(2)
	if strings.Contains(body, "ci_clms_") {
		t.Errorf("node 2's closed runner left series:\n%s", body)
	}
	metricstest.Lint(t, body)
}
