package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/clusterinfra/ci/bench"
)

// allCmd runs every scenario once and writes one report: what make
// bench-report turns into BENCHMARKS.md.
type allCmd struct {
	Quick bool   `help:"Small sizes and short runs: every scenario in under two minutes, to check that everything works (not for quoting)." env:"CI_QUICK"`
	Out   string `default:"cibench-result.json" type:"path" placeholder:"FILE" help:"Where to write the JSON report (- for stdout)." env:"CI_OUT"`

	// Overrides of the profile, for tests and experiments; 0 or empty
	// keeps the profile's value.
	Peers    []string      `sep:"," help:"Latency peers (default raw,ics,ics@1,netrpc,grpc; throughput and allocations use the same without @N variants)." env:"CI_PEERS"`
	Sizes    []int         `sep:"," help:"Payload sizes for latency and throughput (default 64,4096,65536; --quick 64,4096)." env:"CI_SIZES"`
	Rounds   int           `help:"Rounds of every scenario (default 7 for latency and priority, 3 for throughput; --quick 2 and 1)." env:"CI_ROUNDS"`
	Calls    int           `help:"Timed latency calls per peer per round (default 20000; --quick 2000)." env:"CI_CALLS"`
	Duration time.Duration `help:"Length of each throughput run, each run of the concurrency sweep and each priority phase (default 5s, 2s and 2s; --quick 1s, 300ms and 500ms)." env:"CI_DURATION"`
	Trials   int           `help:"Deadlock trials per case (default 5; --quick 2)." env:"CI_TRIALS"`

	// Target mode: the scenarios that can run against a running cluster
	// do; failover and membership's propagation fault it only when
	// --allow-faults says so.
	rpcTargetFlags
	faultFlags
	AllowFaults bool `help:"With --target: run failover (SIGKILL of keyseq's owner or the master, SIGSTOP of a member on this machine) and membership's kill-and-rejoin propagation against the running cluster. Each cinode must run under a supervisor that restarts it." env:"CI_ALLOW_FAULTS"`
}

func (*allCmd) Help() string {
	return `Runs, in this order and one after the other: latency (compare) at each size,
throughput with 256 callers (rpc) at each size, throughput by concurrency
at 64 B with 1, 16 and 64 callers (rpc --concurrency=1,16,64; 2 s runs, the
256-caller point is the 64 B run before), heap allocations per call (in this
process), priority under load with its control and the nested-RPC deadlock
(priority), failover of a spawned 3-node cinode cluster (keyseq's owner
killed, a member stopped; lan-fast) and membership (3 and 16 nodes with
lan-fast, 64 with the default profile: membership --nodes=3,16,64:default).
Failover and membership need cinode beside cibench (make build). Prints
each scenario's tables as it finishes and writes every figure, with the
machine and the command line, to one JSON file.

The full run takes about 15 minutes and wants a quiet machine; --quick
takes under two (the sweep at 1 and 16 callers, membership at 3 nodes).

With --target, failover and membership run against the running cluster
whose admin endpoints are given (see cibench failover --help); failover,
and membership's propagation, only with --allow-faults, since they kill
its nodes. Hang trials need a member on this machine and are skipped,
with a line saying so, when there is none.

Examples:
  cibench all --out=bench/results/latest.json       # make bench-report
  cibench all --quick --target=10.0.0.1:7180 --token-file=/etc/ci/admin.token --allow-faults --out=target.json
  cibench all --quick --out=/tmp/quick.json
  cibench all --quick --sizes=64 --peers=raw,ics --out=-

Against a running cluster (--target), latency, throughput and priority are
measured between two of its nodes (see cibench compare --help); raw TCP,
net/rpc, gRPC-go, allocations, the raw-TCP control and the deadlock need
processes cibench spawns and are reported as not measured:
  cibench all --target=127.0.0.1:7180,127.0.0.2:7180 --quick --out=/tmp/cluster.json`
}

// allProfile is what each scenario of cibench all runs.
type allProfile struct {
	latency, throughput plan
	sweep               plan // throughput by concurrency; no sizes when there is nothing left to measure
	allocPeers          []string
	allocCalls          int
	flow                flowFlags
	deadlock            bench.DeadlockConfig
	killTrials          int
	hangTrials          int
	memberSizes         []memberSize
	steady              time.Duration
}

