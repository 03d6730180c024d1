package bench

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Target is a peer ready to be measured: a name for the report and a
// connected client.
type Target struct {
	Name   string
	Client Client
	// Procs, when not 0, is the GOMAXPROCS this process runs the target's
	// calls with (a peer named "ics@1" in cibench): the Go scheduler's
	// idle-P wake-ups are part of what a configuration costs.
	Procs int
	// Run, when set, replaces Run(ctx, Client, cfg): a target whose calls
	// are made elsewhere (a cluster node, cibench --target) and reported
	// with their histogram. Client is then unused.
	Run func(ctx context.Context, cfg RunConfig) (Result, error)
}

// CompareConfig configures Compare.
type CompareConfig struct {
	Rounds int // each round runs every target once
	// Baseline names the target ratios are taken against; "" means "raw",
	// or the first target when raw is not among them.
	Baseline string
	Run      RunConfig
}

// Comparison is the outcome of Compare. It marshals to JSON and renders as
// a table with WriteText.
type Comparison struct {
	Rounds      int           `json:"rounds"`
	Calls       int           `json:"calls_per_run,omitempty"`
	Duration    time.Duration `json:"duration_per_run_ns,omitempty"`
	Concurrency int           `json:"concurrency"`
	ReqSize     int           `json:"request_bytes"`
	RespSize    int           `json:"response_bytes"`
	Warmup      int           `json:"warmup_calls"`
	Baseline    string        `json:"baseline"`
	Env         Env           `json:"env"`
	// BracketCalls is the timed calls of each raw TCP bracket (see
	// Round.Mode); absent when raw TCP is not among the peers.
	BracketCalls int `json:"bracket_calls,omitempty"`
	// Modes counts the rounds of each mode; nil when raw TCP is not among
	// the peers (and in reports from before the brackets).
	Modes *ModeCounts `json:"modes,omitempty"`

	Peers []PeerStats `json:"peers"` // in the order the targets were given
	// NotMeasured lists the peers asked for that this run could not
	// measure (against a running cluster: all but ICS); absent when none.
	NotMeasured []NotMeasured `json:"not_measured,omitempty"`
	PerRound    []Round       `json:"per_round"`  // what every round measured
	StartedAt   time.Time     `json:"started_at"` // wall clock, for the record
}

// Env describes where the numbers come from; a ratio means little without it.
type Env struct {
	GoVersion  string `json:"go_version"`
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// Pinned is set by callers that pinned client and servers to CPUs
	// (cibench compare --pin); Pinning says how.
	Pinned  bool   `json:"pinned"`
	Pinning string `json:"pinning,omitempty"`
	// Servers is where the servers ran: "this process", "child processes",
	// or a running cluster's node ("node 2 of cluster x, called by node 1").
	Servers string `json:"servers,omitempty"`
}

// CurrentEnv describes this process.
func CurrentEnv() Env {
	return Env{
		GoVersion:  runtime.Version(),
		GOOS:       runtime.GOOS,
		GOARCH:     runtime.GOARCH,
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
	}
}

// PeerStats is one peer over all rounds. Latencies and rates are medians of
// the per-round values; ratios are medians of the per-round ratios to the
// baseline, which cancel the machine's drift between rounds better than a
// ratio of medians would.
type PeerStats struct {
	Peer        string        `json:"peer"`
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	P999        time.Duration `json:"p999_ns"`
	Max         time.Duration `json:"max_ns"`
	CallsPerSec float64       `json:"calls_per_sec"`
	P50Ratio    float64       `json:"p50_ratio"`
	P99Ratio    float64       `json:"p99_ratio"`
	P999Ratio   float64       `json:"p999_ratio"`
	RateRatio   float64       `json:"rate_ratio"`
	All         Summary       `json:"all_rounds"` // every round's histogram merged
	// CDF is the merged histogram at fixed quantiles, for plots.
	CDF []CDFPoint `json:"cdf,omitempty"`
	// SlowCalls counts the calls of all rounds slower than
	// SlowCallThreshold.
	SlowCalls int64 `json:"calls_over_5ms"`
	// Fast and Slow split the per-round ratios by the round's mode (see
	// Round.Mode); mixed rounds are in neither. Nil when no round was in
	// that mode or raw TCP did not run. A median over all rounds hides the
	// fast-mode rounds when they are the minority: these do not.
	Fast *ModeStats `json:"fast_mode,omitempty"`
	Slow *ModeStats `json:"slow_mode,omitempty"`
}

