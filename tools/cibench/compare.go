package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine"
)

type compareCmd struct {
	Peers        []string `default:"raw,ics,ics@1,netrpc,grpc" sep:"," help:"Peers to compare, comma-separated: raw, netrpc, grpc, ics, ics-handle, ics-eventloop, ics-handle-eventloop, ics-gnet, ics-netpoll (-gnet/-netpoll: sockets read by event loops or netpoller goroutines; plain ics is the engine's default); append @N to run a peer, client and server, with GOMAXPROCS=N (ics@1)." env:"CI_PEERS"`
	Rounds       int      `default:"7" help:"Rounds; each runs every peer once, in an order rotated per round." env:"CI_ROUNDS"`
	Calls        int      `default:"20000" help:"Timed calls per peer per round." env:"CI_CALLS"`
	Warmup       int      `default:"1000" help:"Untimed calls before each timed run." env:"CI_WARMUP"`
	Sizes        []int    `default:"64" sep:"," help:"Request sizes in bytes (at least 4), comma-separated; each is a comparison of its own (64,4096,65536)." env:"CI_SIZES"`
	ResponseSize int      `default:"-1" help:"Response bytes; -1 is the same as the request." env:"CI_RESPONSE_SIZE"`
	Concurrency  int      `default:"1" help:"Concurrent callers; 1 measures latency." env:"CI_CONCURRENCY"`
	outputFlags
	rpcTargetFlags
}

func (*compareCmd) Help() string {
	return `Latency, one caller at a time by default. Each peer's server runs in its own
child process; this process is the client for all of them.

Ratios are taken round by round against raw TCP's run in that round. On a
small VM loopback latency is bimodal (raw TCP p50 about 20 µs or 40-60 µs,
changing from minute to minute), so every round is also classified: raw TCP
runs a short bracket (500 calls, fewer if --calls is smaller) before the
first round and after every round, and a round is "fast" when raw TCP's p50
was under 30 µs in the bracket before it, in its own run and in the bracket
after it, "slow" when it was over at all three, and "mixed" otherwise (the
machine changed mode while the peers ran). The "by raw TCP's mode" table
splits the ratios into fast and slow rounds and leaves mixed rounds out,
counting them; the per-round table shows every round, its mode and the two
brackets. Brackets only classify: no ratio or merged figure includes them.
Without raw among --peers there are no brackets and no modes. Modes change
often on a 2-vCPU VM, so many rounds can be mixed: ask for more rounds
(--rounds=15) when the fast-mode figures rest on too few.

Examples:
  cibench compare                                    # raw, ics, ics@1, netrpc, grpc; 7 rounds
  cibench compare --peers=raw,netrpc,grpc --rounds=3 --calls=5000
  cibench compare --peers=raw,ics,ics-handle,ics-eventloop --pin
  cibench compare --peers=raw,ics-gnet,ics-netpoll,netrpc,grpc    # both read modes, interleaved
  cibench compare --peers=raw,ics,raw@1,ics@1       # each also with GOMAXPROCS=1
  cibench compare --sizes=64,4096,65536 --json > latency.json
  cibench compare --sizes=4096 --response-size=64
  CI_ROUNDS=15 cibench compare --quiet
  # every round's mode and the raw TCP brackets that decided it:
  cibench compare --rounds=15 --json | jq -c '.latency[0].per_round[] | [.round, .mode, .bracket_before_p50_ns, .raw_mode, .bracket_after_p50_ns]'

Against a running cluster (--target): node --from's admin endpoint calls
node --to's ICS echo (POST /v1/ping) and returns the latencies; only ICS is
measured, the other peers are listed as not measured:
  cibench compare --target=127.0.0.1:7180,127.0.0.2:7180 --rounds=3 --calls=5000
  cibench compare --target=10.0.0.1:7180 --from=1 --to=3 --token-file=/etc/ci/admin.token --json`
}

