package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/framing"
)

// Issue 3's targets.
const (
	// FlowBulkTarget: ICS bulk throughput over raw TCP's, at least.
	FlowBulkTarget = 0.8
	// FlowP99Target: loaded priority p99 over idle p99, at most.
	FlowP99Target = 2.0
)

// The four phases of a flow round.
const (
	PhaseRaw    = "raw"    // raw TCP stream alone
	PhaseICS    = "ics"    // ICS bulk alone
	PhaseIdle   = "idle"   // priority probe alone
	PhaseLoaded = "loaded" // priority probe while ICS bulk saturates the channel

	// PhaseRawLoaded is the optional control (FlowRunConfig.Control): the
	// priority probe while the raw TCP stream saturates the loopback. What
	// it adds over idle is the machine's share (CPU, kernel, scheduler), not
	// the engine's.
	PhaseRawLoaded = "raw-loaded"
)

// phases lists the phases a round runs.
func (c *FlowRunConfig) phases() []string {
	ph := []string{PhaseRaw, PhaseICS, PhaseIdle, PhaseLoaded}
	if c.Control {
		ph = append(ph, PhaseRawLoaded)
	}
	return ph
}

// FlowRunConfig says what each phase of a flow run does.
type FlowRunConfig struct {
	Rounds   int           // each runs all four phases, in an order rotated per round
	Duration time.Duration // length of each phase
	Warmup   time.Duration // each phase runs this long, untimed, before the first round; 0: none
	Size     int           // bulk message bytes, raw and ICS alike
	Senders  int           // goroutines sending ICS bulk messages (raw has one stream and one writer)
	// ProbeSize is the priority probe's request and response size (at least 4).
	ProbeSize int
	// ProbePriority is the probe's ICS priority, 1..4.
	ProbePriority uint8
	// Control adds a fifth phase, PhaseRawLoaded.
	Control bool

	// Progress, if set, is called as each timed phase starts.
	Progress func(round int, phase string)
}

// DefaultFlowRunConfig is issue 3's measurement.
func DefaultFlowRunConfig() FlowRunConfig {
	return FlowRunConfig{
		Rounds:        5,                      // medians of 5 per-round ratios
		Duration:      2 * time.Second,        // long enough for a p99 from ~10^4 probes and many windows of bulk
		Warmup:        500 * time.Millisecond, // connections, buffers, handle pools, CPU clock
		Size:          64 << 10,               // "large messages": a quarter of the default window
		Senders:       4,                      // a few, so that one waiting for credit does not idle the channel
		ProbeSize:     64,                     // issue 3's 64-byte priority RPC
		ProbePriority: 1,                      // the lowest priority channel: the hardest case
	}
}

func (c *FlowRunConfig) validate() error {
	switch {
	case c.Rounds < 1:
		return fmt.Errorf("bench: flow rounds %d, need at least 1", c.Rounds)
	case c.Duration <= 0:
		return fmt.Errorf("bench: flow phase duration %v, need more than 0", c.Duration)
	case c.Warmup < 0:
		return fmt.Errorf("bench: negative flow warm-up %v", c.Warmup)
	case c.Size < 1 || c.Size > framing.DefaultMaxPayload:
		return fmt.Errorf("bench: flow message size %d out of 1..%d", c.Size, framing.DefaultMaxPayload)
	case c.Senders < 1:
		return fmt.Errorf("bench: flow senders %d, need at least 1", c.Senders)
	case c.ProbePriority < 1 || c.ProbePriority > framing.MaxPriority:
		return fmt.Errorf("bench: probe priority %d out of 1..%d", c.ProbePriority, framing.MaxPriority)
	}
	_, err := NewRequest(c.ProbeSize, c.ProbeSize)
	return err
}

// FlowRound is one round: every phase once.
type FlowRound struct {
	Round      int        `json:"round"` // from 1
	Order      []string   `json:"order"` // the order the phases ran in
	Raw        BulkResult `json:"raw"`
	ICS        BulkResult `json:"ics"`
	Idle       Summary    `json:"idle"`        // probe latencies, idle
	Loaded     Summary    `json:"loaded"`      // probe latencies under ICS bulk
	LoadedBulk BulkResult `json:"loaded_bulk"` // the ICS bulk that loaded them
	BulkRatio  float64    `json:"bulk_ratio"`  // ICS MB/s over raw MB/s
	P50Ratio   float64    `json:"p50_ratio"`   // loaded p50 over idle p50
	P99Ratio   float64    `json:"p99_ratio"`   // loaded p99 over idle p99

	// The control phase, with FlowRunConfig.Control.
	RawLoaded         *Summary    `json:"raw_loaded,omitempty"`      // probe latencies under the raw stream
	RawLoadedBulk     *BulkResult `json:"raw_loaded_bulk,omitempty"` // the raw stream that loaded them
	RawLoadedP99Ratio float64     `json:"raw_loaded_p99_ratio,omitempty"`

	idle, loaded, rawLoaded *Hist // while the round runs, to be merged
}