// SlowCallThreshold is issue 10's stall: no call slower than this in
// 100,000 on an idle machine.
const SlowCallThreshold = 5 * time.Millisecond

// FastModeThreshold is the raw TCP p50 under which a round counts as raw
// TCP's fast mode. On small VMs loopback ping-pong is bimodal: about 20 µs
// when both processes stay on CPU, 40-60 µs when they sleep in between
// (docs/PERFORMANCE.md, "Bimodal latency"); 30 µs separates the two.
const FastModeThreshold = 30 * time.Microsecond

// Raw TCP's modes, as RawMode and RoundMode say them.
const (
	ModeFast  = "fast"
	ModeSlow  = "slow"
	ModeMixed = "mixed" // a round only: raw TCP changed mode while it ran
)

// RawMode classifies one raw TCP measurement by its p50.
func RawMode(rawP50 time.Duration) string {
	if rawP50 < FastModeThreshold {
		return ModeFast
	}
	return ModeSlow
}

// RoundMode classifies a round by raw TCP's p50 in the bracket just
// before it, in its own run in the round and in the bracket just after
// it: ModeFast or ModeSlow when all three are in that mode, ModeMixed
// otherwise. The machine can change mode within a round, and one raw TCP
// run cannot say whether the peers that ran after it (or before it) saw
// the same mode; the brackets enclose every peer's run. A change of mode
// and back between the brackets is caught only if raw TCP's own run falls
// in it. "" when a measurement is missing (raw TCP is not among the peers).
func RoundMode(before, raw, after time.Duration) string {
	if before <= 0 || raw <= 0 || after <= 0 {
		return ""
	}
	m := RawMode(before)
	if RawMode(raw) != m || RawMode(after) != m {
		return ModeMixed
	}
	return m
}

// BracketCalls is the timed calls of one raw TCP bracket, fewer when a
// run has fewer calls. The bracket only has to place raw TCP's p50 on one
// side of FastModeThreshold: with 500 calls the sample median lies within
// about the 48th to 52nd percentile (one standard error, 0.5/sqrt(500)),
// and the two modes' p50s (about 20 and 40-60 µs) are far from 30 µs, so a
// bracket misreads its mode only when raw TCP is switching while it runs,
// which makes the round mixed either way. 500 calls take 10-30 ms: the
// brackets between rounds add 500 calls to a round of 20,000 per peer.
const BracketCalls = 500

// bracketWarmup is the untimed calls before a bracket: the connection is
// warm already, but the first calls after another peer's run pay for
// waking raw TCP's server.
const bracketWarmup = 50

// ModeCounts is how many rounds were in each mode.
type ModeCounts struct {
	Fast  int `json:"fast"`
	Slow  int `json:"slow"`
	Mixed int `json:"mixed"`
}

// ModeStats is one peer's ratios to the baseline over the rounds of one
// mode (Round.Mode).
type ModeStats struct {
	Rounds      int     `json:"rounds"`
	P50Ratio    float64 `json:"p50_ratio"`     // median
	P50RatioMax float64 `json:"p50_ratio_max"` // worst round: a target "in every round" is judged on this
	P99Ratio    float64 `json:"p99_ratio"`     // median
	P999Ratio   float64 `json:"p999_ratio"`    // median
}

