package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/bench"
)

// failoverCmd is cibench failover.
type failoverCmd struct {
	Nodes    int    `default:"3" help:"Cluster size (3 to 254; nodes 1-3 are master-eligible). Spawned clusters only." env:"CI_NODES"`
	Trials   int    `default:"20" help:"Faults to inject, one after the other." env:"CI_TRIALS"`
	Fault    string `default:"kill" enum:"kill,stop" help:"kill: SIGKILL (a crash); stop: SIGSTOP (a hang; the node is continued afterwards, finds itself declared down and exits 4)." env:"CI_FAULT"`
	Victim   string `default:"keysvc-owner" enum:"keysvc-owner,master,member" help:"Which node to fault: keyseq's owner, the CLMS master, or a member that is neither." env:"CI_VICTIM"`
	Profile  string `default:"lan-fast" enum:"lan-fast,default" help:"CLMS timing profile of the spawned cluster (a target cluster has its own)." env:"CI_PROFILE"`
	JSON     bool   `name:"json" help:"Print the result as JSON (docs/BENCH_SCHEMA.md, the failover section) instead of tables." env:"CI_JSON"`
	Observe  string `default:"push" enum:"push,poll" help:"How the phases after detected are observed: push (watch streams and long polls; polling still for a cinode without the long poll) or poll (every survivor every millisecond, as before: to compare the two)." env:"CI_OBSERVE"`
	KeepLogs string `placeholder:"DIR" help:"Copy every spawned node's log (node<N>.log, all its incarnations) into DIR at the end, to look at a slow trial afterwards; with CI_LOG_LEVEL=debug in cibench's environment the nodes log at debug, every step of their CLMS runner (messages, writes and their time, records applied, actions) stamped to the microsecond. Spawned clusters only." env:"CI_KEEP_LOGS"`
	targetFlags
	faultFlags
}

// faultFlags are target mode's fault options, shared by failover,
// membership and all.
type faultFlags struct {
	RejoinTimeout time.Duration `default:"60s" help:"With --target: how long a faulted node's supervisor has to restart it and the cluster to re-form (every node UP again, the victim a new incarnation) before the run fails." env:"CI_REJOIN_TIMEOUT"`
	KillVia       string        `default:"auto" enum:"auto,local,cluster" help:"With --target: how SIGKILL reaches the victim: auto (directly when it is a cinode of this machine, else forwarded), local (directly only), cluster (always through a survivor's POST /v1/signal; the victim's cinode needs --allow-fault-kill)." env:"CI_KILL_VIA"`
}

func (*failoverCmd) Help() string {
	return `Spawns a cluster of cinode processes on 127.0.0.1-N (cinode must be beside
cibench or on PATH: make build) with keyseq as a key service every node may
run, then, trial after trial, faults one node and follows the survivors'
admin endpoints until the cluster has recovered; the victim then restarts
as a new incarnation and the next trial waits for the cluster to re-form.

With --target, the same trials run against a running cluster found from
its admin endpoints; every node must be UP and cibench must reach every
node's admin endpoint (those not given are taken from /v1/members). Faults
are real: run it on a test cluster. SIGKILL goes to a victim on this
machine directly, to one elsewhere through a survivor's POST /v1/signal,
which the victim accepts only when its cinode runs with --allow-fault-kill.
--fault=stop needs the victim on this machine (cibench continues it after
each trial and on every exit, Ctrl-C included). cibench never restarts a
target's node: each cinode must run under a supervisor that restarts it
(deploy/cinode.service restarts on exit 1 and 4), or the trial fails after
--rejoin-timeout.

Phases, each timed from the signal:
  detected           the victim's UP -> GOINGDOWN committed (the transition's time)
  nodedown-all       every survivor has applied it
  new-master         every survivor names one new master (when the master was the victim)
  key-service-ready  every survivor sees keyseq ready in a new epoch (when its owner was the victim)
The later phases are pushed, not polled: before each fault cibench opens
every survivor's /v1/watch stream (nodedown-all ends when the last
survivor's stream delivers the GOINGDOWN) and long polls of its
/v1/status and /v1/keysvc (?after=SEQ&wait=DUR, docs/ADMIN.md), which
answer as each survivor's view changes: a phase ends when the last change
it needs arrives. A target whose cinode has no long poll (an older build)
is polled every millisecond instead, up to a poll round late; the output
and the JSON ("observed": "poll") say so; --observe=poll polls on purpose.
Each trial also records the CPU seconds the survivors used (survivor_cpu_s;
/proc, 10 ms ticks). Percentiles are nearest-rank. In
target mode, detected compares the master's clock with this machine's:
keep them synchronised (NTP) or read only the later phases.

Goals (issues 11, 12, 14), lan-fast: crash detection p99 < 100 ms, hang
detection p99 < 500 ms, key-service failover p99 < 150 ms and at most 1.5x
the same run's crash detection.

Examples:
  cibench failover --trials=20                      # kill keyseq's owner 20 times
  cibench failover --fault=stop --victim=master --trials=10
  cibench failover --profile=default --trials=5 --json > failover.json
  cibench failover --observe=poll --trials=15      # the old way, to compare its cost
  CI_LOG_LEVEL=debug cibench failover --keep-logs=/tmp/fo-logs  # the nodes' logs, to read a slow trial
  cibench failover --target=10.0.0.1:7180,10.0.0.2:7180,10.0.0.3:7180 \
      --token-file=/etc/ci/admin.token --trials=5  # a running test cluster
  cibench failover --target=127.0.0.1:7180 --fault=stop --victim=member --trials=3`
}