type rpcCmd struct {
	Peers        []string      `default:"raw,ics,netrpc,grpc" sep:"," help:"Peers to run, comma-separated (as for compare)." env:"CI_PEERS"`
	Concurrency  []int         `default:"256" sep:"," help:"Concurrent callers, all on one client (one node pair for ICS); a comma-separated list (1,16,64,256) measures each, a comparison per size and number of callers." env:"CI_CONCURRENCY"`
	Duration     time.Duration `default:"5s" help:"How long each peer runs per round." env:"CI_DURATION"`
	Rounds       int           `default:"3" help:"Rounds; each runs every peer once, in an order rotated per round." env:"CI_ROUNDS"`
	Warmup       int           `default:"5000" help:"Untimed calls before each timed run." env:"CI_WARMUP"`
	Sizes        []int         `default:"64" sep:"," help:"Request sizes in bytes (at least 4), comma-separated; each is a comparison of its own (64,4096,65536)." env:"CI_SIZES"`
	ResponseSize int           `default:"-1" help:"Response bytes; -1 is the same as the request." env:"CI_RESPONSE_SIZE"`
	outputFlags
	rpcTargetFlags
}

func (*rpcCmd) Help() string {
	return `Throughput: many callers at once on one client. For ICS they all share one
client node and so one node pair; raw TCP gets a connection per caller, the
most a hand-written protocol could do.

Throughput is its own command rather than a part of compare because the two
want different runs: compare counts calls with one caller (a p99.9 needs
10^4 samples per round), rpc runs for a time with hundreds (a rate needs a
steady state); cibench all runs both.

With a list of concurrencies (--concurrency=1,16,64,256) every size runs
at each of them in turn, sizes outermost; each pair is a comparison of its
own with its own rounds, and the JSON's throughput list has one entry per
(request_bytes, concurrency).

Examples:
  cibench rpc                                        # raw, ics, netrpc, grpc; 256 callers, 3 rounds of 5s
  cibench rpc --sizes=64,4096,65536 --json > throughput.json
  cibench rpc --concurrency=64 --duration=10s --sizes=1024
  cibench rpc --concurrency=1,16,64,256 --duration=2s --json   # throughput by concurrency, 64 B
  cibench rpc --peers=raw,ics,ics-handle --json

Against a running cluster: node 1's endpoint runs the callers, to node 2:
  cibench rpc --target=127.0.0.1:7180,127.0.0.2:7180 --duration=2s --sizes=64,4096`
}

// outputFlags are shared by compare and rpc.
type outputFlags struct {
	Baseline  string `help:"Peer the ratios divide by (default raw, or the first peer without it)." env:"CI_BASELINE"`
	Pin       bool   `help:"Pin the client to one CPU and all servers to another (taskset); reported in the output." env:"CI_PIN"`
	InProcess bool   `help:"Run the servers in this process instead of child processes (quick checks only: they share the client's CPUs and GC)." env:"CI_IN_PROCESS"`
	JSON      bool   `name:"json" help:"Print the result as JSON (the schema of docs/BENCH_SCHEMA.md) instead of tables." env:"CI_JSON"`
	Profile   string `name:"cpu-profile" type:"path" placeholder:"DIR" help:"Write CPU profiles to DIR: client.pprof of this process (every peer's client, for the whole run; profile one peer at a time to tell them apart) and <peer>-server.pprof of each child server (go tool pprof -top -cum FILE)." env:"CI_CPU_PROFILE"`
}

// plan is a validated compare or rpc run: one comparison per size and
// concurrency (runs).
type plan struct {
	title    string
	peers    []string
	sizes    []int
	conc     []int // concurrent callers: each size runs at each (cfg.Run.Concurrency is set per run)
	respSize int   // -1: the request's size
	cfg      bench.CompareConfig
	out      outputFlags
	target   rpcTargetFlags   // --target: a running cluster instead of spawned servers
	tinfo    *bench.TargetRun // filled in by executeTarget: the pair it measured
}

func (c *compareCmd) Validate() error {
	_, err := c.plan()
	return err
}

func (c *compareCmd) plan() (plan, error) {
	run := bench.RunConfig{Calls: c.Calls, Concurrency: c.Concurrency, Warmup: c.Warmup}
	if c.Calls < 1 {
		return plan{}, usagef("--calls must be at least 1")
	}
	p, err := newPlan("compare", c.Peers, c.Sizes, []int{c.Concurrency}, c.ResponseSize, c.Rounds, run, c.outputFlags)
	if err != nil {
		return p, err
	}
	return p, p.withTarget(c.rpcTargetFlags)
}

func (c *rpcCmd) Validate() error {
	_, err := c.plan()
	return err
}