// Round is one pass over every target.
type Round struct {
	Round int      `json:"round"` // from 1
	Order []string `json:"order"` // the order the targets ran in
	// Mode is the round's class, RoundMode of the two brackets and raw
	// TCP's run: ModeFast, ModeSlow or ModeMixed; "" when raw TCP is not
	// among the targets. Fast and slow rounds feed PeerStats.Fast and
	// .Slow, mixed rounds neither.
	Mode string `json:"mode,omitempty"`
	// RawMode is RawMode of raw TCP's own run in the round (its ratio
	// baseline), "" when raw TCP is not among the targets.
	RawMode string `json:"raw_mode,omitempty"`
	// BracketBeforeP50 and BracketAfterP50 are raw TCP's p50 in the
	// brackets: Comparison.BracketCalls calls just before the round's first
	// target and just after its last (the bracket between two rounds
	// serves both). They classify the round and nothing else: no ratio
	// divides by them and no merged histogram holds them. 0 without raw TCP.
	BracketBeforeP50 time.Duration `json:"bracket_before_p50_ns,omitempty"`
	BracketAfterP50  time.Duration `json:"bracket_after_p50_ns,omitempty"`
	Results          []RoundResult `json:"results"`
}

// RoundResult is one target in one round.
type RoundResult struct {
	Result
	P50Ratio  float64 `json:"p50_ratio"`
	P99Ratio  float64 `json:"p99_ratio"`
	P999Ratio float64 `json:"p999_ratio"`
	RateRatio float64 `json:"rate_ratio"`
}

// CDFPoint is one point of a latency distribution: the fraction of calls
// (0..1) that took at most Latency.
type CDFPoint struct {
	Fraction float64       `json:"fraction"`
	Latency  time.Duration `json:"latency_ns"`
}

// cdfQuantiles are where CDF samples a histogram: dense in the tail, where
// the differences between peers are.
var cdfQuantiles = []float64{0.1, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100}

// CDF samples h at cdfQuantiles.
func (h *Hist) CDF() []CDFPoint {
	if h.Count() == 0 {
		return nil
	}
	out := make([]CDFPoint, len(cdfQuantiles))
	for i, q := range cdfQuantiles {
		out[i] = CDFPoint{Fraction: q / 100, Latency: h.Quantile(q)}
	}
	return out
}

// Compare measures targets in interleaved rounds. Every round runs each
// target once, starting one further along the list each round, so that no
// peer always runs first (cold) or right after the same neighbour. On a
// shared machine whose speed changes from minute to minute, only numbers
// taken close together in time are comparable: hence ratios per round.
func Compare(ctx context.Context, targets []Target, cfg CompareConfig) (*Comparison, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("bench: nothing to compare")
	}
	if cfg.Rounds < 1 {
		return nil, fmt.Errorf("bench: rounds %d, need at least 1", cfg.Rounds)
	}
	if err := cfg.Run.validate(); err != nil {
		return nil, err
	}
	base, err := baselineIndex(targets, cfg.Baseline)
	if err != nil {
		return nil, err
	}
	c := &Comparison{
		Rounds:      cfg.Rounds,
		Calls:       cfg.Run.Calls,
		Duration:    cfg.Run.Duration,
		Concurrency: cfg.Run.Concurrency,
		ReqSize:     cfg.Run.ReqSize,
		RespSize:    cfg.Run.RespSize,
		Warmup:      cfg.Run.Warmup,
		Baseline:    targets[base].Name,
		Env:         CurrentEnv(),
		StartedAt:   time.Now(),
	}
	if c.Duration > 0 {
		c.Calls = 0
	}
	merged := make([]*Hist, len(targets))
	for i := range merged {
		merged[i] = NewHist()
	}
	// Raw TCP's brackets: one before the first round and one after every
	// round, so that each round's peers all ran between two of them.
	raw := rawIndex(targets)
	bcfg := bracketConfig(cfg.Run)
	bracket := func(when string) (time.Duration, error) {
		if raw < 0 {
			return 0, nil
		}
		res, err := runWithProcs(ctx, targets[raw], bcfg)
		if err != nil {
			return 0, fmt.Errorf("raw TCP bracket %s: %w", when, err)
		}
		return res.Latency.P50, nil
	}
	if raw >= 0 {
		c.BracketCalls = bcfg.Calls
	}
	before, err := bracket("before round 1")
	if err != nil {
		return nil, err
	}
	for r := range cfg.Rounds {
		round := Round{Round: r + 1, Results: make([]RoundResult, len(targets)), BracketBeforeP50: before}
		for k := range targets {
			i := (k + r) % len(targets)
			t := targets[i]
			round.Order = append(round.Order, t.Name)
			res, err := runWithProcs(ctx, t, cfg.Run)
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", r+1, t.Name, err)
			}
			res.Peer = t.Name
			merged[i].Merge(res.Hist)
			round.Results[i] = RoundResult{Result: res}
		}
		if round.BracketAfterP50, err = bracket(fmt.Sprintf("after round %d", r+1)); err != nil {
			return nil, err
		}
		before = round.BracketAfterP50
		c.PerRound = append(c.PerRound, round)
	}
	c.Peers = summarize(c.PerRound, base, merged)
	c.Modes = countModes(c.PerRound)
	return c, nil
}