// FlowResult is the outcome of RunFlow. Rates and latencies are medians of
// the per-round values, ratios medians of the per-round ratios.
type FlowResult struct {
	Rounds        int           `json:"rounds"`
	Duration      time.Duration `json:"duration_per_phase_ns"`
	Warmup        time.Duration `json:"warmup_per_phase_ns"`
	Size          int           `json:"message_bytes"`
	Senders       int           `json:"senders"`
	Window        int           `json:"credit_window_bytes"`
	ProbeSize     int           `json:"probe_bytes"`
	ProbePriority uint8         `json:"probe_priority"`
	Env           Env           `json:"env"`

	RawMBPerSec    float64       `json:"raw_mb_per_sec"`
	ICSMBPerSec    float64       `json:"ics_mb_per_sec"`
	BulkRatio      float64       `json:"bulk_ratio"`
	LoadedMBPerSec float64       `json:"loaded_ics_mb_per_sec"`
	IdleP50        time.Duration `json:"idle_p50_ns"`
	IdleP99        time.Duration `json:"idle_p99_ns"`
	LoadedP50      time.Duration `json:"loaded_p50_ns"`
	LoadedP99      time.Duration `json:"loaded_p99_ns"`
	P50Ratio       float64       `json:"p50_ratio"`
	P99Ratio       float64       `json:"p99_ratio"`
	IdleAll        Summary       `json:"idle_all_rounds"` // every round's probes merged
	LoadedAll      Summary       `json:"loaded_all_rounds"`

	// The control phase's medians, with FlowRunConfig.Control.
	RawLoadedP50      time.Duration `json:"raw_loaded_p50_ns,omitempty"`
	RawLoadedP99      time.Duration `json:"raw_loaded_p99_ns,omitempty"`
	RawLoadedP99Ratio float64       `json:"raw_loaded_p99_ratio,omitempty"`
	RawLoadedMBPerSec float64       `json:"raw_loaded_mb_per_sec,omitempty"`

	BulkTarget  float64 `json:"bulk_target"`
	P99Target   float64 `json:"p99_target"`
	BulkMet     bool    `json:"bulk_met"`
	PriorityMet bool    `json:"priority_met"`

	PerRound  []FlowRound `json:"per_round"`
	StartedAt time.Time   `json:"started_at"`
}

