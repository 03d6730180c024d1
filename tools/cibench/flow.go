package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/framing"
)

// flowFlags are what flow and priority share: the phases of issue 3's
// measurement between this process (client node 1) and a server node,
// and where that server runs.
type flowFlags struct {
	Rounds    int           `default:"7" help:"Rounds; each runs the phases (raw, ics, idle, loaded and, with the control, raw-loaded) once, in an order rotated per round." env:"CI_ROUNDS"`
	Duration  time.Duration `default:"2s" help:"Length of each phase." env:"CI_DURATION"`
	Warmup    time.Duration `default:"500ms" help:"Untimed run of each phase before the first round." env:"CI_WARMUP"`
	Size      int           `default:"65536" help:"Bulk message bytes: each ICS one-way message and each raw TCP write." env:"CI_SIZE"`
	Senders   int           `default:"4" help:"Goroutines sending ICS bulk messages, all on the one node pair." env:"CI_SENDERS"`
	Window    int           `default:"0" help:"Fixed credit window in bytes on both nodes (engine CreditWindow and MaxCreditWindow); 0 is the engine's default: 256 KiB, widening up to 1 MiB for a starved sender." env:"CI_WINDOW"`
	ProbeSize int           `default:"64" help:"Priority RPC request and response bytes (at least 4)." env:"CI_PROBE_SIZE"`
	Pin       bool          `help:"Pin this process (client) to one CPU and the server to another (taskset); reported in the output." env:"CI_PIN"`
	InProcess bool          `help:"Run the server in this process instead of a child process (quick checks only)." env:"CI_IN_PROCESS"`
	JSON      bool          `name:"json" help:"Print the result as JSON (the schema of docs/BENCH_SCHEMA.md) instead of tables." env:"CI_JSON"`
	Metrics   bool          `help:"Also print both nodes' ci_ics_* counters and gauges at the end (credit waits, throttling, handles)." env:"CI_METRICS"`
	Profile   string        `type:"path" placeholder:"DIR" help:"Write CPU profiles of the timed rounds to DIR/flow-client.pprof and DIR/flow-server.pprof (go tool pprof)." env:"CI_PROFILE"`
	rpcTargetFlags
}

// flowCmd is issue 3's measurement: ICS bulk throughput on a throttled
// channel against a raw TCP stream, and priority RPC latency idle and under
// that bulk load. The server side is "cibench serve --peer=flow".
type flowCmd struct {
	flowFlags
	Control bool `help:"Add a fifth phase, the probe while the raw TCP stream runs: what load costs the probe without the engine in the bulk path (always on in cibench priority)." env:"CI_CONTROL"`
}

func (*flowCmd) Help() string {
	return `Flow control's targets, between this process (client node 1) and one child
process (server node 2, "cibench serve --peer=flow"), in interleaved rounds
of four phases:

  raw     one TCP stream: --size writes on one connection, the server reads
          and discards
  ics     --senders goroutines send --size one-way messages on a throttled
          service channel (priority 0); the server's handles count them
  idle    64-byte echo RPCs at priority 1, one at a time
  loaded  the same RPCs while the ics transfer saturates the channel
  raw-loaded (with --control) the same RPCs while the raw stream runs

Each bulk phase ends with a request/response behind the data, so the bytes
the server counted are exact. Targets: ICS bulk at least 80% of raw; loaded
priority p99 at most 2x idle p99 (medians of per-round ratios).

cibench priority runs the same phases with the control always on, and adds
the nested-RPC deadlock with and without escalation: use it for priority,
this for flow control's bulk figures and its diagnostics (--metrics,
--profile).

Examples:
  cibench flow                                       # 7 rounds x 4 phases x 2s
  cibench flow --rounds=3 --duration=1s --pin
  cibench flow --control                             # is the loaded latency the engine's or the machine's?
  cibench flow --window=1048576 --senders=8 --json > flow.json
  cibench flow --profile=/tmp/flow --metrics         # then: go tool pprof bin/cibench /tmp/flow/flow-server.pprof
  CI_ROUNDS=9 CI_DURATION=3s cibench flow --quiet

Against a running cluster (--target), node --from's admin endpoint drives
three phases of ICS echoes to node --to (POST /v1/ping): bulk (--size
payloads from --senders callers, priority 0, on ChanCLMS beside CLMS's raft
traffic: keep it short on a production cluster), idle (the probe at priority
1) and loaded (the probe under that bulk). The raw TCP phases are listed as
not measured:
  cibench flow --target=127.0.0.1:7180,127.0.0.2:7180 --rounds=3 --duration=1s`
}

