package engine

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	"github.com/clusterinfra/ci/framing"

	"github.com/VictoriaMetrics/metrics"
)

// Metrics a node exposes. Every series carries node="N". What users query
// is per service and procedure, on both sides of a call:
//
//	ci_ics_client_calls_total{service,proc}           every Call/Go/GoFunc, whatever its outcome
//	ci_ics_client_errors_total{service,proc,code}     those that failed, by CI status code
//	ci_ics_client_duration_seconds{service,proc}      histogram (le buckets) of the time the caller waited
//	ci_ics_server_calls_total{service,proc}           requests and one-way messages served by a handler
//	ci_ics_server_errors_total{service,proc,code}     those whose handler failed
//	ci_ics_server_duration_seconds{service,proc}      histogram from the request's arrival until its reply is handed to the connection
//
// code is the lower-case name of the error's sentinel (Status.String, errors.go: "timed_out", "node_down",
// "proc_unavail", "failed", ...). A declared error (Service.DeclaredErrors, Method.DeclaredErrors:
// what icsgen stubs send) travels as a successful reply but counts as code="failed". Error
// series are created at a code's first failure, so a procedure that never failed has none.
//
// Per peer, only series whose count grows with the number of peers (bounded by the cluster's
// configuration) and not with peers times procedures: ci_ics_client_peer_calls_total{peer},
// ci_ics_client_peer_errors_total{peer,code}, and the per peer and channel frame, byte and credit
// series. A per-peer latency histogram per procedure would be peers x procedures x buckets
// series, so there is none: a slow peer shows in ci_ics_client_peer_errors_total{code="timed_out"}.
//
// Service labels are Service.Name on the server and Method.Name on the client (icsgen fills both
// with the service's name); when empty, both use "svc" + the service ID, so the two sides match.
// proc is the procedure number. Client series are kept for at most maxClientProcs distinct
// service/procedure pairs; calls past that count under service="other",proc="other", so a caller
// inventing procedure numbers cannot grow the set without bound.

// rpcBuckets are the latency histograms' upper bounds, in seconds: 1-2-5 steps from 5 µs (an
// inline call on loopback takes ~25 µs) to 10 s (beyond any sane deadline), so that
// histogram_quantile has a bucket edge within a factor of 2.5 of any latency worth asking about.
var rpcBuckets = []float64{
	5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6,
	1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3,
	1, 2, 5, 10,
}

// maxClientProcs bounds the client's service/procedure series (see above).
const maxClientProcs = 1024

type familyDoc struct{ typ, help string }