func (c *allCmd) Validate() error {
	if _, err := c.profile(); err != nil {
		return err
	}
	if c.AllowFaults && !c.faultTarget().enabled() {
		return usagef("--allow-faults is for --target: spawned clusters are faulted anyway")
	}
	if c.RejoinTimeout <= 0 {
		return usagef("--rejoin-timeout must be positive")
	}
	_, err := c.faultTarget().validate()
	return err
}

// faultTarget is --target and --token-file as failover and membership
// take them.
func (c *allCmd) faultTarget() targetFlags { return c.targetFlags }

// scale is how much of everything cibench all runs.
type scale struct {
	peers             []string
	sizes             []int
	latRounds, calls  int
	latWarmup         int
	tputRounds        int
	tputDur           time.Duration
	tputWarmup        int
	sweepConc         []int         // callers of the concurrency sweep at sweepSize, besides tputConc
	sweepDur          time.Duration // each sweep run
	flowRounds        int
	phase, flowWarmup time.Duration
	trials            int
	deadline          time.Duration
	allocCalls        int
	killTrials        int           // cibench failover --fault=kill --target=keysvc-owner
	hangTrials        int           // cibench failover --fault=stop --target=member
	memberSizes       []memberSize  // cibench membership --nodes
	steady            time.Duration // cibench membership --steady
}

// The throughput runs' callers, and the size the concurrency sweep runs at
// (the headline's: issue 10's small RPC).
const (
	tputConc  = 256
	sweepSize = 64
)

// fullScale is what BENCHMARKS.md quotes (about 15 minutes on 2 CPUs).
var fullScale = scale{
	// The floor, the floor with ICS's connection layout (replies on a
	// second connection), ICS by default and at GOMAXPROCS=1, the two
	// alternatives.
	peers:      []string{"raw", "raw-split", "ics", "ics@1", "netrpc", "grpc"},
	sizes:      []int{64, 4096, 65536}, // issue 10: a small RPC, a page, a bulk-sized message
	latRounds:  7,                      // medians of 7 per-round ratios, as the issues ask
	calls:      20000,                  // 20 calls above the p99.9 per round; 140,000 per peer, over issue 10's 100,000
	latWarmup:  1000,                   // connections, buffers, CPU clock
	tputRounds: 3,                      // throughput drifts less between rounds than tails do
	tputDur:    5 * time.Second,        // long enough for 256 callers to reach a steady state
	tputWarmup: 5000,                   // a few calls per caller
	// Three more points on the 64 B curve. 2 s is ~40,000 calls for one
	// caller and far more for 16 and 64, plenty for a rate; the sweep then
	// adds 3 concurrencies × 3 rounds × 5 peers × 2 s, about 1.5 minutes,
	// where 5 s runs would add almost 4.
	sweepConc:  []int{1, 16, 64},
	sweepDur:   2 * time.Second,
	flowRounds: 7,                      // issue 10: bulk as the median of at least 7 rounds
	phase:      2 * time.Second,        // ~10^4 probes per phase for a p99
	flowWarmup: 500 * time.Millisecond, // handle pools, windows, CPU clock
	trials:     5,                      // escalation's time spread; stuck trials cost a deadline each
	deadline:   time.Second,            // far above any completion, so "stuck" is unambiguous
	allocCalls: 20000,                  // allocations per call to two decimals
	killTrials: 20,                     // a p99 of 20 is the worst trial: honest for a goal stated as a bound
	hangTrials: 10,                     // each costs a lease timeout and a restart
	// The smallest cluster, a larger one, and 64 nodes with the default
	// profile: under lan-fast, 64 processes booting at once on 2 CPUs
	// mostly fail to form (docs/CLMS.md, "Not done yet").
	memberSizes: []memberSize{{3, "lan-fast"}, {16, "lan-fast"}, {64, "default"}},
	steady:      5 * time.Second, // enough ticks and heartbeats to average
}

// quickScale checks that everything works in well under two minutes.
var quickScale = scale{
	peers: fullScale.peers, sizes: []int{64, 4096}, latRounds: 2, calls: 2000, latWarmup: 200,
	tputRounds: 1, tputDur: time.Second, tputWarmup: 1000, sweepConc: []int{1, 16}, sweepDur: 300 * time.Millisecond,
	flowRounds: 1, phase: 500 * time.Millisecond,
	flowWarmup: 200 * time.Millisecond, trials: 2, deadline: 300 * time.Millisecond, allocCalls: 2000,
	killTrials: 2, hangTrials: 1, memberSizes: []memberSize{{3, "lan-fast"}}, steady: time.Second,
}

