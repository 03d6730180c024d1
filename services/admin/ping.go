package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
)

// POST /v1/ping: this node calls another member's ICS echo (cinode's
// ci.bench.echo on a channel of its own; the engine's info service echo,
// Node.Ping, serves too) and reports the round trips' latency and rate. cibench
// drives it to measure a running cluster (cibench compare --target), since
// cibench itself is not a member and cannot make ICS calls.

// Pinger makes one ICS echo round trip: *engine.Node (its info service,
// on ChanCLMS) or an echo service of the program's own. MaxPayload bounds
// a ping's size.
type Pinger interface {
	Ping(ctx context.Context, to engine.NodeNum, payload, reply []byte) ([]byte, error)
	MaxPayload() int
}

var _ Pinger = (*engine.Node)(nil)

// Bounds of one /v1/ping run, enforced here: a request over one is a 400
// that names it.
const (
	MaxPingCalls       = 10_000_000       // calls, and warmup: 10 s of one caller at 1 µs, far more than a p99.9 needs
	MaxPingConcurrency = 1024             // callers at once: 4x cibench rpc's 256
	MaxPingDuration    = 60 * time.Second // the timed phase, and separately the warm-up
	MaxPingInFlight    = 64 << 20         // concurrency x size: the reply buffers this node holds
	MaxPingErrors      = 100              // failed calls after which a run stops: a dead peer fails fast, endlessly
)

// Defaults of a /v1/ping request's omitted fields.
const (
	DefaultPingSize  = 64   // a small RPC, where per-call cost dominates
	DefaultPingCalls = 1000 // when neither calls nor duration is given: a p99 in well under a second
)

// PingRequest is the body of POST /v1/ping.
type PingRequest struct {
	Node        uint32 `json:"node"`                  // whose echo to call: another member
	Calls       int    `json:"calls,omitempty"`       // timed calls in all; 0 with a duration: as many as fit
	Duration    string `json:"duration,omitempty"`    // a Go duration ("2s"): the timed phase ends then, or at calls if first; at most 60s
	Size        int    `json:"size,omitempty"`        // payload bytes each way; default 64, at most the node's MaxPayload
	Concurrency int    `json:"concurrency,omitempty"` // callers at once; default 1
	Priority    int    `json:"priority,omitempty"`    // ICS priority 0..4
	Warmup      int    `json:"warmup,omitempty"`      // untimed calls first (connections, buffers, CPU clock)
	Histogram   bool   `json:"histogram,omitempty"`   // also return every latency bucket (PingResult.Histogram)
}

// PingResult is /v1/ping's reply. Latencies are of the timed calls that
// succeeded, in nanoseconds.
type PingResult struct {
	Schema      string           `json:"schema"`
	From        uint32           `json:"from"` // this node: the caller
	Node        uint32           `json:"node"` // the echo's node
	Size        int              `json:"size"`
	Concurrency int              `json:"concurrency"`
	Priority    int              `json:"priority"`
	Warmup      int              `json:"warmup"`
	Calls       int64            `json:"calls"`          // timed calls that succeeded
	Errors      int64            `json:"errors"`         // calls that failed, warm-up included
	ErrorCodes  map[string]int64 `json:"errors_by_code"` // by ICS status: node_down, timed_out, busy, ...
	LastError   string           `json:"last_error,omitempty"`
	// Stopped says why the run ended before its calls or duration:
	// "errors" (MaxPingErrors failed calls). Absent when it ran in full.
	Stopped     string        `json:"stopped,omitempty"`
	Elapsed     time.Duration `json:"elapsed_ns"` // the timed phase
	CallsPerSec float64       `json:"calls_per_sec"`
	BytesPerSec float64       `json:"bytes_per_sec"` // payload bytes each way
	Latency     PingLatency   `json:"latency"`
}

// PingLatency is the distribution of a run's round trips.
type PingLatency struct {
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
	// CDF samples the distribution, dense in the tail, for plots; empty
	// when no call succeeded.
	CDF []PingQuantile `json:"cdf"`
	// Histogram, when asked for, is the whole distribution: [ns, count]
	// for every non-empty bucket of an HdrHistogram of 1 ns..10 s at 3
	// significant digits, ascending by ns (the bucket's lowest value), so
	// that a client merges several runs exactly (cibench's rounds).
	Histogram [][2]int64 `json:"histogram,omitempty"`
}

// PingQuantile is one point of a CDF: the fraction of calls (0..1) that
// took at most Latency.
type PingQuantile struct {
	Fraction float64       `json:"fraction"`
	Latency  time.Duration `json:"latency_ns"`
}