// priorityCmd is priority under load and escalation, the figures issue 10
// asks of priority: the flow phases with the raw-TCP control, then the
// nested-RPC deadlock.
type priorityCmd struct {
	flowFlags
	Trials         int           `default:"5" help:"Deadlock trials per case (escalation on, off); each starts a fresh node pair in this process." env:"CI_TRIALS"`
	Deadline       time.Duration `default:"1s" help:"Deadline of the deadlock's outer call: without escalation it is stuck this long." env:"CI_DEADLINE"`
	DeadlockWindow int           `default:"4096" help:"Credit window of the deadlock's throttled channel, bytes." env:"CI_DEADLOCK_WINDOW"`
}

func (*priorityCmd) Help() string {
	return `Priority RPCs under saturation and the deadlock escalation prevents.

First the flow phases (see cibench flow --help) with the control on: the
priority probe's p99 loaded with ICS bulk over its idle p99, beside the same
ratio with a raw TCP stream as the load instead. The target: ICS's ratio no
worse than the control's.

Then the nested-RPC deadlock, in this process: node 2 fills its credit
window towards node 1's service, whose one handle is held; node 1 calls
node 2, whose handler calls back into that service. With escalation the
nested call goes out at priority 1 and everything completes (the time is
reported); without it the outer call is stuck until --deadline.

Examples:
  cibench priority                                   # 7 rounds of 5 phases, then 5+5 deadlock trials
  cibench priority --rounds=3 --duration=1s --trials=2 --deadline=300ms
  cibench priority --json > priority.json

Against a running cluster (--target): the probe idle and under bulk between
two nodes, as cibench flow --target does; the raw-TCP control and the
deadlock (in-process node pairs) are listed as not measured:
  cibench priority --target=127.0.0.1:7180,127.0.0.2:7180 --rounds=3 --duration=1s --json`
}

func (c *flowFlags) runConfig(control bool) bench.FlowRunConfig {
	cfg := bench.DefaultFlowRunConfig()
	cfg.Rounds, cfg.Duration, cfg.Warmup = c.Rounds, c.Duration, c.Warmup
	cfg.Size, cfg.Senders, cfg.ProbeSize, cfg.Control = c.Size, c.Senders, c.ProbeSize, control
	return cfg
}

func (c *flowFlags) Validate() error {
	switch {
	case c.Rounds < 1:
		return usagef("--rounds must be at least 1")
	case c.Duration <= 0:
		return usagef("--duration must be positive")
	case c.Warmup < 0:
		return usagef("--warmup must not be negative")
	case c.Size < 1 || c.Size > framing.DefaultMaxPayload:
		return usagef("--size must be 1..%d", framing.DefaultMaxPayload)
	case c.Senders < 1:
		return usagef("--senders must be at least 1")
	case c.Window != 0 && (c.Window < framing.HeaderSize || c.Window > 1<<30):
		return usagef("--window must be 0 (the default) or %d..%d", framing.HeaderSize, 1<<30)
	case c.ProbeSize < 4 || c.ProbeSize > bench.MaxMessage:
		return usagef("--probe-size must be 4..%d", bench.MaxMessage)
	case c.Pin && c.InProcess:
		return usagef("--pin needs the server in a child process, not --in-process")
	}
	return c.checkTarget()
}

func (c *priorityCmd) Validate() error {
	if err := c.flowFlags.Validate(); err != nil {
		return err
	}
	switch {
	case c.Trials < 1:
		return usagef("--trials must be at least 1")
	case c.Deadline <= 0:
		return usagef("--deadline must be positive")
	case c.DeadlockWindow < 1:
		return usagef("--deadlock-window must be positive")
	}
	return nil
}

func (c *priorityCmd) deadlockConfig() bench.DeadlockConfig {
	return bench.DeadlockConfig{Trials: c.Trials, Deadline: c.Deadline, Window: c.DeadlockWindow}
}

func (c *flowCmd) Run(g *globals) error {
	rep := bench.NewReport("flow", g.args)
	if c.active() {
		if c.Control {
			return usagef("--control does not apply with --target: the control is a raw TCP stream between processes cibench spawns")
		}
		pr, target, err := c.runTargetFlow(g, false)
		if err != nil {
			return err
		}
		rep.Target = target
		return c.output(g, rep, pr, "", "cibench flow --target: ICS bulk echoes between two nodes of a running cluster; priority echoes idle vs under that bulk")
	}
	pr, pinning, err := c.run(g, c.Control)
	if err != nil {
		return err
	}
	return c.output(g, rep, pr, pinning, "cibench flow: ICS bulk on a throttled channel vs one raw TCP stream; priority RPCs idle vs under that bulk")
}