func (c *allCmd) profile() (allProfile, error) {
	sc := fullScale
	if c.Quick {
		sc = quickScale
	}
	if len(c.Peers) > 0 {
		sc.peers = c.Peers
	}
	if len(c.Sizes) > 0 {
		sc.sizes = c.Sizes
	}
	if c.Rounds > 0 {
		sc.latRounds, sc.tputRounds, sc.flowRounds = c.Rounds, c.Rounds, c.Rounds
	}
	if c.Calls > 0 {
		sc.calls, sc.allocCalls = c.Calls, c.Calls
	}
	if c.Duration > 0 {
		sc.tputDur, sc.phase = c.Duration, c.Duration
		sc.sweepDur = min(sc.sweepDur, c.Duration)
		sc.flowWarmup = min(sc.flowWarmup, c.Duration)
	}
	if c.Trials > 0 {
		sc.trials = c.Trials
	}
	// Throughput and allocations run each peer at the process's own
	// GOMAXPROCS: an @N variant measures a latency configuration.
	var tputPeers []string
	for _, p := range sc.peers {
		if !strings.Contains(p, "@") {
			tputPeers = append(tputPeers, p)
		}
	}
	var p allProfile
	var err error
	if p.latency, err = newPlan("compare", sc.peers, sc.sizes, []int{1}, -1, sc.latRounds,
		bench.RunConfig{Calls: sc.calls, Warmup: sc.latWarmup}, outputFlags{}); err != nil {
		return p, err
	}
	if p.throughput, err = newPlan("rpc", tputPeers, sc.sizes, []int{tputConc}, -1, sc.tputRounds,
		bench.RunConfig{Duration: sc.tputDur, Warmup: sc.tputWarmup}, outputFlags{}); err != nil {
		return p, err
	}
	// The sweep's 256-caller point is the throughput run's at the same
	// size, when --sizes has it.
	conc := slices.Clone(sc.sweepConc)
	if !slices.Contains(sc.sizes, sweepSize) {
		conc = append(conc, tputConc)
	}
	if p.sweep, err = newPlan("rpc", tputPeers, []int{sweepSize}, conc, -1, sc.tputRounds,
		bench.RunConfig{Duration: sc.sweepDur, Warmup: sc.tputWarmup}, outputFlags{}); err != nil {
		return p, err
	}
	for _, pl := range []*plan{&p.latency, &p.throughput, &p.sweep} {
		if err := pl.withTarget(c.rpcTargetFlags); err != nil {
			return p, err
		}
	}
	p.allocPeers, p.allocCalls = tputPeers, sc.allocCalls
	// The bulk and probe sizes are issue 3's: 64 KiB messages, 64-byte probes.
	p.flow = flowFlags{Rounds: sc.flowRounds, Duration: sc.phase, Warmup: sc.flowWarmup, Size: 64 << 10, Senders: 4, ProbeSize: 64,
		rpcTargetFlags: c.rpcTargetFlags}
	if err := p.flow.Validate(); err != nil {
		return p, err
	}
	p.deadlock = bench.DeadlockConfig{Trials: sc.trials, Deadline: sc.deadline, Window: bench.DefaultDeadlockConfig().Window}
	p.killTrials, p.hangTrials, p.memberSizes, p.steady = sc.killTrials, sc.hangTrials, sc.memberSizes, sc.steady
	return p, nil
}