func (c *rpcCmd) plan() (plan, error) {
	run := bench.RunConfig{Duration: c.Duration, Warmup: c.Warmup}
	if c.Duration <= 0 {
		return plan{}, usagef("--duration must be positive")
	}
	p, err := newPlan("rpc", c.Peers, c.Sizes, c.Concurrency, c.ResponseSize, c.Rounds, run, c.outputFlags)
	if err != nil {
		return p, err
	}
	return p, p.withTarget(c.rpcTargetFlags)
}

func respSize(size, resp int) int {
	if resp < 0 {
		return size
	}
	return resp
}

// newPlan checks what compare and rpc have in common: every size runs at
// every concurrency of conc.
func newPlan(title string, peers []string, sizes, conc []int, resp, rounds int, run bench.RunConfig, out outputFlags) (plan, error) {
	p := plan{title: title, peers: peers, sizes: sizes, conc: conc, respSize: resp,
		cfg: bench.CompareConfig{Rounds: rounds, Baseline: out.Baseline, Run: run}, out: out}
	if err := checkConcurrency(conc); err != nil {
		return p, err
	}
	switch {
	case len(sizes) == 0:
		return p, usagef("--sizes is empty")
	case len(peers) == 0:
		return p, usagef("--peers is empty")
	case rounds < 1:
		return p, usagef("--rounds must be at least 1")
	case run.Warmup < 0:
		return p, usagef("--warmup must not be negative")
	case out.Pin && out.InProcess:
		return p, usagef("--pin needs the servers in child processes, not --in-process")
	case out.Profile != "" && out.InProcess:
		return p, usagef("--cpu-profile needs the servers in child processes, not --in-process (one profile would mix client and servers)")
	case out.Baseline != "" && !slices.Contains(peers, out.Baseline):
		return p, usagef("--baseline %q is not in --peers", out.Baseline)
	}
	for i, size := range sizes {
		if _, err := bench.NewRequest(size, respSize(size, resp)); err != nil {
			return p, usagef("--sizes/--response-size: %v", err)
		}
		if slices.Contains(sizes[:i], size) {
			return p, usagef("size %d listed twice", size)
		}
	}
	for i, name := range peers {
		base, _, err := splitProcs(name)
		if err != nil {
			return p, err
		}
		if _, err := bench.ParsePeer(base); err != nil {
			return p, usageError{err}
		}
		if slices.Contains(peers[:i], name) {
			return p, usagef("peer %q listed twice", name)
		}
	}
	return p, nil
}

// maxConcurrency bounds --concurrency: every caller is a goroutine with
// its own buffers, and raw TCP opens a connection per caller.
const maxConcurrency = 4096

// checkConcurrency checks a --concurrency list: at least one number, each
// 1 to maxConcurrency, none twice.
func checkConcurrency(conc []int) error {
	if len(conc) == 0 {
		return usagef("--concurrency is empty: give a number of concurrent callers, or a list like 1,16,64,256")
	}
	for i, n := range conc {
		if n < 1 || n > maxConcurrency {
			return usagef("--concurrency: %d is not a number of callers from 1 to %d", n, maxConcurrency)
		}
		if slices.Contains(conc[:i], n) {
			return usagef("--concurrency: %d listed twice", n)
		}
	}
	return nil
}

func (c *compareCmd) Run(g *globals) error { return runPlan(g, c.plan) }

func (c *rpcCmd) Run(g *globals) error { return runPlan(g, c.plan) }

// runPlan runs a compare or rpc plan and prints its result as tables or,
// with --json, as a report of the shared schema.
func runPlan(g *globals, mk func() (plan, error)) error {
	p, err := mk()
	if err != nil {
		return err
	}
	rep := bench.NewReport(p.title, g.args)
	res, err := p.execute(g)
	if err != nil {
		return err
	}
	rep.Finish()
	if p.target.active() {
		rep.Target = p.tinfo
	}
	if p.out.Pin && len(res) > 0 {
		rep.Machine.Pinned, rep.Machine.Pinning = true, res[0].Env.Pinning
	}
	if p.title == "rpc" {
		rep.Throughput = res
	} else {
		rep.Latency = res
	}
	if p.out.JSON {
		return rep.WriteJSON(g.stdout)
	}
	return p.writeText(g.stdout, res)
}