func (c *failoverCmd) Validate() error {
	if c.Nodes < 3 || c.Nodes > 254 {
		return usagef("--nodes must be 3 to 254")
	}
	if c.Trials < 1 {
		return usagef("--trials must be at least 1")
	}
	if c.RejoinTimeout <= 0 {
		return usagef("--rejoin-timeout must be positive")
	}
	if c.KeepLogs != "" && c.targetFlags.enabled() {
		return usagef("--keep-logs keeps the logs of nodes cibench spawns; a --target cluster's logs are where its cinodes write them")
	}
	_, err := c.targetFlags.validate()
	return err
}

func (c *failoverCmd) Run(g *globals) error {
	rep := bench.NewReport("failover", g.args) // started now
	res, err := runFailover(g, failoverPlan{nodes: c.Nodes, trials: c.Trials, fault: c.Fault, victim: c.Victim, profile: c.Profile,
		target: c.targetFlags, faults: c.faultFlags, poll: c.Observe == observedPoll, keepLogs: c.KeepLogs}, g.stderr)
	if err != nil {
		return err
	}
	if c.JSON {
		rep.Failover = res
		rep.Finish()
		return rep.WriteJSON(g.stdout)
	}
	return writeFailoverText(g.stdout, res)
}

// failoverGoal is the key-service-ready p99 goal of a profile (issue 14).
func failoverGoal(profile string) time.Duration {
	if profile == "lan-fast" {
		return 150 * time.Millisecond
	}
	return 0
}

// failoverPlan is one cibench failover run.
type failoverPlan struct {
	nodes, trials          int
	fault, victim, profile string
	target                 targetFlags // spawn a cluster when empty
	faults                 faultFlags
	poll                   bool   // observe by polling (--observe=poll)
	keepLogs               string // copy the spawned nodes' logs here at the end (--keep-logs)
}

// openCluster spawns the cluster (nodes, profile, keyseq) or dials the
// target; close stops what was spawned, or continues what was stopped.
func openCluster(g *globals, spec clusterSpec, target targetFlags, faults faultFlags) (faultCluster, func() error, error) {
	if target.enabled() {
		tc, err := dialTarget(g.ctx, target, faults.RejoinTimeout, faults.KillVia)
		if err != nil {
			return nil, nil, err
		}
		return tc, tc.close, nil
	}
	c, err := newCinodeCluster(spec)
	if err != nil {
		return nil, nil, err
	}
	closeFn := func() error { _, err := c.close(); return err }
	if err := c.startAll(g.ctx); err != nil {
		return nil, nil, errors.Join(err, closeFn())
	}
	return c, closeFn, nil
}

