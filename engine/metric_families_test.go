package engine

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/engine/metricstest"
)

// TestMetricFamilies: families registered through MetricFamilies come out
// with HELP and TYPE, lint clean, next to the engine's and a host's own
// series, with the library's metadata switch off and on.
func TestMetricFamilies(t *testing.T) {
	for _, meta := range []bool{false, true} {
		metrics.ExposeMetadata(meta)
		set := metrics.NewSet()
		set.NewCounter("host_app_requests_total").Inc() // the host's own series: not ours to document
		fams := MetricFamilies(set)
		fams.Counter("ci_test_events_total", "Events.", `node="1"`).Add(2)
		fams.Counter("ci_test_events_total", "Events.", `node="2"`).Inc()
		fams.CounterFunc("ci_test_kept_total", "Counts kept elsewhere.", MetricLabel("node", "1"), func() float64 { return 7 })
		fams.Gauge("ci_test_term", `A term; help with a \ and a`+"\n"+`newline.`, "", func() float64 { return 4 })
		fams.Histogram("ci_test_wait_seconds", "Waits, in seconds.", `node="1"`, []float64{0.1, 1}).Update(0.5)
		// A second registrar of the same set shares the families.
		MetricFamilies(set).Counter("ci_test_events_total", "Events.", `node="3"`).Inc()

		var b bytes.Buffer
		set.WritePrometheus(&b)
		body := b.String()
		got := metricstest.Lint(&hostRule{T: t}, body)
		for name, want := range map[string]string{
			"ci_test_events_total": "COUNTER", "ci_test_kept_total": "COUNTER", "ci_test_term": "GAUGE", "ci_test_wait_seconds": "HISTOGRAM",
		} {
			f := got[name]
			if f == nil || f.GetType().String() != want || f.GetHelp() == "" {
				t.Errorf("meta %v: %s: %v", meta, name, f)
			}
		}
		if n := len(got["ci_test_events_total"].GetMetric()); n != 3 {
			t.Errorf("meta %v: %d events series, want 3", meta, n)
		}
		if h := got["ci_test_term"].GetHelp(); h != "A term; help with a \\ and a\nnewline." {
			t.Errorf("help %q", h)
		}
		if v := got["ci_test_kept_total"].GetMetric()[0].GetCounter().GetValue(); v != 7 {
			t.Errorf("kept %v", v)
		}

		// Unregistering a family's last series takes its HELP and TYPE.
		if !fams.Unregister("ci_test_term", "") || fams.Unregister("ci_test_term", "") || fams.Unregister("ci_test_none", "") {
			t.Error("Unregister: wrong reports")
		}
		b.Reset()
		set.WritePrometheus(&b)
		if strings.Contains(b.String(), "ci_test_term") {
			t.Errorf("ci_test_term still written:\n%s", b.String())
		}
	}
	metrics.ExposeMetadata(false)
}

// hostRule lets through the one problem of the host's own series, which
// MetricFamilies does not document, and fails on any other.
type hostRule struct {
	*testing.T
}

func (h *hostRule) Errorf(format string, args ...any) {
	h.T.Helper()
	msg := fmt.Sprintf(format, args...)
	if !strings.Contains(msg, "1 problems") || !strings.Contains(msg, "host_app_requests_total: no help text") {
		h.T.Error(msg)
	}
}

// TestMetricFamiliesConventions: a name that breaks Prometheus' rules, a
// family without help, or one family as two types is refused.
func TestMetricFamiliesConventions(t *testing.T) {
	for _, tc := range []struct{ name, typ, help, want string }{
		{"a_total", "counter", "", "no help text"},
		{"a", "counter", "A.", "must end in _total"},
		{"a_total", "gauge", "A.", "must not end in _total"},
		{"a_seconds_count", "histogram", "A.", "must not end in _bucket"},
		{"a_milliseconds", "gauge", "A.", "use base units"},
		{"a_latency_ms_total", "counter", "A.", "not ms"},
	} {
		if err := checkFamily(tc.name, tc.typ, tc.help); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s %s: %v, want %q", tc.typ, tc.name, err, tc.want)
		}
	}
	for _, ok := range [][2]string{{"a_total", "counter"}, {"a_seconds", "histogram"}, {"a_bytes", "gauge"}, {"a_mspan", "gauge"}} {
		if err := checkFamily(ok[0], ok[1], "A."); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	fams := MetricFamilies(metrics.NewSet())
	fams.Gauge("ci_test_twice", "A.", "", func() float64 { return 0 })
	for _, f := range []func(){
		func() { fams.Counter("ci_test_bad", "A.", "") },
		func() { fams.Histogram("ci_test_twice", "A.", `x="1"`, []float64{1}) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		}()
	}
}

// TestWriteProcessMetrics: the Go runtime and process families come out
// documented and lint clean, with the library's metadata switch off and on,
// under the names runtimeRenames gives the ones promtool rejects.
func TestWriteProcessMetrics(t *testing.T) {
	for _, meta := range []bool{false, true} {
		metrics.ExposeMetadata(meta)
		var b bytes.Buffer
		WriteProcessMetrics(&b)
		fams := metricstest.Lint(t, b.String())
		metricstest.Promtool(t, b.String())
		for old, renamed := range runtimeRenames {
			if fams[old] != nil || fams[renamed] == nil {
				t.Errorf("meta %v: %s: %v, %s: %v", meta, old, fams[old], renamed, fams[renamed])
			}
		}
		for name, want := range map[string]string{
			"go_goroutines": "GAUGE", "go_gc_duration_seconds": "SUMMARY", "go_gc_pauses_seconds": "HISTOGRAM",
			"process_cpu_seconds_total": "COUNTER", "process_io_read_bytes_total": "COUNTER", "go_cgo_calls_total": "COUNTER",
		} {
			if f := fams[name]; f == nil || f.GetType().String() != want {
				t.Errorf("meta %v: %s: %v", meta, name, f)
			}
		}
	}
	metrics.ExposeMetadata(false)
}
