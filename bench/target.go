package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Runs against a running cluster (cibench compare/rpc/flow/priority
// --target): cibench is not a member and cannot make ICS calls, so one
// node's admin endpoint makes them (POST /v1/ping: that node calls
// another's ICS echo) and returns the latencies. Only ICS is measured
// there; what needs processes cibench spawns (raw TCP, net/rpc, gRPC-go,
// the raw-TCP control, the in-process deadlock) is listed as not measured
// rather than written as zeros.

// TargetRun is Report.Target: the cluster a run measured.
type TargetRun struct {
	Endpoints []string `json:"endpoints"`         // the admin endpoints given (--target)
	Cluster   string   `json:"cluster,omitempty"` // its name, from /v1/status
	// From and To are the node pair of the RPC scenarios: node From's
	// endpoint drives the calls to node To's echo.
	From uint32 `json:"from,omitempty"`
	To   uint32 `json:"to,omitempty"`
}

// NotMeasured names a peer or phase a run did not measure, and why.
type NotMeasured struct {
	What   string `json:"what"` // a peer name (raw, grpc, ics@1) or a phase (raw bulk, deadlock)
	Reason string `json:"reason"`
}

// met is a verdict in a text table.
func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

// writeNotMeasured lists what was not measured under a table.
func writeNotMeasured(w io.Writer, nm []NotMeasured) {
	for _, n := range nm {
		fmt.Fprintf(w, "not measured: %s (%s)\n", n.What, n.Reason)
	}
}

// TargetFlowResult is cibench flow and priority against a running cluster
// (PriorityResult.TargetFlow): node From drives ICS echoes to node To
// through its admin endpoint, in interleaved rounds of three phases:
//
//	bulk    Senders callers echo Size-byte payloads at priority 0
//	idle    one caller echoes ProbeSize bytes at ProbePriority
//	loaded  the same probe while a bulk run saturates the same node pair
//
// Rates are payload bytes each way per second (10^6 bytes = 1 MB) and
// medians of the per-round values; ratios medians of the per-round ratios.
// Only ICS is measured: the raw TCP stream and its control need a process
// cibench spawns (NotMeasured).
type TargetFlowResult struct {
	Rounds        int           `json:"rounds"`
	Duration      time.Duration `json:"duration_per_phase_ns"`
	Warmup        time.Duration `json:"warmup_per_phase_ns"`
	Size          int           `json:"message_bytes"`
	Senders       int           `json:"senders"`
	ProbeSize     int           `json:"probe_bytes"`
	ProbePriority int           `json:"probe_priority"`

	BulkMBPerSec   float64       `json:"bulk_mb_per_sec"`        // the bulk phase alone
	LoadedMBPerSec float64       `json:"loaded_bulk_mb_per_sec"` // the bulk under the loaded probe
	IdleP50        time.Duration `json:"idle_p50_ns"`
	IdleP99        time.Duration `json:"idle_p99_ns"`
	LoadedP50      time.Duration `json:"loaded_p50_ns"`
	LoadedP99      time.Duration `json:"loaded_p99_ns"`
	P50Ratio       float64       `json:"p50_ratio"` // loaded over idle
	P99Ratio       float64       `json:"p99_ratio"`
	IdleAll        Summary       `json:"idle_all_rounds"` // every round's probes merged
	LoadedAll      Summary       `json:"loaded_all_rounds"`
	P99Target      float64       `json:"p99_target"`   // FlowP99Target
	PriorityMet    bool          `json:"priority_met"` // P99Ratio <= P99Target

	PerRound    []TargetFlowRound `json:"per_round"`
	NotMeasured []NotMeasured     `json:"not_measured"`
	StartedAt   time.Time         `json:"started_at"`
}

// TargetFlowRound is one round of a TargetFlowResult.
type TargetFlowRound struct {
	Round      int        `json:"round"` // from 1
	Order      []string   `json:"order"` // the order the phases ran in
	Bulk       TargetBulk `json:"bulk"`
	Idle       Summary    `json:"idle"`
	Loaded     Summary    `json:"loaded"`
	LoadedBulk TargetBulk `json:"loaded_bulk"` // the bulk that loaded the probe
	P50Ratio   float64    `json:"p50_ratio"`   // loaded p50 over idle p50
	P99Ratio   float64    `json:"p99_ratio"`
}

// TargetBulk is one bulk run of echoes.
type TargetBulk struct {
	Calls    int64         `json:"calls"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	MBPerSec float64       `json:"mb_per_sec"` // payload bytes each way, 10^6 per second
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
}

// Summarize fills the medians, ratios and verdict from PerRound; idle and
// loaded are every round's probe histograms merged.
func (r *TargetFlowResult) Summarize(idle, loaded *Hist) {
	pick := func(f func(*TargetFlowRound) float64) float64 {
		xs := make([]float64, len(r.PerRound))
		for i := range r.PerRound {
			xs[i] = f(&r.PerRound[i])
		}
		return median(xs)
	}
	for i := range r.PerRound {
		rr := &r.PerRound[i]
		rr.P50Ratio, rr.P99Ratio = ratio(rr.Loaded.P50, rr.Idle.P50), ratio(rr.Loaded.P99, rr.Idle.P99)
	}
	r.BulkMBPerSec = pick(func(x *TargetFlowRound) float64 { return x.Bulk.MBPerSec })
	r.LoadedMBPerSec = pick(func(x *TargetFlowRound) float64 { return x.LoadedBulk.MBPerSec })
	r.IdleP50 = time.Duration(pick(func(x *TargetFlowRound) float64 { return float64(x.Idle.P50) }))
	r.IdleP99 = time.Duration(pick(func(x *TargetFlowRound) float64 { return float64(x.Idle.P99) }))
	r.LoadedP50 = time.Duration(pick(func(x *TargetFlowRound) float64 { return float64(x.Loaded.P50) }))
	r.LoadedP99 = time.Duration(pick(func(x *TargetFlowRound) float64 { return float64(x.Loaded.P99) }))
	r.P50Ratio = pick(func(x *TargetFlowRound) float64 { return x.P50Ratio })
	r.P99Ratio = pick(func(x *TargetFlowRound) float64 { return x.P99Ratio })
	r.IdleAll, r.LoadedAll = idle.Summary(), loaded.Summary()
	r.P99Target = FlowP99Target
	r.PriorityMet = r.P99Ratio <= r.P99Target
}

// WriteText renders the result as tables, what was not measured last.
func (r *TargetFlowResult) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d rounds x 3 phases x %s, bulk %s x %d callers at priority 0, probe %dB at priority %d\n\n",
		r.Rounds, r.Duration, SizeString(r.Size), r.Senders, r.ProbeSize, r.ProbePriority)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tbulk MB/s each way\tunder the probe\tidle p50\tidle p99\tloaded p50\tloaded p99\tp99 loaded/idle\ttarget\t\n")
	fmt.Fprintf(tw, "medians\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%.2f\t<= %.2f %s\t\n", r.BulkMBPerSec, r.LoadedMBPerSec, us(r.IdleP50), us(r.IdleP99),
		us(r.LoadedP50), us(r.LoadedP99), r.P99Ratio, r.P99Target, met(r.PriorityMet))
	for _, x := range r.PerRound {
		fmt.Fprintf(tw, "round %d\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%.2f\t\t\n", x.Round, x.Bulk.MBPerSec, x.LoadedBulk.MBPerSec, us(x.Idle.P50),
			us(x.Idle.P99), us(x.Loaded.P50), us(x.Loaded.P99), x.P99Ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	writeNotMeasured(&b, r.NotMeasured)
	_, err := io.WriteString(w, b.String())
	return err
}
