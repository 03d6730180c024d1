package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/clusterinfra/ci/engine/metricstest"
)

// scrape writes set as a /metrics endpoint would and parses it with
// Prometheus' own text parser, which refuses a malformed exposition
// (a family's HELP or TYPE twice, a sample before its TYPE's family ends).
func scrape(t testing.TB, set *metrics.Set) map[string]*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	set.WritePrometheus(&b)
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(&b)
	if err != nil {
		t.Fatalf("scrape does not parse: %v", err)
	}
	return fams
}

// sample finds the series of family whose labels are exactly labels
// ("k=v" pairs); ok is false when there is none.
func sample(fams map[string]*dto.MetricFamily, family string, labels ...string) (*dto.Metric, bool) {
	f := fams[family]
	if f == nil {
		return nil, false
	}
	want := slices.Sorted(slices.Values(labels))
	for _, m := range f.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			if l.GetName() != "le" {
				got = append(got, l.GetName()+"="+l.GetValue())
			}
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return m, true
		}
	}
	return nil, false
}

// metricValue is a counter's or gauge's value in a fresh scrape of n, 0 if
// the series does not exist (yet).
func metricValue(t testing.TB, n *Node, family string, labels ...string) float64 {
	t.Helper()
	m, ok := sample(scrape(t, n.Metrics()), family, labels...)
	switch {
	case !ok:
		return 0
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s is neither a counter nor a gauge", family)
	return 0
}

// quantile is PromQL's histogram_quantile over one scraped histogram: the
// bucket where the rank falls, interpolated linearly inside it.
func quantile(q float64, h *dto.Histogram) float64 {
	rank := q * float64(h.GetSampleCount())
	lower, below := 0.0, uint64(0)
	for _, b := range h.GetBucket() {
		if float64(b.GetCumulativeCount()) >= rank {
			in := b.GetCumulativeCount() - below
			if in == 0 {
				return b.GetUpperBound()
			}
			return lower + (b.GetUpperBound()-lower)*(rank-float64(below))/float64(in)
		}
		lower, below = b.GetUpperBound(), b.GetCumulativeCount()
	}
	return lower // in +Inf: PromQL answers the highest finite bound
}

// checkHistogram checks h is a Prometheus le histogram histogram_quantile
// can read: finite bounds increasing, counts cumulative, count = +Inf.
func checkHistogram(t *testing.T, what string, h *dto.Histogram) {
	t.Helper()
	var prevBound float64
	var prevCount uint64
	for i, b := range h.GetBucket() {
		if i > 0 && b.GetUpperBound() <= prevBound {
			t.Errorf("%s: bucket bounds not increasing at le=%v", what, b.GetUpperBound())
		}
		if b.GetCumulativeCount() < prevCount {
			t.Errorf("%s: bucket le=%v counts %d, less than the bucket below (%d): not cumulative", what, b.GetUpperBound(), b.GetCumulativeCount(), prevCount)
		}
		prevBound, prevCount = b.GetUpperBound(), b.GetCumulativeCount()
	}
	// The parser folds le="+Inf" into the sample count; it must be there
	// and hold every observation.
	if !math.IsInf(prevBound, 1) {
		// The text parser keeps the +Inf bucket as a bucket.
		t.Errorf("%s: no le=\"+Inf\" bucket", what)
	}
	if prevCount != h.GetSampleCount() {
		t.Errorf("%s: +Inf bucket %d != count %d", what, prevCount, h.GetSampleCount())
	}
	if h.GetBucket()[0].GetUpperBound() > 10e-6 {
		t.Errorf("%s: first bucket le=%v: too coarse for microsecond RPCs", what, h.GetBucket()[0].GetUpperBound())
	}
}

// TestMetricsPerProcedure makes calls that succeed, fail in the handler,
// fail with a declared error, miss a procedure and are abandoned, and
// checks each lands in its procedure's series on both sides, by code.
func TestMetricsPerProcedure(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	svc := Service{ID: echoSvc, Name: "echo", DeclaredErrors: true, Procs: []Handler{
		0: func(_ context.Context, req *Request, resp *Response) error { // a stub's success: status 0, then results
			resp.Body = append(append(resp.Body, 0), req.Args...)
			return nil
		},
		1: func(context.Context, *Request, *Response) error { return errors.New("handler broke") },
		2: func(_ context.Context, _ *Request, resp *Response) error { // what stub.Fail writes for declared error 1
			resp.Body = append(resp.Body, 1, 0)
			return nil
		},
		3: func(context.Context, *Request, *Response) error {
			entered <- struct{}{}
			<-release
			return nil
		},
	}}
	if err := nodes[1].Register(svc); err != nil {
		t.Fatal(err)
	}
	method := func(proc uint32) Method {
		return Method{Service: echoSvc, Proc: proc, Name: "echo", DeclaredErrors: true}
	}
	var slowest time.Duration
	callsBegan := time.Now()
	for range 20 {
		t0 := time.Now()
		if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, method(0), []byte("0123456789"), nil); err != nil {
			t.Fatal(err)
		}
		slowest = max(slowest, time.Since(t0))
	}
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, method(1), nil, nil); !errors.Is(err, ErrFailed) {
		t.Fatalf("failing handler: %v", err)
	}
	reply, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, method(2), nil, nil)
	if err != nil || !bytes.Equal(reply, []byte{1, 0}) {
		t.Fatalf("declared error: reply %v, %v", reply, err)
	}
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, method(9), nil, nil); !errors.Is(err, ErrProcUnavail) {
		t.Fatalf("missing procedure: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := nodes[0].Go(ctx, 2, method(3), nil)
	<-entered
	cancel()
	if _, err := f.Wait(); !errors.Is(err, ErrIntr) {
		t.Fatalf("abandoned call: %v", err)
	}
	close(release)
	// The server counts the abandoned call when its handler returns.
	eventually(t, "server to count the released handler", func() bool {
		return metricValue(t, nodes[1], "ci_ics_server_calls_total", "node=2", "service=echo", "proc=3") == 1
	})

	client, server := scrape(t, nodes[0].Metrics()), scrape(t, nodes[1].Metrics())
	counters := []struct {
		fams   map[string]*dto.MetricFamily
		family string
		labels []string
		want   float64
	}{
		{client, "ci_ics_client_calls_total", []string{"node=1", "service=echo", "proc=0"}, 20},
		{client, "ci_ics_client_calls_total", []string{"node=1", "service=echo", "proc=1"}, 1},
		{client, "ci_ics_client_errors_total", []string{"node=1", "service=echo", "proc=1", "code=failed"}, 1},
		{client, "ci_ics_client_errors_total", []string{"node=1", "service=echo", "proc=2", "code=failed"}, 1},
		{client, "ci_ics_client_errors_total", []string{"node=1", "service=echo", "proc=9", "code=proc_unavail"}, 1},
		{client, "ci_ics_client_errors_total", []string{"node=1", "service=echo", "proc=3", "code=intr"}, 1},
		{client, "ci_ics_client_peer_calls_total", []string{"node=1", "peer=2"}, 24},
		{client, "ci_ics_client_peer_errors_total", []string{"node=1", "peer=2", "code=failed"}, 2},
		{client, "ci_ics_client_peer_errors_total", []string{"node=1", "peer=2", "code=intr"}, 1},
		{server, "ci_ics_server_calls_total", []string{"node=2", "service=echo", "proc=0"}, 20},
		{server, "ci_ics_server_errors_total", []string{"node=2", "service=echo", "proc=1", "code=failed"}, 1},
		{server, "ci_ics_server_errors_total", []string{"node=2", "service=echo", "proc=2", "code=failed"}, 1},
		{server, "ci_ics_server_refused_total", []string{"node=2", "code=proc_unavail"}, 1},
	}
	for _, c := range counters {
		m, ok := sample(c.fams, c.family, c.labels...)
		if !ok {
			t.Errorf("%s%v missing", c.family, c.labels)
			continue
		}
		if got := m.GetCounter().GetValue(); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	// Successful procedures have no error series at all.
	for _, m := range client["ci_ics_client_errors_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "proc" && l.GetValue() == "0" {
				t.Errorf("error series for a procedure that never failed: %v", m.GetLabel())
			}
		}
	}

	for _, side := range []struct {
		fams   map[string]*dto.MetricFamily
		family string
		labels []string
		limit  time.Duration
	}{
		// Every client observation lies inside a call the test timed.
		{client, "ci_ics_client_duration_seconds", []string{"node=1", "service=echo", "proc=0"}, slowest},
		// A server observation ends after its reply is sent, which may be
		// after the caller has already returned (the handle goroutine can be
		// descheduled in between): all it is sure to lie inside is the time
		// since the calls began.
		{server, "ci_ics_server_duration_seconds", []string{"node=2", "service=echo", "proc=0"}, time.Since(callsBegan)},
	} {
		m, ok := sample(side.fams, side.family, side.labels...)
		if !ok {
			t.Fatalf("%s%v missing", side.family, side.labels)
		}
		h := m.GetHistogram()
		checkHistogram(t, side.family, h)
		if h.GetSampleCount() != 20 {
			t.Errorf("%s count %d, want 20", side.family, h.GetSampleCount())
		}
		// The quantiles cannot be past the bucket holding the limit.
		var bound float64
		for _, b := range h.GetBucket() {
			if b.GetUpperBound() >= side.limit.Seconds() {
				bound = b.GetUpperBound()
				break
			}
		}
		for _, q := range []float64{0.5, 0.99} {
			if v := quantile(q, h); v <= 0 || v > bound {
				t.Errorf("%s: quantile %v = %v s, want in (0, %v] (limit %v)", side.family, q, v, bound, side.limit)
			}
		}
	}
}