// families documents every family the engine writes: its TYPE and HELP.
var families = map[string]familyDoc{
	"ci_ics_client_calls_total":          {"counter", "RPCs this node made (Call, Go, GoFunc), by service and procedure, whatever their outcome."},
	"ci_ics_client_errors_total":         {"counter", "RPCs this node made that failed, by service, procedure and CI status code; code=\"failed\" includes declared errors."},
	"ci_ics_client_duration_seconds":     {"histogram", "Time a caller waited for an RPC's outcome, by service and procedure."},
	"ci_ics_client_peer_calls_total":     {"counter", "RPCs this node made, by peer."},
	"ci_ics_client_peer_errors_total":    {"counter", "RPCs this node made that failed, by peer and CI status code."},
	"ci_ics_server_calls_total":          {"counter", "Requests and one-way messages this node's handlers served, by service and procedure."},
	"ci_ics_server_errors_total":         {"counter", "Requests and one-way messages whose handler failed, by service, procedure and CI status code; code=\"failed\" includes declared errors."},
	"ci_ics_server_duration_seconds":     {"histogram", "Time from a request's arrival until its handler returned and its reply was handed to the connection (waiting for a server handle included), by service and procedure."},
	"ci_ics_server_refused_total":        {"counter", "Requests refused before any handler ran (unknown service or procedure, version mismatch, too many in flight), by CI status code."},
	"ci_ics_oneway_sent_total":           {"counter", "One-way messages handed to a connection."},
	"ci_ics_late_replies_total":          {"counter", "Replies that arrived after their caller gave up or the peer was declared down."},
	"ci_ics_bad_frames_total":            {"counter", "Frames that did not parse; each one closes its connection."},
	"ci_ics_cancels_sent_total":          {"counter", "Cancel frames sent for calls whose caller gave up (deadline, cancel) before the reply."},
	"ci_ics_cancels_received_total":      {"counter", "Cancel frames that found their request still running or queued and cancelled its handler's context."},
	"ci_ics_cancelled_replies_total":     {"counter", "Replies not sent, or handlers not run, because the caller had cancelled the request or its deadline had passed."},
	"ci_ics_draining_refused_total":      {"counter", "Requests this node refused with ErrShuttingDown while draining (Shutdown)."},
	"ci_ics_handshake_rejects_total":     {"counter", "Connections refused during the handshake."},
	"ci_ics_peer_losses_total":           {"counter", "Links to a peer that ended (connection lost, peer restarted, declared down)."},
	"ci_ics_stale_replies_dropped_total": {"counter", "Replies not sent because the link their request came on had ended (the caller was failed already, and the peer may have restarted) or this node was closing."},
	"ci_ics_dial_attempts_total":         {"counter", "Connections this node tried to dial, by peer."},
	"ci_ics_dial_failures_total":         {"counter", "Dials that failed (refused, timed out, handshake refused), by peer."},
	"ci_ics_dial_backoff_refusals_total": {"counter", "Calls failed at once because the peer's last dial failed and its backoff had not run out."},
	"ci_ics_auth_failures_total":         {"counter", "Handshakes that failed authentication."},
	"ci_ics_limit_hits_total":            {"counter", "Times a bound against hostile or broken peers triggered, by limit."},
	"ci_ics_requests_by_priority_total":  {"counter", "Requests and one-way messages by ICS priority and direction."},
	"ci_ics_frames_in_total":             {"counter", "Frames received, by peer and channel."},
	"ci_ics_bytes_in_total":              {"counter", "Bytes received, by peer and channel."},
	"ci_ics_frames_out_total":            {"counter", "Frames sent, by peer and channel."},
	"ci_ics_bytes_out_total":             {"counter", "Bytes sent, by peer and channel."},
	"ci_ics_credit_available_bytes":      {"gauge", "Send credit left on the current connection to a peer, by channel."},
	"ci_ics_credit_waits_total":          {"counter", "Sends that had to wait for credit, by peer and channel."},
	"ci_ics_throttled_total":             {"counter", "Sends that gave up waiting for credit (ErrThrottled), by peer and channel."},
	"ci_ics_credit_window_bytes":         {"gauge", "Receive window granted to a peer, by channel."},
	"ci_ics_credit_held_bytes":           {"gauge", "Bytes received from a peer and waiting for a server handle, by channel."},
	"ci_ics_handles":                     {"gauge", "Server handles of a service, by state (busy, idle)."},
	"ci_ics_handles_queued":              {"gauge", "Requests waiting for a server handle of a service."},
}

// exporter writes the families of a user's metrics.Set that go through it
// (the engine's, and those MetricFamilies registers for CLMS and the
// services), each with its HELP and TYPE lines. VictoriaMetrics/metrics
// writes metadata only behind a process-wide switch (metrics.ExposeMetadata),
// which a library must not flip for its host, and then with empty help
// text. So each family's series live in a private set, and the user's set
// gets one writer (Set.RegisterMetricsWriter) that prints a family's
// metadata, then its series. Nodes that share a set share its exporter, so
// that each family's metadata appears once in a scrape.
type exporter struct {
	mu   sync.Mutex
	fams map[string]*family // family name -> its doc and series; guarded by mu
}

// family is one metric family: its TYPE and HELP (typ empty: not
// documented, written without metadata, which the tests catch) and the
// set holding its series.
type family struct {
	typ, help string
	set       *metrics.Set
}