// RunFlow measures the bulk and priority targets in interleaved rounds.
// Each round runs the four phases (raw bulk, ICS bulk, idle probe, loaded
// probe), starting one further along the list each round, so that no phase
// always runs first or after the same neighbour.
func RunFlow(ctx context.Context, c *FlowClient, cfg FlowRunConfig) (*FlowResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	res := &FlowResult{
		Rounds: cfg.Rounds, Duration: cfg.Duration, Warmup: cfg.Warmup, Size: cfg.Size, Senders: cfg.Senders,
		Window: c.Window(), ProbeSize: cfg.ProbeSize, ProbePriority: cfg.ProbePriority,
		Env: CurrentEnv(), BulkTarget: FlowBulkTarget, P99Target: FlowP99Target, StartedAt: time.Now(),
	}
	if cfg.Warmup > 0 {
		var r FlowRound
		for _, ph := range cfg.phases() {
			if err := runPhase(ctx, c, cfg, cfg.Warmup, ph, &r); err != nil {
				return nil, fmt.Errorf("warm-up, %s: %w", ph, err)
			}
		}
	}
	idleAll, loadedAll := NewHist(), NewHist()
	phases := cfg.phases()
	for r := range cfg.Rounds {
		round := FlowRound{Round: r + 1}
		for k := range phases {
			ph := phases[(k+r)%len(phases)]
			round.Order = append(round.Order, ph)
			if cfg.Progress != nil {
				cfg.Progress(r+1, ph)
			}
			if err := runPhase(ctx, c, cfg, cfg.Duration, ph, &round); err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", r+1, ph, err)
			}
		}
		idleAll.Merge(round.idle)
		loadedAll.Merge(round.loaded)
		round.idle, round.loaded, round.rawLoaded = nil, nil, nil
		round.BulkRatio = round.ICS.MBPerSec / round.Raw.MBPerSec
		round.P50Ratio = ratio(round.Loaded.P50, round.Idle.P50)
		round.P99Ratio = ratio(round.Loaded.P99, round.Idle.P99)
		if round.RawLoaded != nil {
			round.RawLoadedP99Ratio = ratio(round.RawLoaded.P99, round.Idle.P99)
		}
		res.PerRound = append(res.PerRound, round)
	}
	pick := func(f func(*FlowRound) float64) float64 {
		xs := make([]float64, len(res.PerRound))
		for i := range res.PerRound {
			xs[i] = f(&res.PerRound[i])
		}
		return median(xs)
	}
	res.RawMBPerSec = pick(func(r *FlowRound) float64 { return r.Raw.MBPerSec })
	res.ICSMBPerSec = pick(func(r *FlowRound) float64 { return r.ICS.MBPerSec })
	res.BulkRatio = pick(func(r *FlowRound) float64 { return r.BulkRatio })
	res.LoadedMBPerSec = pick(func(r *FlowRound) float64 { return r.LoadedBulk.MBPerSec })
	res.IdleP50 = time.Duration(pick(func(r *FlowRound) float64 { return float64(r.Idle.P50) }))
	res.IdleP99 = time.Duration(pick(func(r *FlowRound) float64 { return float64(r.Idle.P99) }))
	res.LoadedP50 = time.Duration(pick(func(r *FlowRound) float64 { return float64(r.Loaded.P50) }))
	res.LoadedP99 = time.Duration(pick(func(r *FlowRound) float64 { return float64(r.Loaded.P99) }))
	res.P50Ratio = pick(func(r *FlowRound) float64 { return r.P50Ratio })
	res.P99Ratio = pick(func(r *FlowRound) float64 { return r.P99Ratio })
	res.IdleAll, res.LoadedAll = idleAll.Summary(), loadedAll.Summary()
	if cfg.Control {
		res.RawLoadedP50 = time.Duration(pick(func(r *FlowRound) float64 { return float64(r.RawLoaded.P50) }))
		res.RawLoadedP99 = time.Duration(pick(func(r *FlowRound) float64 { return float64(r.RawLoaded.P99) }))
		res.RawLoadedP99Ratio = pick(func(r *FlowRound) float64 { return r.RawLoadedP99Ratio })
		res.RawLoadedMBPerSec = pick(func(r *FlowRound) float64 { return r.RawLoadedBulk.MBPerSec })
	}
	res.BulkMet = res.BulkRatio >= FlowBulkTarget
	res.PriorityMet = res.P99Ratio <= FlowP99Target
	return res, nil
}

// runPhase runs one phase for d and records it in r.
func runPhase(ctx context.Context, c *FlowClient, cfg FlowRunConfig, d time.Duration, phase string, r *FlowRound) error {
	var err error
	switch phase {
	case PhaseRaw:
		st := bulkStop{length: d}
		r.Raw, err = c.rawBulk(cfg.Size, &st, nil)
	case PhaseICS:
		st := bulkStop{length: d}
		r.ICS, err = c.icsBulk(ctx, cfg.Size, cfg.Senders, &st, nil)
	case PhaseIdle:
		if r.idle, err = c.probe(ctx, d, cfg.ProbeSize, cfg.ProbePriority); err == nil {
			r.Idle = r.idle.Summary()
		}
	case PhaseLoaded:
		if r.loaded, r.LoadedBulk, err = c.loaded(ctx, false, d, cfg.Size, cfg.Senders, cfg.ProbeSize, cfg.ProbePriority); err == nil {
			r.Loaded = r.loaded.Summary()
		}
	case PhaseRawLoaded:
		var bulk BulkResult
		if r.rawLoaded, bulk, err = c.loaded(ctx, true, d, cfg.Size, cfg.Senders, cfg.ProbeSize, cfg.ProbePriority); err == nil {
			s := r.rawLoaded.Summary()
			r.RawLoaded, r.RawLoadedBulk = &s, &bulk
		}
	}
	return err
}