// pingQuantiles are where PingLatency.CDF samples (percent), as cibench's
// reports do.
var pingQuantiles = []float64{0.1, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100}

// pingPlan is a validated PingRequest.
type pingPlan struct {
	to          engine.NodeNum
	calls       int // 0: until the deadline
	duration    time.Duration
	size        int
	concurrency int
	prio        uint8
	warmup      int
	histogram   bool
}

// pingPlan checks req against the bounds and fills the defaults. self is
// this node, maxPayload its engine's.
func (req *PingRequest) plan(self clms.NodeNum, maxPayload int) (pingPlan, error) {
	p := pingPlan{to: engine.NodeNum(req.Node), calls: req.Calls, size: DefaultPingSize, concurrency: 1, warmup: req.Warmup}
	if req.Size != 0 {
		p.size = req.Size
	}
	if req.Concurrency != 0 {
		p.concurrency = req.Concurrency
	}
	if req.Duration != "" {
		d, err := time.ParseDuration(req.Duration)
		if err != nil || d <= 0 || d > MaxPingDuration {
			return p, fmt.Errorf("duration %q: want a Go duration above 0 and at most %v", req.Duration, MaxPingDuration)
		}
		p.duration = d
	}
	switch {
	case req.Node == 0:
		return p, errors.New("node: want the number of the member whose echo to call, 1 or more")
	case clms.NodeNum(req.Node) == self:
		return p, fmt.Errorf("node %d is this node: ask another member's endpoint, or ping another node", req.Node)
	case req.Calls < 0 || req.Calls > MaxPingCalls:
		return p, fmt.Errorf("calls %d: want 0..%d", req.Calls, MaxPingCalls)
	case req.Warmup < 0 || req.Warmup > MaxPingCalls:
		return p, fmt.Errorf("warmup %d: want 0..%d", req.Warmup, MaxPingCalls)
	case p.size < 0 || p.size > maxPayload:
		return p, fmt.Errorf("size %d: want 0..%d (this node's MaxPayload)", req.Size, maxPayload)
	case p.concurrency < 1 || p.concurrency > MaxPingConcurrency:
		return p, fmt.Errorf("concurrency %d: want 1..%d", req.Concurrency, MaxPingConcurrency)
	case req.Priority < 0 || req.Priority > 4:
		return p, fmt.Errorf("priority %d: want 0..4", req.Priority)
	case int64(p.concurrency)*int64(p.size) > MaxPingInFlight:
		return p, fmt.Errorf("concurrency %d x size %d: over %d bytes in flight", p.concurrency, p.size, MaxPingInFlight)
	}
	p.prio, p.histogram = uint8(req.Priority), req.Histogram
	if p.calls == 0 && p.duration == 0 {
		p.calls = DefaultPingCalls
	}
	if p.duration == 0 {
		p.duration = MaxPingDuration // calls end it, or this bound does
	}
	return p, nil
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	var req PingRequest
	if !s.decode(w, r, &req, false) {
		return
	}
	if s.cfg.Pinger == nil {
		s.fail(w, http.StatusNotImplemented, "not_implemented", "this node cannot make ICS calls for /v1/ping")
		return
	}
	self := s.src.Local().Node
	p, err := req.plan(self, s.cfg.Pinger.MaxPayload())
	if err != nil {
		s.fail(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	select {
	case s.pings <- struct{}{}:
		defer func() { <-s.pings }()
	default:
		s.fail(w, http.StatusTooManyRequests, "busy", fmt.Sprintf("%d pings already running on node %d: try again when one ends", s.cfg.MaxPings, self))
		return
	}
	// The request's context ends when the client goes away or the
	// endpoint closes: the run stops with it, and nobody reads a reply.
	ctx := r.Context()
	res := runPing(ctx, s.cfg.Pinger, p)
	if ctx.Err() != nil {
		return
	}
	res.From = uint32(self)
	s.cfg.Logger.Info("ping run on an admin request", "to", p.to, "size", p.size, "concurrency", p.concurrency, "priority", p.prio,
		"calls", res.Calls, "errors", res.Errors, "p50", res.Latency.P50, "remote", r.RemoteAddr)
	s.reply(w, http.StatusOK, res)
}

// pingRun is one run's shared state.
type pingRun struct {
	pinger  Pinger
	p       pingPlan
	payload []byte // shared by the callers: the engine only reads arguments
	ctx     context.Context
	stop    context.CancelFunc // MaxPingErrors reached

	next atomic.Int64 // calls handed out in the current phase

	mu        sync.Mutex // guards the fields below
	errors    int64
	codes     map[string]int64
	lastError string
	stopped   string
}

// Histogram bounds, as cibench's: 1 ns resolution at 3 significant digits
// up to 10 s (slower calls are clamped).
const (
	pingHistLowest  = 1
	pingHistHighest = int64(10 * time.Second)
	pingHistDigits  = 3
)

// runPing runs the warm-up, then the timed phase, and summarizes.
func runPing(parent context.Context, pinger Pinger, p pingPlan) PingResult {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	run := &pingRun{pinger: pinger, p: p, payload: make([]byte, p.size), ctx: ctx, stop: cancel, codes: map[string]int64{}}
	for i := range run.payload {
		run.payload[i] = byte(i)
	}
	pctx := engine.WithPriority(ctx, p.prio)
	if p.warmup > 0 {
		wctx, wcancel := context.WithTimeout(pctx, MaxPingDuration)
		run.phase(wctx, p.warmup, false)
		wcancel()
	}
	tctx, tcancel := context.WithTimeout(pctx, p.duration)
	start := time.Now()
	h := run.phase(tctx, p.calls, true)
	elapsed := time.Since(start)
	tcancel()

	res := PingResult{Schema: SchemaVersion, Node: uint32(p.to), Size: p.size, Concurrency: p.concurrency, Priority: int(p.prio),
		Warmup: p.warmup, Calls: h.TotalCount(), Elapsed: elapsed}
	run.mu.Lock()
	res.Errors, res.ErrorCodes, res.LastError, res.Stopped = run.errors, run.codes, run.lastError, run.stopped
	run.mu.Unlock()
	if s := elapsed.Seconds(); s > 0 {
		res.CallsPerSec = float64(res.Calls) / s
		res.BytesPerSec = res.CallsPerSec * float64(p.size)
	}
	res.Latency.CDF = []PingQuantile{}
	if res.Calls > 0 {
		res.Latency = PingLatency{Mean: time.Duration(h.Mean()), P50: quantile(h, 50), P90: quantile(h, 90), P99: quantile(h, 99),
			P999: quantile(h, 99.9), Max: time.Duration(h.Max())}
		for _, q := range pingQuantiles {
			res.Latency.CDF = append(res.Latency.CDF, PingQuantile{Fraction: q / 100, Latency: quantile(h, q)})
		}
		if p.histogram {
			for _, b := range h.Distribution() {
				if b.Count > 0 {
					res.Latency.Histogram = append(res.Latency.Histogram, [2]int64{b.From, b.Count})
				}
			}
		}
	}
	return res
}

func quantile(h *hdrhistogram.Histogram, q float64) time.Duration {
	return time.Duration(h.ValueAtQuantile(q))
}

// phase runs the callers until calls are made (0: no count) or ctx ends,
// and returns the merged latencies when timed (an empty histogram when
// not).
func (run *pingRun) phase(ctx context.Context, calls int, timed bool) *hdrhistogram.Histogram {
	run.next.Store(0)
	// One histogram per caller up to 16 (each is ~200 KB), shared beyond.
	shards := make([]struct {
		mu sync.Mutex // guards h
		h  *hdrhistogram.Histogram
	}, min(run.p.concurrency, 16))
	for i := range shards {
		shards[i].h = hdrhistogram.New(pingHistLowest, pingHistHighest, pingHistDigits)
	}
	var wg sync.WaitGroup
	for i := range run.p.concurrency {
		sh := &shards[i%len(shards)]
		wg.Go(func() {
			var reply []byte // grown by the first echo, reused after: nothing held for calls that fail
			for ctx.Err() == nil {
				if calls > 0 && run.next.Add(1) > int64(calls) {
					return
				}
				t0 := time.Now()
				var err error
				reply, err = run.pinger.Ping(ctx, run.p.to, run.payload, reply[:0])
				d := time.Since(t0)
				if err != nil {
					if ctx.Err() == nil { // not the deadline or the client leaving
						run.failed(err)
					}
					continue
				}
				if timed {
					v := min(max(int64(d), pingHistLowest), pingHistHighest)
					sh.mu.Lock()
					_ = sh.h.RecordValue(v) // cannot fail: v is clamped into range
					sh.mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	h := shards[0].h
	for i := 1; i < len(shards); i++ {
		h.Merge(shards[i].h)
	}
	return h
}

// failed counts a failed call, and stops the run at MaxPingErrors.
func (run *pingRun) failed(err error) {
	run.mu.Lock()
	defer run.mu.Unlock()
	run.errors++
	run.codes[engine.Code(err).String()]++
	run.lastError = err.Error()
	if run.errors >= MaxPingErrors && run.stopped == "" {
		run.stopped = "errors"
		run.stop()
	}
}