// exporters maps a user's set to its exporter. Package-level because the
// set is the caller's object and has no room for ours; the key is weak and
// the entry goes with the set, so a process making many nodes (tests) does
// not keep their sets alive.
var exporters struct {
	mu sync.Mutex
	m  map[weak.Pointer[metrics.Set]]*exporter
}

func exporterFor(set *metrics.Set) *exporter {
	k := weak.Make(set)
	exporters.mu.Lock()
	defer exporters.mu.Unlock()
	if e := exporters.m[k]; e != nil {
		return e
	}
	if exporters.m == nil {
		exporters.m = make(map[weak.Pointer[metrics.Set]]*exporter)
	}
	e := &exporter{fams: make(map[string]*family)}
	exporters.m[k] = e
	set.RegisterMetricsWriter(e.write)
	runtime.AddCleanup(set, func(k weak.Pointer[metrics.Set]) {
		exporters.mu.Lock()
		delete(exporters.m, k)
		exporters.mu.Unlock()
	}, k)
	return e
}

// documented is the set holding family name's series, created with typ and
// help at its first use. A family is one type: registering it again as
// another is a bug in the caller, and panics as metrics.Set does on a
// duplicate name.
func (e *exporter) documented(name, typ, help string) *metrics.Set {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.fams[name]
	if f == nil {
		f = &family{typ: typ, help: help, set: metrics.NewSet()}
		e.fams[name] = f
	} else if f.typ != typ {
		panic(fmt.Sprintf("engine: metric family %s is a %s, not a %s", name, f.typ, typ))
	}
	return f.set
}

// family is the set of one of the engine's own families, documented in
// the families table.
func (e *exporter) family(name string) *metrics.Set {
	d := families[name]
	return e.documented(name, d.typ, d.help)
}

func (e *exporter) counter(name, labels string) *metrics.Counter {
	return e.family(name).GetOrCreateCounter(name + "{" + labels + "}")
}

func (e *exporter) gauge(name, labels string, f func() float64) {
	e.family(name).GetOrCreateGauge(name+"{"+labels+"}", f)
}

func (e *exporter) histogram(name, labels string) *metrics.PrometheusHistogram {
	return e.family(name).GetOrCreatePrometheusHistogramExt(name+"{"+labels+"}", rpcBuckets)
}

// write is the user's set's metrics writer: families in name order, each
// with HELP and TYPE (an engine family missing from the families table
// gets none, which TestMetricsPrometheus catches), the library's own
// metadata lines dropped in case the host turned metrics.ExposeMetadata on.
func (e *exporter) write(w io.Writer) {
	e.mu.Lock()
	names := slices.Sorted(maps.Keys(e.fams))
	fams := make([]family, len(names))
	for i, name := range names {
		fams[i] = *e.fams[name]
	}
	e.mu.Unlock()
	var series, out bytes.Buffer
	for i, name := range names {
		series.Reset()
		fams[i].set.WritePrometheus(&series) // outside e.mu: gauges take engine locks
		if series.Len() == 0 {
			continue
		}
		writeMetadata(&out, name, fams[i].typ, fams[i].help)
		for line := range bytes.Lines(series.Bytes()) {
			if line[0] != '#' {
				out.Write(line)
			}
		}
	}
	_, _ = w.Write(out.Bytes())
}

// helpEscaper escapes HELP text as the exposition format wants.
var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

// writeMetadata writes a family's HELP and TYPE lines; none when typ is
// empty (an undocumented family).
func writeMetadata(w *bytes.Buffer, name, typ, help string) {
	if typ == "" {
		return
	}
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, helpEscaper.Replace(help), name, typ)
}

// Codes in the code label are Statuses (errors.go): a failed call counts
// under Code(err), a handler's error under the status its reply carries, a
// declared error under "failed".
const (
	codeUnknown = int(StatusUnknown) // a client error matching no sentinel
	numCodes    = int(statusLimit)
	codeFailed  = int(StatusFailed) // handler errors, declared errors
)

func codeName(code int) string { return Status(code).String() }

// errorCode is err's code. Error path only: it walks err's chain once per
// sentinel.
func errorCode(err error) int { return int(Code(err)) }

