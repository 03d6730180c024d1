package engine

import (
	"fmt"
	"strings"

	"github.com/VictoriaMetrics/metrics"
)

// Families registers metric families in a metrics.Set with their HELP and
// TYPE lines, as the engine writes its own: what CLMS and the services
// running on a node use for theirs, so that a whole node's scrape passes
// `promtool check metrics`, whatever the host's metrics.ExposeMetadata
// switch says.
//
//	fams := engine.MetricFamilies(node.Metrics())
//	sent := fams.Counter("ci_clms_messages_sent_total", "CLMS messages sent.", `node="1"`)
//	fams.Gauge("ci_clms_raft_term", "The raft term this node is in.", `node="1"`, func() float64 { ... })
//	sent.Inc()
//
// A family is registered at its first series, with that call's help text;
// each name must follow Prometheus' conventions for its type (a counter
// ends in _total, nothing else does, units are base units: _seconds,
// _bytes), which the methods check. labels are the series' labels without
// braces (`node="1",state="UP"`, values quoted as the exposition format
// wants: see MetricLabel); the same name and labels give the same series.
//
// A name that breaks the conventions, empty help text, or one family
// registered as two types is a bug in the caller: the method panics, as
// metrics.Set does on a malformed or duplicate name.
type Families struct {
	e *exporter
}

// MetricFamilies returns the registrar of set's families. Every caller with
// the same set (the engine's nodes, CLMS, services) shares one, so that each
// family's HELP and TYPE appear once in a scrape.
func MetricFamilies(set *metrics.Set) *Families { return &Families{e: exporterFor(set)} }

// Counter returns the counter series name{labels}: a value that only goes
// up (events, bytes), kept by the caller.
func (f *Families) Counter(name, help, labels string) *metrics.Counter {
	return f.set(name, "counter", help).GetOrCreateCounter(series(name, labels))
}

// CounterFunc exposes read() as the counter series name{labels}: for a
// count the caller keeps elsewhere (a statistics snapshot), read at
// scrape time. read must only go up, except when its owner restarts from
// zero; it must not block.
func (f *Families) CounterFunc(name, help, labels string, read func() float64) {
	f.set(name, "counter", help).GetOrCreateGauge(series(name, labels), read)
}

// Gauge exposes read() as the gauge series name{labels}: a value that goes
// up and down (a state, a size, a term), read at scrape time. read must
// not block.
func (f *Families) Gauge(name, help, labels string, read func() float64) {
	f.set(name, "gauge", help).GetOrCreateGauge(series(name, labels), read)
}

// Histogram returns the histogram series name{labels} with the given
// bucket upper bounds (le labels; +Inf is added), for
// histogram_quantile.
func (f *Families) Histogram(name, help, labels string, buckets []float64) *metrics.PrometheusHistogram {
	return f.set(name, "histogram", help).GetOrCreatePrometheusHistogramExt(series(name, labels), buckets)
}

// Unregister removes the series name{labels}, for a component that stops
// while the set lives on; it reports whether the series existed. The
// family's HELP and TYPE go with its last series.
func (f *Families) Unregister(name, labels string) bool {
	f.e.mu.Lock()
	fam := f.e.fams[name]
	f.e.mu.Unlock()
	return fam != nil && fam.set.UnregisterMetric(series(name, labels))
}

// MetricLabel is one label pair, name="value", with the value quoted as the
// exposition format wants; join several with commas.
func MetricLabel(name, value string) string { return name + "=" + labelValue(value) }

func series(name, labels string) string {
	if labels == "" {
		return name
	}
	return name + "{" + labels + "}"
}

// set checks name and help against typ and returns the family's set.
func (f *Families) set(name, typ, help string) *metrics.Set {
	if err := checkFamily(name, typ, help); err != nil {
		panic(err)
	}
	return f.e.documented(name, typ, help)
}

// checkFamily holds a family to the conventions promtool checks.
func checkFamily(name, typ, help string) error {
	total := strings.HasSuffix(name, "_total")
	switch {
	case strings.TrimSpace(help) == "":
		return fmt.Errorf("engine: metric family %s has no help text", name)
	case typ == "counter" && !total:
		return fmt.Errorf("engine: counter %s must end in _total", name)
	case typ != "counter" && total:
		return fmt.Errorf("engine: %s %s must not end in _total (only counters do)", typ, name)
	case typ == "histogram" && (strings.HasSuffix(name, "_bucket") || strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count")):
		return fmt.Errorf("engine: histogram %s must not end in _bucket, _sum or _count (its series add them)", name)
	}
	for _, unit := range []string{"_milliseconds", "_microseconds", "_nanoseconds", "_minutes", "_hours", "_kilobytes", "_megabytes", "_ms", "_us", "_ns"} {
		if strings.Contains(name+"_", unit+"_") {
			return fmt.Errorf("engine: metric family %s: use base units (_seconds, _bytes), not %s", name, unit[1:])
		}
	}
	return nil
}