func (c *priorityCmd) Run(g *globals) error {
	rep := bench.NewReport("priority", g.args)
	if c.active() {
		pr, target, err := c.runTargetFlow(g, true)
		if err != nil {
			return err
		}
		rep.Target = target
		return c.output(g, rep, pr, "", "cibench priority --target: priority echoes idle vs under ICS bulk between two nodes of a running cluster")
	}
	pr, pinning, err := c.run(g, true)
	if err != nil {
		return err
	}
	status := newFlowStatus(g, 1)
	status.phase(1, "deadlock")
	pr.Deadlock, err = bench.RunDeadlock(g.ctx, c.deadlockConfig())
	status.done()
	if err != nil {
		return err
	}
	return c.output(g, rep, pr, pinning, "cibench priority: priority RPCs idle, under ICS bulk and under a raw TCP stream (the control); the nested-RPC deadlock")
}

// output finishes rep with pr and prints it as JSON or tables.
func (c *flowFlags) output(g *globals, rep *bench.Report, pr *bench.PriorityResult, pinning, title string) error {
	rep.Priority = pr
	rep.Finish()
	if c.Pin {
		rep.Machine.Pinned, rep.Machine.Pinning = true, pinning
	}
	if c.JSON {
		return rep.WriteJSON(g.stdout)
	}
	fmt.Fprintf(g.stdout, "%s\n", title)
	return writePriorityText(g.stdout, pr)
}

// writePriorityText prints a priority result's parts that ran.
func writePriorityText(w io.Writer, pr *bench.PriorityResult) error {
	if pr.TargetFlow != nil {
		if err := pr.TargetFlow.WriteText(w); err != nil {
			return err
		}
	}
	if pr.Flow != nil {
		if err := pr.Flow.WriteText(w); err != nil {
			return err
		}
	}
	if pr.ClientMetrics != nil {
		fmt.Fprintf(w, "\nclient node metrics (whole run, warm-up included):\n  %s\n", strings.Join(pr.ClientMetrics, "\n  "))
		fmt.Fprintf(w, "\nserver node metrics (whole run, warm-up included):\n  %s\n", strings.Join(pr.ServerMetrics, "\n  "))
	}
	if pr.Deadlock != nil {
		fmt.Fprintln(w)
		return pr.Deadlock.WriteText(w)
	}
	return nil
}

// run runs the flow phases against a server it starts and stops, and
// returns the result and, with --pin, how it pinned.
func (c *flowFlags) run(g *globals, control bool) (_ *bench.PriorityResult, pinning string, err error) {
	ctx, cancel := context.WithCancelCause(g.ctx)
	defer cancel(nil)

	var cpus cpuPlan
	cfg := bench.FlowConfig{Pair: bench.Pair{Cluster: "bench-flow"}, Window: c.Window}
	if c.Pin {
		if cpus, err = planPinning(); err != nil {
			return nil, "", err
		}
		if err := cpus.pinSelf(); err != nil {
			return nil, "", err
		}
		cfg.EventLoops = 1 // gnet would size its loops by the CPUs seen at start
		pinning = cpus.String()
	}
	if c.Profile != "" {
		if err := os.MkdirAll(c.Profile, 0o755); err != nil {
			return nil, "", err
		}
	}

	client, err := bench.NewFlowClient(cfg)
	if err != nil {
		return nil, "", err
	}
	// The client node closes first, so that the server sees it leave
	// cleanly, then the server.
	var stopServer func() error
	defer func() {
		err = errors.Join(err, client.Close())
		if stopServer != nil {
			err = errors.Join(err, stopServer())
		}
	}()

	var serverAddr string
	if c.InProcess {
		s, err := bench.StartFlowServer(cfg, "127.0.0.1:0", client.Addr())
		if err != nil {
			return nil, "", err
		}
		stopServer, serverAddr = s.Close, s.Addr()
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, "", err
		}
		argv := []string{exe, "--quiet", "serve", "--peer=flow", "--listen=127.0.0.1:0",
			"--cluster=" + cfg.Cluster, "--node=2", "--client-node=1", "--client-addr=" + client.Addr(),
			"--window=" + strconv.Itoa(c.Window)}
		if c.Profile != "" {
			argv = append(argv, "--cpu-profile="+filepath.Join(c.Profile, "flow-server.pprof"))
		}
		if c.Pin {
			argv = cpus.wrap(argv)
		}
		ch, err := spawn(ctx, "flow", argv, g.stderr, func(err error) { cancel(err) })
		if err != nil {
			return nil, "", err
		}
		stopServer, serverAddr = ch.stop, ch.addr
	}
	if err := client.Connect(ctx, serverAddr); err != nil {
		return nil, "", err
	}

	run := c.runConfig(control)
	status := newFlowStatus(g, run.Rounds)
	run.Progress = status.phase
	stopProfile, err := c.startProfile()
	if err != nil {
		return nil, "", err
	}
	res, err := bench.RunFlow(ctx, client, run)
	status.done()
	if perr := stopProfile(); err == nil {
		err = perr
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause // "interrupted" or the server that died, not the symptom
		}
		return nil, "", err
	}
	res.Env.Servers = "a child process"
	if c.InProcess {
		res.Env.Servers = "this process"
	}
	if c.Pin {
		res.Env.Pinned, res.Env.Pinning = true, pinning
	}

	out := &bench.PriorityResult{Flow: res}
	if c.Metrics {
		var b bytes.Buffer
		client.Node().Metrics().WritePrometheus(&b)
		out.ClientMetrics = icsMetricLines(b.String())
		mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
		text, err := client.ServerMetrics(mctx)
		mcancel()
		if err != nil {
			return nil, "", fmt.Errorf("server metrics: %w", err)
		}
		out.ServerMetrics = icsMetricLines(text)
	}
	return out, pinning, nil
}

