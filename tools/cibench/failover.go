package main

import (
	"fmt"
	"io"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/bench"
)

// failoverCmd is cibench failover.
type failoverCmd struct {
	Nodes   int    `default:"3" help:"Cluster size (3 to 254; nodes 1-3 are master-eligible)." env:"CI_NODES"`
	Trials  int    `default:"20" help:"Faults to inject, one after the other." env:"CI_TRIALS"`
	Fault   string `default:"kill" enum:"kill,stop" help:"kill: SIGKILL (a crash); stop: SIGSTOP (a hang; the node is continued afterwards, finds itself declared down and exits 4)." env:"CI_FAULT"`
	Target  string `default:"keysvc-owner" enum:"keysvc-owner,master,member" help:"Which node to fault: keyseq's owner, the CLMS master, or a member that is neither." env:"CI_TARGET"`
	Profile string `default:"lan-fast" enum:"lan-fast,default" help:"CLMS timing profile of the spawned cluster." env:"CI_PROFILE"`
	JSON    bool   `name:"json" help:"Print the result as JSON (docs/BENCH_SCHEMA.md, the failover section) instead of tables." env:"CI_JSON"`
}

func (*failoverCmd) Help() string {
	return `Spawns a cluster of cinode processes on 127.0.0.1-N (cinode must be beside
cibench or on PATH: make build) with keyseq as a key service every node may
run, then, trial after trial, faults one node and follows the survivors'
admin endpoints until the cluster has recovered; the victim then restarts
as a new incarnation and the next trial waits for the cluster to re-form.

Phases, each timed from the signal:
  detected           the victim's UP -> GOINGDOWN committed (the transition's time)
  nodedown-all       every survivor has applied it
  new-master         every survivor names one new master (when the master was the victim)
  key-service-ready  every survivor sees keyseq ready in a new epoch (when its owner was the victim)
Polled phases are seen by polling every survivor each millisecond: they
include up to a poll round of delay. Percentiles are nearest-rank.

Goals (issues 11, 12, 14), lan-fast: crash detection p99 < 100 ms, hang
detection p99 < 500 ms, key-service failover p99 < 150 ms and at most 1.5x
the same run's crash detection.

Examples:
  cibench failover --trials=20                      # kill keyseq's owner 20 times
  cibench failover --fault=stop --target=master --trials=10
  cibench failover --profile=default --trials=5 --json > failover.json`
}

func (c *failoverCmd) Validate() error {
	if c.Nodes < 3 || c.Nodes > 254 {
		return usagef("--nodes must be 3 to 254")
	}
	if c.Trials < 1 {
		return usagef("--trials must be at least 1")
	}
	return nil
}

func (c *failoverCmd) Run(g *globals) error {
	rep := bench.NewReport("failover", g.args) // started now
	res, err := runFailover(g, c.Nodes, c.Trials, c.Fault, c.Target, c.Profile, g.stderr)
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

// runFailover runs the trials; progress lines go to progress.
func runFailover(g *globals, nodes, trials int, fault, target, profile string, progress io.Writer) (_ *bench.FailoverResult, err error) {
	sig := syscall.SIGKILL
	if fault == "stop" {
		sig = syscall.SIGSTOP
	}
	c, err := newCinodeCluster(clusterSpec{nodes: nodes, profile: profile, keyseq: true})
	if err != nil {
		return nil, err
	}
	defer func() {
		if _, cerr := c.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := c.startAll(g.ctx); err != nil {
		return nil, err
	}
	res := &bench.FailoverResult{Nodes: nodes, Profile: profile, Fault: fault, Target: target, TargetP99: failoverGoal(profile)}
	for trial := 1; trial <= trials; trial++ {
		if err := c.waitReady(g.ctx, c.nodes()); err != nil {
			return nil, fmt.Errorf("trial %d: %w", trial, err)
		}
		if err := c.waitKeyseqReady(g.ctx); err != nil {
			return nil, fmt.Errorf("trial %d: %w", trial, err)
		}
		victim, err := c.pickVictim(g.ctx, target)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", trial, err)
		}
		o, err := c.injectFault(g.ctx, victim, sig)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", trial, err)
		}
		code, err := c.recover(g.ctx, o)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", trial, err)
		}
		if sig == syscall.SIGSTOP && code != exitFencedCinode {
			return nil, fmt.Errorf("trial %d: node %d, continued after SIGSTOP, exited %d, want %d (fenced)", trial, victim, code, exitFencedCinode)
		}
		res.Trials = append(res.Trials, o.trial(trial))
		fmt.Fprintf(progress, "failover trial %d/%d: %s node %d: detected %s, nodedown-all %s%s%s\n", trial, trials, o.fault, victim,
			fmtDur(o.detected), fmtDur(o.nodeDownAll), optPhase(", new master", o.masterAt), optPhase(", keyseq ready", o.readyAt))
	}
	res.Phases = bench.SummarizeFailover(res.Trials)
	return res, nil
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
	fmt.Fprintf(w, "failover: %d trials, %s of the %s, %d nodes, profile %s (times since the signal)\n",
		len(res.Trials), fault, victim, res.Nodes, res.Profile)
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