// TestMetricsPrometheus checks a scrape is what Prometheus expects of an
// exporter: every engine family has HELP text and the right TYPE, and
// the labels users aggregate by are there.
func TestMetricsPrometheus(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc, Name: "echo"}, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc, Proc: 9}, nil, nil); err == nil {
		t.Fatal("call to a missing procedure succeeded")
	}
	for _, n := range nodes {
		fams := scrape(t, n.Metrics())
		for name, f := range fams {
			doc, ok := families[name]
			if !ok {
				t.Errorf("node %d: family %s is not documented in families", n.Num(), name)
				continue
			}
			if f.GetHelp() != doc.help || f.GetHelp() == "" {
				t.Errorf("node %d: %s HELP %q", n.Num(), name, f.GetHelp())
			}
			if got := strings.ToLower(f.GetType().String()); got != doc.typ {
				t.Errorf("node %d: %s TYPE %s, want %s", n.Num(), name, got, doc.typ)
			}
			for _, m := range f.GetMetric() {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == "node" && l.GetValue() == strconv.Itoa(int(n.Num()))
				}) {
					t.Errorf("node %d: %s series without its node label: %v", n.Num(), name, m.GetLabel())
				}
			}
		}
	}
	client := scrape(t, nodes[0].Metrics())
	// An unnamed Method gets the name an unnamed Service would have.
	if _, ok := sample(client, "ci_ics_client_errors_total", "node=1", "service=svc"+echoSvc.String(), "proc=9", "code=proc_unavail"); !ok {
		t.Errorf("no client error series for the unnamed method")
	}
	if _, ok := sample(client, "ci_ics_client_duration_seconds", "node=1", "service=echo", "proc=0"); !ok {
		t.Errorf("no client histogram for echo")
	}
}