// rawIndex is the index of raw TCP among targets, or -1.
func rawIndex(targets []Target) int {
	return slices.IndexFunc(targets, func(t Target) bool { return t.Name == "raw" })
}

// bracketConfig is the load of one raw TCP bracket: run's sizes and
// concurrency, BracketCalls timed calls (no more than run's own, and a few
// per caller when there are many), a short warm-up, and no progress
// reports, which count the peers' calls.
func bracketConfig(run RunConfig) RunConfig {
	b := run
	b.Duration, b.Progress = 0, nil
	b.Calls = max(BracketCalls, 4*run.Concurrency)
	if run.Duration <= 0 {
		b.Calls = min(b.Calls, run.Calls)
	}
	b.Warmup = min(run.Warmup, bracketWarmup)
	return b
}

// countModes counts the rounds of each mode; nil when no round has one.
func countModes(rounds []Round) *ModeCounts {
	var n ModeCounts
	for _, r := range rounds {
		switch r.Mode {
		case ModeFast:
			n.Fast++
		case ModeSlow:
			n.Slow++
		case ModeMixed:
			n.Mixed++
		}
	}
	if n == (ModeCounts{}) {
		return nil
	}
	return &n
}

// summarize fills in each round's ratios to the baseline (index base) and
// its modes (from raw TCP's run and the brackets already in the round),
// and condenses the rounds into one PeerStats per target: all rounds, and
// the fast and the slow rounds apart.
// merged holds each target's histogram over all rounds (nil: no CDF).
func summarize(rounds []Round, base int, merged []*Hist) []PeerStats {
	if len(rounds) == 0 {
		return nil
	}
	raw := slices.IndexFunc(rounds[0].Results, func(r RoundResult) bool { return r.Peer == "raw" })
	for ri := range rounds {
		round := &rounds[ri]
		b := round.Results[base]
		for i := range round.Results {
			rr := &round.Results[i]
			rr.P50Ratio = ratio(rr.Latency.P50, b.Latency.P50)
			rr.P99Ratio = ratio(rr.Latency.P99, b.Latency.P99)
			rr.P999Ratio = ratio(rr.Latency.P999, b.Latency.P999)
			rr.RateRatio = 0
			if b.CallsPerSec > 0 {
				rr.RateRatio = rr.CallsPerSec / b.CallsPerSec
			}
		}
		if raw >= 0 {
			p50 := round.Results[raw].Latency.P50
			round.RawMode = RawMode(p50)
			round.Mode = RoundMode(round.BracketBeforeP50, p50, round.BracketAfterP50)
		}
	}
	var peers []PeerStats
	for i := range rounds[0].Results {
		pick := func(rs []Round, f func(RoundResult) float64) float64 { return median(ratios(rs, i, f)) }
		ps := PeerStats{
			Peer:        rounds[0].Results[i].Peer,
			P50:         time.Duration(pick(rounds, func(r RoundResult) float64 { return float64(r.Latency.P50) })),
			P99:         time.Duration(pick(rounds, func(r RoundResult) float64 { return float64(r.Latency.P99) })),
			P999:        time.Duration(pick(rounds, func(r RoundResult) float64 { return float64(r.Latency.P999) })),
			Max:         time.Duration(pick(rounds, func(r RoundResult) float64 { return float64(r.Latency.Max) })),
			CallsPerSec: pick(rounds, func(r RoundResult) float64 { return r.CallsPerSec }),
			P50Ratio:    pick(rounds, func(r RoundResult) float64 { return r.P50Ratio }),
			P99Ratio:    pick(rounds, func(r RoundResult) float64 { return r.P99Ratio }),
			P999Ratio:   pick(rounds, func(r RoundResult) float64 { return r.P999Ratio }),
			RateRatio:   pick(rounds, func(r RoundResult) float64 { return r.RateRatio }),
		}
		if merged != nil && merged[i] != nil {
			ps.All, ps.CDF, ps.SlowCalls = merged[i].Summary(), merged[i].CDF(), merged[i].CountAbove(SlowCallThreshold)
		}
		for _, mode := range []string{ModeFast, ModeSlow} {
			in := slices.DeleteFunc(slices.Clone(rounds), func(r Round) bool { return r.Mode != mode })
			if len(in) == 0 {
				continue
			}
			ms := &ModeStats{
				Rounds:      len(in),
				P50Ratio:    pick(in, func(r RoundResult) float64 { return r.P50Ratio }),
				P50RatioMax: slices.Max(ratios(in, i, func(r RoundResult) float64 { return r.P50Ratio })),
				P99Ratio:    pick(in, func(r RoundResult) float64 { return r.P99Ratio }),
				P999Ratio:   pick(in, func(r RoundResult) float64 { return r.P999Ratio }),
			}
			if mode == ModeFast {
				ps.Fast = ms
			} else {
				ps.Slow = ms
			}
		}
		peers = append(peers, ps)
	}
	return peers
}