// runFailover runs the trials; progress lines go to progress.
func runFailover(g *globals, p failoverPlan, progress io.Writer) (_ *bench.FailoverResult, err error) {
	sig := syscall.SIGKILL
	if p.fault == "stop" {
		sig = syscall.SIGSTOP
	}
	fc, closeFn, err := openCluster(g, clusterSpec{nodes: p.nodes, profile: p.profile, keyseq: true, keepLogs: p.keepLogs}, p.target, p.faults)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeFn()) }()
	c := fc.view()
	res := &bench.FailoverResult{Nodes: len(c.nodes()), Profile: p.profile, Fault: p.fault, Victim: p.victim, TargetP99: failoverGoal(p.profile), Mode: bench.ModeSpawned}
	if p.target.enabled() {
		// The cluster's own profile, which cibench cannot read: no goal.
		res.Mode, res.Endpoints, res.Profile, res.TargetP99 = bench.ModeTarget, p.target.Target, "", 0
	}
	for trial := 1; trial <= p.trials; trial++ {
		o, code, err := failoverTrial(g.ctx, fc, p.victim, sig, p.poll)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", trial, err)
		}
		if sig == syscall.SIGSTOP && code >= 0 && code != exitFencedCinode {
			return nil, fmt.Errorf("trial %d: node %d, continued after SIGSTOP, exited %d, want %d (fenced)", trial, o.victim, code, exitFencedCinode)
		}
		res.Trials = append(res.Trials, o.trial(trial))
		if res.Observed != observedPoll { // one polled trial makes the run's times polled
			res.Observed = o.observed
		}
		fmt.Fprintf(progress, "failover trial %d/%d: %s node %d: detected %s, nodedown-all %s%s%s; survivors' CPU %s (%s)\n", trial, p.trials, o.fault, o.victim,
			fmtDur(o.detected), fmtDur(o.nodeDownAll), optPhase(", new master", o.masterAt), optPhase(", keyseq ready", o.readyAt), fmtCPU(o.survivorCPU), o.observed)
	}
	res.Phases = bench.SummarizeFailover(res.Trials)
	return res, nil
}

// failoverTrial waits for the cluster to be formed, faults the victim,
// follows the recovery and brings the victim back.
func failoverTrial(ctx context.Context, fc faultCluster, victim string, sig syscall.Signal, poll bool) (faultOutcome, int, error) {
	c := fc.view()
	if err := fc.waitFormed(ctx); err != nil {
		return faultOutcome{}, 0, err
	}
	if c.keyseq {
		if err := c.waitKeyseqReady(ctx); err != nil {
			return faultOutcome{}, 0, err
		}
	}
	n, err := c.pickVictim(ctx, victim)
	if err != nil {
		return faultOutcome{}, 0, err
	}
	o, err := injectFault(ctx, fc, n, sig, poll)
	if err != nil {
		return o, 0, err
	}
	code, err := fc.restore(ctx, o)
	return o, code, err
}

// exitFencedCinode is cinode's exit status when it fenced itself.
const exitFencedCinode = 4

func optPhase(name string, d time.Duration) string {
	if d == 0 {
		return ""
	}
	return name + " " + fmtDur(d)
}

// writeFailoverText prints the per-phase percentiles.
func writeFailoverText(w io.Writer, res *bench.FailoverResult) error {
	fault, victim := "", ""
	if len(res.Trials) > 0 {
		fault, victim = res.Trials[0].Fault, res.Trials[0].Victim
	}
	where := "profile " + res.Profile
	if res.Mode == bench.ModeTarget {
		where = "running cluster at " + strings.Join(res.Endpoints, ",")
	}
	fmt.Fprintf(w, "failover: %d trials, %s of the %s, %d nodes, %s (times since the signal)\n",
		len(res.Trials), fault, victim, res.Nodes, where)
	if res.Observed == observedPoll {
		fmt.Fprintf(w, "note: observed by polling every survivor every %v (--observe=poll, or a cinode without the long poll on /v1/status: an older build): the later phases include up to a poll round\n", pollEvery)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "phase\ttrials\tp50\tp99\tmax\t\n")
	for _, p := range res.Phases {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", p.Name, p.Trials, fmtDur(p.P50), fmtDur(p.P99), fmtDur(p.Max))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if res.TargetP99 > 0 {
		for _, p := range res.Phases {
			if p.Name == bench.FailoverKeyReady {
				verdict := "met"
				if p.P99 >= res.TargetP99 {
					verdict = "missed"
				}
				fmt.Fprintf(w, "goal: key-service-ready p99 < %s: %s\n", fmtDur(res.TargetP99), verdict)
			}
		}
	}
	return nil
}

// fmtCPU writes CPU seconds, "-" when not measured.
func fmtCPU(s *float64) string {
	if s == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fs", *s)
}