// WriteText renders the result as tables: the two targets, then every round.
func (f *FlowResult) WriteText(w io.Writer) error {
	var b strings.Builder
	pin := "off"
	if f.Env.Pinned {
		pin = "on"
		if f.Env.Pinning != "" {
			pin += " (" + f.Env.Pinning + ")"
		}
	}
	phases := 4
	if f.RawLoadedP99 > 0 {
		phases++ // the control
	}
	fmt.Fprintf(&b, "%d rounds x %d phases x %s (warm-up %s per phase), %s messages, %d ICS senders, credit window %s\n",
		f.Rounds, phases, f.Duration, f.Warmup, SizeString(f.Size), f.Senders, SizeString(f.Window))
	fmt.Fprintf(&b, "%s %s/%s, %d CPUs, GOMAXPROCS %d, pinning %s", f.Env.GoVersion, f.Env.GOOS, f.Env.GOARCH,
		f.Env.NumCPU, f.Env.GOMAXPROCS, pin)
	if f.Env.Servers != "" {
		fmt.Fprintf(&b, ", server in %s", f.Env.Servers)
	}
	b.WriteString("\nmedians over rounds; ratios are medians of per-round ratios; MB = 10^6 bytes\n\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "bulk\traw MB/s\tICS MB/s\tICS/raw\ttarget\t\t\n")
	fmt.Fprintf(tw, "\t%.0f\t%.0f\t%.2f\t>= %.2f\t%s\t\n", f.RawMBPerSec, f.ICSMBPerSec, f.BulkRatio, f.BulkTarget, met(f.BulkMet))
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "priority %d, %d B\tp50 idle\tp50 loaded\tp50 ratio\tp99 idle\tp99 loaded\tp99 ratio\ttarget\t\t\n", f.ProbePriority, f.ProbeSize)
	fmt.Fprintf(tw, "\t%s\t%s\t%.2f\t%s\t%s\t%.2f\t<= %.2f\t%s\t\n", us(f.IdleP50), us(f.LoadedP50), f.P50Ratio,
		us(f.IdleP99), us(f.LoadedP99), f.P99Ratio, f.P99Target, met(f.PriorityMet))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(&b, "loaded phases: ICS bulk %.0f MB/s under the probe; all rounds: idle %s; loaded %s\n",
		f.LoadedMBPerSec, f.IdleAll, f.LoadedAll)
	if f.RawLoadedP99 > 0 {
		fmt.Fprintf(&b, "control, the probe under the raw TCP stream (%.0f MB/s) instead: p50 %s, p99 %s, p99 ratio to idle %.2f\n",
			f.RawLoadedMBPerSec, us(f.RawLoadedP50), us(f.RawLoadedP99), f.RawLoadedP99Ratio)
		fmt.Fprintf(&b, "priority against the control (issue 10: ICS's p99 ratio no worse than the control's): %.2f against %.2f, %s\n",
			f.P99Ratio, f.RawLoadedP99Ratio, met(f.P99Ratio <= f.RawLoadedP99Ratio))
	}

	b.WriteString("\nper round (order: the phases as they ran; CPU: client+server CPU-ms per MB)\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	control := ""
	if f.RawLoadedP99 > 0 {
		control = "raw-loaded p99\t"
	}
	fmt.Fprintf(tw, "round\torder\traw MB/s\tICS MB/s\tratio\traw CPU\tICS CPU\tcredit waits\tidle p50\tidle p99\tloaded p50\tloaded p99\tp99 ratio\tloaded MB/s\t%s\n", control)
	for _, r := range f.PerRound {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.0f\t%.2f\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%.2f\t%.0f\t", r.Round, strings.Join(r.Order, ","),
			r.Raw.MBPerSec, r.ICS.MBPerSec, r.BulkRatio, cpuPerMB(r.Raw), cpuPerMB(r.ICS), r.ICS.CreditWaits,
			us(r.Idle.P50), us(r.Idle.P99), us(r.Loaded.P50), us(r.Loaded.P99), r.P99Ratio, r.LoadedBulk.MBPerSec)
		if r.RawLoaded != nil {
			fmt.Fprintf(tw, "%s\t", us(r.RawLoaded.P99))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cpuPerMB is the CPU both processes spent per MB moved, as client+server ms.
func cpuPerMB(r BulkResult) string {
	if r.Bytes == 0 {
		return "-"
	}
	mb := float64(r.Bytes) / 1e6
	return fmt.Sprintf("%.2f+%.2f", float64(r.ClientCPU)/1e6/mb, float64(r.ServerCPU)/1e6/mb)
}

// SizeString is n in KiB or MiB when it divides evenly, else in bytes.
func SizeString(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