// writeText prints each comparison under a heading.
func (p plan) writeText(w io.Writer, res []*bench.Comparison) error {
	for i, c := range res {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "cibench %s: %s; %s\n", p.title, strings.Join(p.peers, ", "), runLabel(c.ReqSize, c.Concurrency))
		if err := c.WriteText(w); err != nil {
			return err
		}
	}
	return nil
}

// execute starts the servers, runs one comparison per size and concurrency, and stops
// everything it started, whatever happened.
func (p plan) execute(g *globals) (res []*bench.Comparison, err error) {
	if p.target.active() {
		return p.executeTarget(g)
	}
	// A server dying mid-run cancels the run with the reason.
	ctx, cancel := context.WithCancelCause(g.ctx)
	defer cancel(nil)

	var cpus cpuPlan
	if p.out.Pin {
		if cpus, err = planPinning(); err != nil {
			return nil, err
		}
		if err := cpus.pinSelf(); err != nil {
			return nil, err
		}
	}

	f := &fleet{stderr: g.stderr, onExit: func(err error) { cancel(err) }, profile: p.out.Profile}
	if p.out.Pin {
		f.wrap, f.eventLoops = cpus.wrap, 1
	}
	defer func() { err = errors.Join(err, f.close()) }()
	targets, err := f.start(ctx, p.peers, p.out.InProcess)
	if err != nil {
		return nil, err
	}
	if p.out.Profile != "" {
		stop, err := startCPUProfile(filepath.Join(p.out.Profile, "client.pprof"))
		if err != nil {
			return nil, err
		}
		defer func() { err = errors.Join(err, stop()) }()
	}

	for cfg := range p.runs() {
		total := int64(-1)
		if cfg.Run.Duration == 0 {
			total = int64(cfg.Rounds) * int64(len(targets)) * int64(cfg.Run.Calls)
		}
		label := runLabel(cfg.Run.ReqSize, cfg.Run.Concurrency)
		bar := newProgress(g, total, fmt.Sprintf("%s %s", p.title, label))
		cfg.Run.Progress = bar.add
		c, err := bench.Compare(ctx, targets, cfg)
		bar.done()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				err = cause // "interrupted" or the server that died, not the symptom
			}
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		c.Env.Servers = "child processes"
		if p.out.InProcess {
			c.Env.Servers = "this process"
		}
		if p.out.Pin {
			c.Env.Pinned, c.Env.Pinning = true, cpus.String()
		}
		res = append(res, c)
	}
	return res, nil
}

// runs yields the configuration of each comparison of the plan: every
// size, and at each size every concurrency, in the order given.
func (p plan) runs() iter.Seq[bench.CompareConfig] {
	return func(yield func(bench.CompareConfig) bool) {
		for _, size := range p.sizes {
			for _, n := range p.conc {
				cfg := p.cfg
				cfg.Run.ReqSize, cfg.Run.RespSize, cfg.Run.Concurrency = size, respSize(size, p.respSize), n
				if !yield(cfg) {
					return
				}
			}
		}
	}
}

// runLabel names one comparison: "64 B, 16 callers".
func runLabel(size, concurrency int) string {
	callers := "callers"
	if concurrency == 1 {
		callers = "caller"
	}
	return fmt.Sprintf("%s, %d %s", bench.SizeString(size), concurrency, callers)
}

// fleet owns the servers and clients of one run.
type fleet struct {
	stderr io.Writer
	onExit func(error)
	wrap   func([]string) []string // taskset prefix for --pin
	// eventLoops for ICS client nodes; 0 is the engine's default.
	eventLoops int
	profile    string // --cpu-profile: the directory child servers write their profiles to
	children   []*child
	stops      []func() error // in-process servers
	clients    []bench.Client
}