// statusCode is the code of a reply status, as the caller will see it.
func statusCode(s Status) int { return int(s) }

// codeCounters count failures by code. A code's series is created at its
// first failure: most procedures never see most codes, and a series per
// code up front would multiply the scrape by 20.
type codeCounters struct {
	exp    *exporter
	family string
	labels string // the other labels, without braces
	c      [numCodes]atomic.Pointer[metrics.Counter]
}

func (cc *codeCounters) inc(code int) {
	c := cc.c[code].Load()
	if c == nil {
		c = cc.exp.counter(cc.family, cc.labels+`,code="`+codeName(code)+`"`)
		cc.c[code].Store(c) // a racing store stores the same counter
	}
	c.Inc()
}

// procMetrics are one procedure's series on one side of a call.
type procMetrics struct {
	calls    *metrics.Counter
	errs     codeCounters
	duration *metrics.PrometheusHistogram
}

func newProcMetrics(e *exporter, side, labels string) *procMetrics {
	return &procMetrics{
		calls:    e.counter("ci_ics_"+side+"_calls_total", labels),
		errs:     codeCounters{exp: e, family: "ci_ics_" + side + "_errors_total", labels: labels},
		duration: e.histogram("ci_ics_"+side+"_duration_seconds", labels),
	}
}

// observe counts one call that took seconds and failed with code (-1: it
// did not).
func (pm *procMetrics) observe(seconds float64, code int) {
	pm.calls.Inc()
	pm.duration.Update(seconds)
	if code >= 0 {
		pm.errs.inc(code)
	}
}

// serviceLabel is the service label both sides agree on.
func serviceLabel(name string, id ServiceID) string {
	if name == "" {
		return "svc" + id.String()
	}
	return name
}

// labelValue quotes a label value the way the exposition format wants.
func labelValue(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(v) + `"`
}

// serverProcMetrics builds a registered service's series, indexed like its
// Procs, so that serving a request finds them by index.
func (m *nodeMetrics) serverProcMetrics(s *Service) []*procMetrics {
	out := make([]*procMetrics, len(s.Procs))
	for i, h := range s.Procs {
		if h != nil {
			out[i] = newProcMetrics(m.exp, "server", fmt.Sprintf(`%s,service=%s,proc="%d"`, m.node, labelValue(s.Name), i))
		}
	}
	return out
}

// clientProcs finds the client series of a method: a copy-on-write map read
// without a lock or an allocation, written once per new service/procedure.
type clientProcs struct {
	m        *nodeMetrics
	byMethod atomic.Pointer[map[uint64]*procMetrics]
	mu       sync.Mutex   // serialises additions
	overflow *procMetrics // created at the first call past maxClientProcs; guarded by mu
}

func (c *clientProcs) get(meth *Method) *procMetrics {
	key := uint64(meth.Service)<<32 | uint64(meth.Proc)
	if pm := (*c.byMethod.Load())[key]; pm != nil {
		return pm
	}
	return c.add(key, meth)
}