// TestMetricsSharedSet gives two nodes one set, with the library's
// process-wide metadata switch on: each family's HELP and TYPE must still
// appear once, or Prometheus refuses the whole scrape.
func TestMetricsSharedSet(t *testing.T) {
	metrics.ExposeMetadata(true)
	t.Cleanup(func() { metrics.ExposeMetadata(false) })
	set := metrics.NewSet()
	set.NewCounter("host_app_requests_total").Add(3) // the host's own metric in the same set
	nodes := startCluster(t, 2, func(c *Config) { c.Metrics = set })
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	mustRegister(t, nodes[0], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	for _, c := range [][2]int{{0, 2}, {1, 1}} {
		if _, err := nodes[c[0]].Call(ctxFor(t, 10*time.Second), NodeNum(c[1]), Method{Service: echoSvc, Name: "echo"}, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	fams := scrape(t, set)
	for _, node := range []string{"1", "2"} {
		if m, ok := sample(fams, "ci_ics_client_calls_total", "node="+node, "service=echo", "proc=0"); !ok || m.GetCounter().GetValue() != 1 {
			t.Errorf("node %s client calls: %v", node, m)
		}
	}
	if m, ok := sample(fams, "host_app_requests_total"); !ok || m.GetCounter().GetValue() != 3 {
		t.Errorf("host metric lost: %v", m)
	}
}

// TestMetricsPromtool lints a node's scrape with promlint, the library
// promtool uses (metricstest.Lint), and with promtool itself where it is
// installed (Debian: apt-get install prometheus).
func TestMetricsPromtool(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	if _, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc, Name: "echo"}, nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		var b bytes.Buffer
		n.Metrics().WritePrometheus(&b)
		metricstest.Lint(t, b.String())
		metricstest.Promtool(t, b.String())
	}
}

// TestMetricsExposed checks the transport series count what happened.
func TestMetricsExposed(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	for i := 0; i < 5; i++ {
		if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc}, []byte("0123456789"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodes[0].Call(ctxFor(t, 5*time.Second), 2, Method{Service: echoSvc, Proc: 9}, nil, nil); err == nil {
		t.Fatal("call to a missing procedure succeeded")
	}
	// The handle is marked idle only after its reply went out, which may
	// be after the caller has it: wait for that, do not race it.
	pool := nodes[1].lookupService(echoSvc).pool
	eventually(t, "the echo handle idle", func() bool { return pool.running.Load() == 0 })
	ch := "channel=" + ChanFirstService.String()
	checks := []struct {
		n      *Node
		family string
		labels []string
		want   func(float64) bool
	}{
		{nodes[0], "ci_ics_frames_out_total", []string{"node=1", "peer=2", ch}, func(v float64) bool { return v == 6 }},
		{nodes[0], "ci_ics_bytes_out_total", []string{"node=1", "peer=2", ch}, func(v float64) bool { return v == 6*32+5*10 }},
		// The 6 replies come back on the requests' connection, with credit grants.
		{nodes[0], "ci_ics_frames_in_total", []string{"node=1", "peer=2", ch}, func(v float64) bool { return v >= 6 }},
		{nodes[0], "ci_ics_credit_available_bytes", []string{"node=1", "peer=2", ch}, func(v float64) bool { return v > 0 }},
		{nodes[1], "ci_ics_frames_in_total", []string{"node=2", "peer=1", ch}, func(v float64) bool { return v == 6 }},
		{nodes[1], "ci_ics_requests_by_priority_total", []string{"node=2", "direction=in", "priority=0"}, func(v float64) bool { return v == 6 }},
		{nodes[1], "ci_ics_credit_window_bytes", []string{"node=2", "peer=1", ch}, func(v float64) bool { return v == 256<<10 }},
		{nodes[1], "ci_ics_handles", []string{"node=2", "service=echo", "state=busy"}, func(v float64) bool { return v == 0 }},
	}
	for _, c := range checks {
		if _, ok := sample(scrape(t, c.n.Metrics()), c.family, c.labels...); !ok {
			t.Errorf("%s%v missing", c.family, c.labels)
			continue
		}
		if v := metricValue(t, c.n, c.family, c.labels...); !c.want(v) {
			t.Errorf("%s%v = %v", c.family, c.labels, v)
		}
	}
}

// TestClientProcsBounded calls more distinct procedures than the client
// keeps series for: the rest count under service="other",proc="other".
func TestClientProcsBounded(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}})
	for proc := range uint32(maxClientProcs + 5) {
		_, _ = nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc, Proc: proc}, nil, nil)
	}
	fams := scrape(t, nodes[0].Metrics())
	if got := len(fams["ci_ics_client_calls_total"].GetMetric()); got != maxClientProcs+1 {
		t.Errorf("%d client call series, want %d and the overflow", got, maxClientProcs)
	}
	if m, ok := sample(fams, "ci_ics_client_calls_total", "node=1", "service=other", "proc=other"); !ok || m.GetCounter().GetValue() != 5 {
		t.Errorf("overflow series: %v", m)
	}
}