// startProfile starts the client's CPU profile if --profile asks for one.
func (c *flowFlags) startProfile() (stop func() error, err error) {
	if c.Profile == "" {
		return func() error { return nil }, nil
	}
	return startCPUProfile(filepath.Join(c.Profile, "flow-client.pprof"))
}

// startCPUProfile writes a CPU profile of this process to path until stop.
func startCPUProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

// icsMetricLines keeps the engine's ci_ics_* samples, without histogram
// buckets.
func icsMetricLines(text string) []string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, "ci_ics_") && !strings.Contains(line, "_bucket{") {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return out
}

// flowStatus shows the phase running on a terminal's stderr; phases are
// timed, so a count of calls would say nothing.
type flowStatus struct {
	w      io.Writer // nil: quiet, or stderr is not a terminal
	rounds int
}

func newFlowStatus(g *globals, rounds int) *flowStatus {
	s := &flowStatus{rounds: rounds}
	if !g.quiet && isTerminal(g.stderr) {
		s.w = g.stderr
	}
	return s
}

func (s *flowStatus) phase(round int, phase string) {
	if s.w != nil {
		fmt.Fprintf(s.w, "\rflow: round %d/%d, %-6s", round, s.rounds, phase)
	}
}

func (s *flowStatus) done() {
	if s.w != nil {
		fmt.Fprint(s.w, "\r\033[K")
	}
}

// serveFlow is "cibench serve --peer=flow": the flow benchmark's server
// node and raw TCP listener, until the parent closes stdin.
func (s *serveCmd) serveFlow(g *globals) (err error) {
	if s.Node == 0 || s.ClientNode == 0 || s.Node == s.ClientNode {
		return usagef("--node and --client-node must be different and not 0")
	}
	if s.ClientAddr == "" {
		return usagef("--peer=flow needs --client-addr: the server node must know the client to reply")
	}
	if s.Window != 0 && (s.Window < framing.HeaderSize || s.Window > 1<<30) {
		return usagef("--window must be 0 (the default) or %d..%d", framing.HeaderSize, 1<<30)
	}
	if s.CPUProfile != "" {
		stop, err := startCPUProfile(s.CPUProfile)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, stop()) }()
	}
	cfg := bench.FlowConfig{Pair: bench.Pair{Cluster: s.Cluster, ServerNode: engine.NodeNum(s.Node),
		ClientNode: engine.NodeNum(s.ClientNode)}, Window: s.Window}
	srv, err := bench.StartFlowServer(cfg, s.Listen, s.ClientAddr)
	if err != nil {
		return fmt.Errorf("serve flow: %w", err)
	}
	line, _ := json.Marshal(readyLine{Peer: "flow", Addr: srv.Addr(), PID: os.Getpid()})
	if _, err := fmt.Fprintf(g.stdout, "%s\n", line); err != nil {
		return errors.Join(err, srv.Close())
	}
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stdinClosed:
	case <-g.ctx.Done():
	}
	return srv.Close()
}