func (c *clientProcs) add(key uint64, meth *Method) *procMetrics {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.byMethod.Load()
	if pm := old[key]; pm != nil {
		return pm
	}
	if len(old) >= maxClientProcs {
		if c.overflow == nil {
			c.overflow = newProcMetrics(c.m.exp, "client", c.m.node+`,service="other",proc="other"`)
		}
		return c.overflow
	}
	next := make(map[uint64]*procMetrics, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	pm := newProcMetrics(c.m.exp, "client", fmt.Sprintf(`%s,service=%s,proc="%d"`, c.m.node, labelValue(serviceLabel(meth.Name, meth.Service)), meth.Proc))
	next[key] = pm
	c.byMethod.Store(&next)
	return pm
}

// peerMetrics are a peer's client series.
type peerMetrics struct {
	calls *metrics.Counter
	errs  codeCounters
}

func (m *nodeMetrics) forPeer(peer NodeNum) *peerMetrics {
	l := fmt.Sprintf(`%s,peer="%d"`, m.node, peer)
	return &peerMetrics{
		calls: m.exp.counter("ci_ics_client_peer_calls_total", l),
		errs:  codeCounters{exp: m.exp, family: "ci_ics_client_peer_errors_total", labels: l},
	}
}

// nodeMetrics holds the counters a node updates on hot paths, resolved once
// so that an update is an atomic add and never a name lookup.
type nodeMetrics struct {
	set  *metrics.Set // the user's, see Node.Metrics
	exp  *exporter
	node string // the node label, node="N"

	client  clientProcs
	refused codeCounters

	lateReplies, badFrames, handshakeRejects, peerLosses *metrics.Counter
	oneWaySent, staleReplies, dialBackoffRefusals        *metrics.Counter
	cancelsSent, cancelsReceived, cancelledReplies       *metrics.Counter
	drainingRefused                                      *metrics.Counter

	framesOutByPrio, framesInByPrio [framing.MaxPriority + 1]*metrics.Counter

	authFailures                                          *metrics.Counter
	limitFrameSize, limitUnauthPerSource, limitInflight   *metrics.Counter
	limitHandshakeTimeout, limitDecompress                *metrics.Counter
	limitDescriptors, limitConnections                    *metrics.Counter
	limitHelloSize, limitPending, limitHandshakeRate      *metrics.Counter
	limitPendingWrite, limitWriteTimeout                  *metrics.Counter
	limitCredit, limitInflightBytes, limitConnsPerChannel *metrics.Counter
	limitViolationHoldOff                                 *metrics.Counter
}

func newNodeMetrics(set *metrics.Set, node NodeNum) *nodeMetrics {
	e := exporterFor(set)
	l := fmt.Sprintf(`node="%d"`, node)
	c := func(name, extra string) *metrics.Counter {
		if extra != "" {
			extra = "," + extra
		}
		return e.counter(name, l+extra)
	}
	m := &nodeMetrics{
		set:                 set,
		exp:                 e,
		node:                l,
		refused:             codeCounters{exp: e, family: "ci_ics_server_refused_total", labels: l},
		lateReplies:         c("ci_ics_late_replies_total", ""),
		badFrames:           c("ci_ics_bad_frames_total", ""),
		handshakeRejects:    c("ci_ics_handshake_rejects_total", ""),
		peerLosses:          c("ci_ics_peer_losses_total", ""),
		oneWaySent:          c("ci_ics_oneway_sent_total", ""),
		staleReplies:        c("ci_ics_stale_replies_dropped_total", ""),
		dialBackoffRefusals: c("ci_ics_dial_backoff_refusals_total", ""),
		cancelsSent:         c("ci_ics_cancels_sent_total", ""),
		cancelsReceived:     c("ci_ics_cancels_received_total", ""),
		cancelledReplies:    c("ci_ics_cancelled_replies_total", ""),
		drainingRefused:     c("ci_ics_draining_refused_total", ""),
	}
	m.client.m = m
	m.client.byMethod.Store(&map[uint64]*procMetrics{})
	m.authFailures = c("ci_ics_auth_failures_total", "")
	m.limitFrameSize = c("ci_ics_limit_hits_total", `limit="frame_size"`)
	m.limitDecompress = c("ci_ics_limit_hits_total", `limit="decompressed_size"`)
	m.limitHandshakeTimeout = c("ci_ics_limit_hits_total", `limit="handshake_timeout"`)
	m.limitUnauthPerSource = c("ci_ics_limit_hits_total", `limit="unauth_per_source"`)
	m.limitInflight = c("ci_ics_limit_hits_total", `limit="inflight_per_peer"`)
	m.limitDescriptors = c("ci_ics_limit_hits_total", `limit="descriptors"`)
	m.limitConnections = c("ci_ics_limit_hits_total", `limit="connections"`)
	m.limitHelloSize = c("ci_ics_limit_hits_total", `limit="hello_size"`)
	m.limitPending = c("ci_ics_limit_hits_total", `limit="pending_handshakes"`)
	m.limitHandshakeRate = c("ci_ics_limit_hits_total", `limit="handshake_rate"`)
	m.limitPendingWrite = c("ci_ics_limit_hits_total", `limit="pending_write"`)
	m.limitWriteTimeout = c("ci_ics_limit_hits_total", `limit="write_timeout"`)
	m.limitCredit = c("ci_ics_limit_hits_total", `limit="credit"`)
	m.limitInflightBytes = c("ci_ics_limit_hits_total", `limit="inflight_bytes_per_peer"`)
	m.limitConnsPerChannel = c("ci_ics_limit_hits_total", `limit="conns_per_channel"`)
	m.limitViolationHoldOff = c("ci_ics_limit_hits_total", `limit="violation_hold_off"`)
	for p := range m.framesOutByPrio {
		m.framesOutByPrio[p] = c("ci_ics_requests_by_priority_total", fmt.Sprintf(`direction="out",priority="%d"`, p))
		m.framesInByPrio[p] = c("ci_ics_requests_by_priority_total", fmt.Sprintf(`direction="in",priority="%d"`, p))
	}
	return m
}

// connMetrics are per channel and peer.
type connMetrics struct {
	framesIn, bytesIn, framesOut, bytesOut *metrics.Counter
}

func (m *nodeMetrics) forConn(node, peer NodeNum, ch Channel) connMetrics {
	l := fmt.Sprintf(`node="%d",peer="%d",channel="%s"`, node, peer, ch)
	return connMetrics{
		framesIn:  m.exp.counter("ci_ics_frames_in_total", l),
		bytesIn:   m.exp.counter("ci_ics_bytes_in_total", l),
		framesOut: m.exp.counter("ci_ics_frames_out_total", l),
		bytesOut:  m.exp.counter("ci_ics_bytes_out_total", l),
	}
}

// newSendCredit builds a dialler's credit state with its counters, and
// exposes the credit available on the peer's current connection.
func (m *nodeMetrics) newSendCredit(n *Node, p *peer, ch Channel) *sendCredit {
	l := fmt.Sprintf(`node="%d",peer="%d",channel="%s"`, n.cfg.Node, p.num, ch)
	m.exp.gauge("ci_ics_credit_available_bytes", l, func() float64 {
		if c := p.out[ch].Load(); c != nil && c.credit != nil {
			return float64(c.credit.avail.Load())
		}
		return 0
	})
	return &sendCredit{
		waits:     m.exp.counter("ci_ics_credit_waits_total", l),
		throttled: m.exp.counter("ci_ics_throttled_total", l),
	}
}

// watchReceiveWindow exposes, per peer and channel, the window granted and
// the bytes waiting for server handles, read at scrape time.
func (m *nodeMetrics) watchReceiveWindow(n *Node, p *peer, ch Channel) {
	l := fmt.Sprintf(`node="%d",peer="%d",channel="%s"`, n.cfg.Node, p.num, ch)
	m.exp.gauge("ci_ics_credit_window_bytes", l, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		var w int64
		for c := range p.inbound {
			if c.channel == ch && c.recv != nil {
				w += c.recv.window.Load()
			}
		}
		return float64(w)
	})
	m.exp.gauge("ci_ics_credit_held_bytes", l, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		var held int64
		for c := range p.inbound {
			if c.channel == ch && c.recv != nil {
				held += c.recv.held.Load()
			}
		}
		return float64(held)
	})
}

// watchPool exposes a service's server handles, busy and idle.
func (m *nodeMetrics) watchPool(node NodeNum, pool *handlePool) {
	l := fmt.Sprintf(`node="%d",service=%s`, node, labelValue(pool.name))
	m.exp.gauge("ci_ics_handles", l+`,state="busy"`, func() float64 {
		return float64(pool.running.Load())
	})
	m.exp.gauge("ci_ics_handles", l+`,state="idle"`, func() float64 {
		return float64(pool.started.Load() - pool.running.Load())
	})
	m.exp.gauge("ci_ics_handles_queued", l, func() float64 {
		return float64(pool.queued.Load())
	})
}