// ratios is f of target i in every round.
func ratios(rounds []Round, i int, f func(RoundResult) float64) []float64 {
	xs := make([]float64, len(rounds))
	for k, r := range rounds {
		xs[k] = f(r.Results[i])
	}
	return xs
}

func baselineIndex(targets []Target, name string) (int, error) {
	if name == "" {
		name = "raw"
		if !slices.ContainsFunc(targets, func(t Target) bool { return t.Name == name }) {
			return 0, nil
		}
	}
	for i, t := range targets {
		if t.Name == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("bench: baseline %q is not among the peers", name)
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// median of xs (the mean of the middle two for an even count); xs is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	m := len(xs) / 2
	if len(xs)%2 == 1 {
		return xs[m]
	}
	return (xs[m-1] + xs[m]) / 2
}

// WriteText renders the comparison as two tables: the medians, then every
// round.
func (c *Comparison) WriteText(w io.Writer) error {
	var b strings.Builder
	load := fmt.Sprintf("%d calls", c.Calls)
	if c.Duration > 0 {
		load = c.Duration.String()
	}
	pin := "off"
	if c.Env.Pinned {
		pin = "on"
		if c.Env.Pinning != "" {
			pin += " (" + c.Env.Pinning + ")"
		}
	}
	fmt.Fprintf(&b, "%d rounds x %s per peer, %dB request / %dB response, concurrency %d, warm-up %d calls\n",
		c.Rounds, load, c.ReqSize, c.RespSize, c.Concurrency, c.Warmup)
	fmt.Fprintf(&b, "%s %s/%s, %d CPUs, GOMAXPROCS %d, pinning %s", c.Env.GoVersion, c.Env.GOOS, c.Env.GOARCH,
		c.Env.NumCPU, c.Env.GOMAXPROCS, pin)
	if c.Env.Servers != "" {
		fmt.Fprintf(&b, ", servers in %s", c.Env.Servers)
	}
	fmt.Fprintf(&b, "\n\nmedians over rounds; ratios are medians of per-round ratios to %s\n", c.Baseline)

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	bl := c.Baseline
	fmt.Fprintf(tw, "peer\tp50\tp99\tp99.9\tmax\tcalls/s\tp50/%s\tp99/%s\tp99.9/%s\trate/%s\tp99.9 all\tmax all\t>%s all\t\n",
		bl, bl, bl, bl, us(SlowCallThreshold))
	for _, p := range c.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%d\t\n", p.Peer, us(p.P50), us(p.P99),
			us(p.P999), us(p.Max), p.CallsPerSec, p.P50Ratio, p.P99Ratio, p.P999Ratio, p.RateRatio, us(p.All.P999), us(p.All.Max), p.SlowCalls)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	writeNotMeasured(&b, c.NotMeasured)
	if err := c.writeModes(&b); err != nil {
		return err
	}

	b.WriteString("\nper round (pos: when the peer ran in its round; raw TCP's brackets, at 0 and after the last, only classify the round)\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "round\tmode\tpeer\tpos\tp50\tp99\tp99.9\tmax\tcalls/s\tp50/%s\tp99/%s\tp99.9/%s\t\n", bl, bl, bl)
	for _, r := range c.PerRound {
		mode := r.Mode
		if mode == "" {
			mode = "-"
		}
		bracket := func(name string, pos int, p50 time.Duration) {
			if p50 > 0 {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t-\t-\t-\t-\t-\t-\t-\t\n", r.Round, mode, name, pos, us(p50))
			}
		}
		bracket("raw bracket", 0, r.BracketBeforeP50)
		for _, res := range r.Results {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.2f\t%.2f\t\n", r.Round, mode, res.Peer,
				slices.Index(r.Order, res.Peer)+1, us(res.Latency.P50), us(res.Latency.P99), us(res.Latency.P999),
				us(res.Latency.Max), res.CallsPerSec, res.P50Ratio, res.P99Ratio, res.P999Ratio)
		}
		bracket("raw bracket", len(r.Order)+1, r.BracketAfterP50)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeModes renders the per-mode split of the ratios, when raw TCP ran.
func (c *Comparison) writeModes(b *strings.Builder) error {
	n := c.Modes
	if n == nil {
		return nil
	}
	fmt.Fprintf(b, "\nby raw TCP's mode (a fast round: raw p50 under %s in the brackets before and after the round and in its own run;\n"+
		"slow: over at all three; mixed: anything else): %d fast, %d slow, %d mixed rounds, and the mixed ones are in neither row.\n"+
		"Median ratio, worst-round p50 ratio in parentheses.\n", us(FastModeThreshold), n.Fast, n.Slow, n.Mixed)
	if n.Fast+n.Slow == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	bl := c.Baseline
	fmt.Fprintf(tw, "peer\tmode\trounds\tp50/%s\t(worst)\tp99/%s\tp99.9/%s\t\n", bl, bl, bl)
	for _, p := range c.Peers {
		for _, m := range []struct {
			name string
			s    *ModeStats
		}{{ModeFast, p.Fast}, {ModeSlow, p.Slow}} {
			if m.s == nil {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.2f\t(%.2f)\t%.2f\t%.2f\t\n", p.Peer, m.name, m.s.Rounds,
				m.s.P50Ratio, m.s.P50RatioMax, m.s.P99Ratio, m.s.P999Ratio)
		}
	}
	return tw.Flush()
}

// runWithProcs runs one target, under its own GOMAXPROCS if it has one.
func runWithProcs(ctx context.Context, t Target, cfg RunConfig) (Result, error) {
	if t.Run != nil {
		return t.Run(ctx, cfg)
	}
	if t.Procs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(t.Procs))
	}
	return Run(ctx, t.Client, cfg)
}
