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

	Peers     []PeerStats `json:"peers"`      // in the order the targets were given
	PerRound  []Round     `json:"per_round"`  // what every round measured
	StartedAt time.Time   `json:"started_at"` // wall clock, for the record
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
	// Servers is where the servers ran: "this process" or "child processes".
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
	CallsPerSec float64       `json:"calls_per_sec"`
	P50Ratio    float64       `json:"p50_ratio"`
	P99Ratio    float64       `json:"p99_ratio"`
	RateRatio   float64       `json:"rate_ratio"`
	All         Summary       `json:"all_rounds"` // every round's histogram merged
}

// Round is one pass over every target.
type Round struct {
	Round   int           `json:"round"` // from 1
	Order   []string      `json:"order"` // the order the targets ran in
	Results []RoundResult `json:"results"`
}

// RoundResult is one target in one round.
type RoundResult struct {
	Result
	P50Ratio  float64 `json:"p50_ratio"`
	P99Ratio  float64 `json:"p99_ratio"`
	RateRatio float64 `json:"rate_ratio"`
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
	for r := range cfg.Rounds {
		round := Round{Round: r + 1, Results: make([]RoundResult, len(targets))}
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
		b := round.Results[base]
		for i := range round.Results {
			rr := &round.Results[i]
			rr.P50Ratio = ratio(rr.Latency.P50, b.Latency.P50)
			rr.P99Ratio = ratio(rr.Latency.P99, b.Latency.P99)
			rr.RateRatio = rr.CallsPerSec / b.CallsPerSec
		}
		c.PerRound = append(c.PerRound, round)
	}
	for i, t := range targets {
		var p50, p99, rate, r50, r99, rr []float64
		for _, round := range c.PerRound {
			res := round.Results[i]
			p50 = append(p50, float64(res.Latency.P50))
			p99 = append(p99, float64(res.Latency.P99))
			rate = append(rate, res.CallsPerSec)
			r50 = append(r50, res.P50Ratio)
			r99 = append(r99, res.P99Ratio)
			rr = append(rr, res.RateRatio)
		}
		c.Peers = append(c.Peers, PeerStats{
			Peer:        t.Name,
			P50:         time.Duration(median(p50)),
			P99:         time.Duration(median(p99)),
			CallsPerSec: median(rate),
			P50Ratio:    median(r50),
			P99Ratio:    median(r99),
			RateRatio:   median(rr),
			All:         merged[i].Summary(),
		})
	}
	return c, nil
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
	fmt.Fprintf(tw, "peer\tp50\tp99\tcalls/s\tp50/%s\tp99/%s\trate/%s\tp99.9 all\tmax all\t\n", bl, bl, bl)
	for _, p := range c.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.2f\t%.2f\t%.2f\t%s\t%s\t\n", p.Peer, us(p.P50), us(p.P99),
			p.CallsPerSec, p.P50Ratio, p.P99Ratio, p.RateRatio, us(p.All.P999), us(p.All.Max))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	b.WriteString("\nper round (pos: when the peer ran in its round)\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "round\tpeer\tpos\tp50\tp99\tcalls/s\tp50/%s\tp99/%s\t\n", bl, bl)
	for _, r := range c.PerRound {
		for _, res := range r.Results {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%.0f\t%.2f\t%.2f\t\n", r.Round, res.Peer,
				slices.Index(r.Order, res.Peer)+1, us(res.Latency.P50), us(res.Latency.P99),
				res.CallsPerSec, res.P50Ratio, res.P99Ratio)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// runWithProcs runs one target, under its own GOMAXPROCS if it has one.
func runWithProcs(ctx context.Context, t Target, cfg RunConfig) (Result, error) {
	if t.Procs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(t.Procs))
	}
	return Run(ctx, t.Client, cfg)
}