// start brings up a server and a client for every peer.
func (f *fleet) start(ctx context.Context, names []string, inProcess bool) ([]bench.Target, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var targets []bench.Target
	for _, name := range names {
		base, procs, err := splitProcs(name)
		if err != nil {
			return nil, err
		}
		p, err := bench.ParsePeer(base)
		if err != nil {
			return nil, err
		}
		if ics, ok := p.(*bench.ICS); ok {
			// Each variant its own cluster: its nodes never meet another pair's.
			ics.Cluster = "bench-" + name
			// gnet sizes its loops by the CPUs seen at process start; after
			// --pin this process has one, and so should the client node.
			named := ics.EventLoops > 0 // the name said (ics-loops1): keep it
			if !readsWithLoops(ics) {
				named = true // netpoller readers: no loops to size
			}
			if !named {
				ics.EventLoops = f.eventLoops
			}
			if procs > 0 && !named {
				// The engine sizes its loops by GOMAXPROCS when it starts,
				// which for this peer's client is not the one it runs at.
				ics.EventLoops = engine.DefaultEventLoops(procs)
			}
		}
		var c bench.Client
		if inProcess {
			c, err = f.startInProcess(p)
		} else {
			c, err = f.startChild(ctx, exe, name, p, procs)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		targets = append(targets, bench.Target{Name: name, Client: c, Procs: procs})
	}
	return targets, nil
}

// readsWithLoops reports whether ics's nodes read with gnet's event
// loops: asked for, or the engine's choice for its write mode.
func readsWithLoops(ics *bench.ICS) bool {
	cfg := engine.Config{ReadMode: ics.ReadMode, WriteMode: ics.WriteMode}
	return cfg.EffectiveReadMode() == engine.ReadEventLoops
}

func (f *fleet) startInProcess(p bench.Peer) (bench.Client, error) {
	addr, stop, err := p.Serve("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.stops = append(f.stops, stop)
	c, err := p.Dial(addr)
	if err != nil {
		return nil, err
	}
	f.clients = append(f.clients, c)
	return c, nil
}

// startChild runs "cibench serve" for p and connects to it. For ICS the
// client node starts first: the server node must know the client's
// address before its first reply, so it is passed on the command line.
func (f *fleet) startChild(ctx context.Context, exe, name string, p bench.Peer, procs int) (bench.Client, error) {
	argv := []string{exe, "--quiet", "serve", "--listen=127.0.0.1:0", "--gomaxprocs=" + strconv.Itoa(procs)}
	ics, isICS := p.(*bench.ICS)
	var ic *bench.ICSClient
	if isICS {
		var err error
		if ic, err = ics.NewClient(); err != nil {
			return nil, err
		}
		f.clients = append(f.clients, ic)
		inline, mode := "--inline", "direct"
		if !ics.Inline {
			inline = "--no-inline"
		}
		if ics.WriteMode == engine.WriteEventLoop {
			mode = "eventloop"
		}
		argv = append(argv, "--peer=ics", inline, "--write-mode="+mode, "--read-mode="+ics.ReadMode.String(), "--cluster="+ics.Cluster,
			"--node=2", "--client-node=1", "--client-addr="+ic.Addr(), "--event-loops="+strconv.Itoa(ics.EventLoops))
	} else {
		argv = append(argv, "--peer="+p.Name())
	}
	if f.profile != "" {
		argv = append(argv, "--cpu-profile="+filepath.Join(f.profile, name+"-server.pprof"))
	}
	if f.wrap != nil {
		argv = f.wrap(argv)
	}
	ch, err := spawn(ctx, p.Name(), argv, f.stderr, f.onExit)
	if err != nil {
		return nil, err
	}
	f.children = append(f.children, ch)
	if isICS {
		return ic, ic.Connect(ch.addr)
	}
	c, err := p.Dial(ch.addr)
	if err != nil {
		return nil, err
	}
	f.clients = append(f.clients, c)
	return c, nil
}

// close stops clients first, so that servers see their peers leave
// cleanly, then the servers.
func (f *fleet) close() error {
	var errs []error
	for _, c := range f.clients {
		errs = append(errs, c.Close())
	}
	errs = append(errs, stopAll(f.children))
	for _, stop := range f.stops {
		errs = append(errs, stop())
	}
	return errors.Join(errs...)
}

// splitProcs reads a peer name with an optional "@N" suffix: run that peer,
// client and server, with GOMAXPROCS=N.
func splitProcs(name string) (string, int, error) {
	base, n, ok := strings.Cut(name, "@")
	if !ok {
		return name, 0, nil
	}
	procs, err := strconv.Atoi(n)
	if err != nil || procs < 1 {
		return "", 0, usagef("peer %q: the part after @ must be a GOMAXPROCS of 1 or more", name)
	}
	return base, procs, nil
}