// BenchmarkMetricsObserve is what the metrics add to one call, both sides:
// the client's lookup and observation, and the server's observation.
func BenchmarkMetricsObserve(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.Peers, cfg.Insecure = 1, "test", map[NodeNum]string{2: "127.0.0.2:1"}, true
	n, err := New(testMode(cfg))
	if err != nil {
		b.Fatal(err)
	}
	svc := &service{Service: Service{ID: echoSvc, Name: "echo", Procs: []Handler{echo}}}
	svc.metrics = n.m.serverProcMetrics(&svc.Service)
	m := Method{Service: echoSvc, Name: "echo"}
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		svc.metrics[0].observe(time.Since(start).Seconds(), svc.outcome(nil, nil))
		n.observe(&m, 2, start, nil, false)
	}
}

// TestErrorCodes: the code label is the error's most specific sentinel.
func TestErrorCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: no credit: %w", ErrThrottled, context.DeadlineExceeded), "throttled"},
		{fmt.Errorf("%w: ctx", ErrTimedOut), "timed_out"},
		{&RemoteError{Code: StatusBusy}, "busy"},
		{fmt.Errorf("%w: table full", ErrTooManyCalls), "too_many_calls"},
		{&RemoteError{Code: StatusProcUnavail}, "proc_unavail"},
		{&RemoteError{Code: StatusFailed, Message: "handler broke"}, "failed"},
		{fmt.Errorf("%w: node 3", ErrNodeDown), "node_down"},
		{errors.New("not one of ours"), "unknown"},
	} {
		if got := codeName(errorCode(c.err)); got != c.want {
			t.Errorf("%v: code %s, want %s", c.err, got, c.want)
		}
	}
	// A server counts a handler error by the status it sends back.
	if got := codeName(statusCode(statusOf(errors.New("handler broke")))); got != "failed" {
		t.Errorf("handler error counts as %s", got)
	}
	// Names are unique: TestStatusTable.
}