func (c *allCmd) Run(g *globals) (err error) {
	p, err := c.profile()
	if err != nil {
		return err
	}
	// Open the output first: a run of minutes should not end in "no such
	// directory".
	var out io.Writer = g.stdout
	if c.Out != "-" {
		f, err := os.Create(c.Out)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, f.Close()) }()
		out = f
	}
	text := g.stdout
	if c.Out == "-" {
		text = g.stderr // stdout is the JSON
	}

	rep := bench.NewReport("all", g.args)
	rep.Quick = c.Quick
	if c.active() {
		rep.Target = p.latency.tinfo // the same pair for every RPC scenario
	}
	step := func(name string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(g.stderr, "cibench all: %s done in %s\n", name, time.Since(t0).Round(time.Second/10))
		return nil
	}
	comparisons := func(p plan, dst *[]*bench.Comparison) func() error {
		return func() error {
			res, err := p.execute(g)
			if err != nil {
				return err
			}
			*dst = res
			return p.writeText(text, res)
		}
	}
	if err := step("latency", comparisons(p.latency, &rep.Latency)); err != nil {
		return err
	}
	if err := step("throughput", comparisons(p.throughput, &rep.Throughput)); err != nil {
		return err
	}
	var sweep []*bench.Comparison
	if err := step("throughput by concurrency", comparisons(p.sweep, &sweep)); err != nil {
		return err
	}
	rep.Throughput = append(rep.Throughput, sweep...)
	if err := step("allocations", func() error {
		if c.active() {
			fmt.Fprintln(text, "allocations: not measured against --target (client and server in cibench's own process)")
			return nil
		}
		rep.Allocs, err = measureAllocs(g.ctx, p.allocPeers, p.allocCalls)
		for _, a := range rep.Allocs {
			fmt.Fprintf(text, "allocations: %s %.2f allocs and %.0f bytes per %s call, client and server in one process\n",
				a.Peer, a.AllocsPerCall, a.BytesPerCall, bench.SizeString(a.Size))
		}
		return err
	}); err != nil {
		return err
	}
	if err := step("priority", func() error {
		if c.active() {
			rep.Priority, _, err = p.flow.runTargetFlow(g, true)
			if err != nil {
				return err
			}
			fmt.Fprintln(text)
			return writePriorityText(text, rep.Priority)
		}
		rep.Priority, _, err = p.flow.run(g, true)
		if err != nil {
			return err
		}
		if rep.Priority.Deadlock, err = bench.RunDeadlock(g.ctx, p.deadlock); err != nil {
			return err
		}
		fmt.Fprintln(text)
		return writePriorityText(text, rep.Priority)
	}); err != nil {
		return err
	}
	// Failover and membership spawn cinode clusters with the lan-fast
	// profile, the one the goals are stated for, or use the target.
	if err := step("failover", func() error {
		if c.faultTarget().enabled() && !c.AllowFaults {
			fmt.Fprintln(text, "\nfailover: not run: it kills nodes of the --target cluster; give --allow-faults")
			return nil
		}
		kill := failoverPlan{nodes: 3, trials: p.killTrials, fault: "kill", victim: "keysvc-owner", profile: "lan-fast", target: c.faultTarget(), faults: c.faultFlags}
		if kill.target.enabled() {
			kill.victim = "owner-or-master" // a running cluster may not declare keyseq
		}
		hang := kill
		hang.trials, hang.fault, hang.victim = p.hangTrials, "stop", "member"
		if rep.Failover, err = runFailover(g, kill, g.stderr); err != nil {
			return err
		}
		fmt.Fprintln(text)
		if err := writeFailoverText(text, rep.Failover); err != nil {
			return err
		}
		rep.FailoverHang, err = runFailover(g, hang, g.stderr)
		if errors.Is(err, errNotLocal) {
			fmt.Fprintf(text, "failover: hang trials not run: %v\n", err)
			return nil
		}
		if err != nil {
			return err
		}
		return writeFailoverText(text, rep.FailoverHang)
	}); err != nil {
		return err
	}
	if err := step("membership", func() error {
		mp := membershipPlan{sizes: p.memberSizes, steady: p.steady, profile: p.memberSizes[0].profile, target: c.faultTarget(), faults: c.faultFlags, allowFaults: c.AllowFaults}
		if rep.Membership, err = runMembership(g, mp, g.stderr); err != nil {
			return err
		}
		fmt.Fprintln(text)
		return writeMembershipText(text, rep.Membership)
	}); err != nil {
		return err
	}
	rep.Finish()
	return rep.WriteJSON(out)
}

// measureAllocs measures each peer's allocations per 64-byte call in this
// process, one peer at a time.
func measureAllocs(ctx context.Context, peers []string, calls int) ([]bench.AllocResult, error) {
	var out []bench.AllocResult
	for _, name := range peers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p, err := bench.ParsePeer(name)
		if err != nil {
			return nil, err
		}
		if ics, ok := p.(*bench.ICS); ok {
			ics.Cluster = "bench-allocs-" + name
		}
		r, err := bench.MeasureAllocs(p, calls, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		r.Peer = name
		out = append(out, r)
	}
	return out, nil
}
