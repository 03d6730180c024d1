package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/services/admin"
)

// membershipCmd is cibench membership.
type membershipCmd struct {
	Nodes       []string      `default:"3,16" sep:"," placeholder:"N[:PROFILE]" help:"Cluster sizes, one spawned cluster each, in order (3 to 254); N:PROFILE runs that size with its own CLMS timing profile (64:default), others with --profile. Each node wants about 40 descriptors. Spawned clusters only." env:"CI_NODES"`
	Steady      time.Duration `default:"2s" help:"Window over which the master's steady CPU and bytes/s are measured." env:"CI_STEADY"`
	Profile     string        `default:"lan-fast" enum:"lan-fast,default" help:"CLMS timing profile of the spawned clusters whose size in --nodes names none (a target cluster has its own)." env:"CI_PROFILE"`
	AllowFaults bool          `help:"With --target: measure propagation by SIGKILL of a member that is not the master and timing its NODEDOWN and its rejoin's NODEUP; its supervisor must restart it. Without it, a target's propagation is not measured." env:"CI_ALLOW_FAULTS"`
	JSON        bool          `name:"json" help:"Print the result as JSON (docs/BENCH_SCHEMA.md, the membership section) instead of a table." env:"CI_JSON"`
	targetFlags
	faultFlags
}

func (*membershipCmd) Help() string {
	return `For each cluster size, spawns that many cinode processes on 127.0.0.1-N
(nodes 1-3 master-eligible; cinode beside cibench or on PATH) and measures:

  formation      exec of every node at once -> every node ready, seeing all UP
  propagation    a member's planned SHUTDOWN committed -> streamed by the first
                 and by the last other node's admin watch (/v1/watch)
  steady load    CPU (user+system, per second) of the master and of a member,
                 and the master's ICS bytes in+out per second, over --steady
                 with nothing happening; open descriptors of each

With --target, measures a running cluster found from its admin endpoints
instead (every node UP, every admin endpoint reachable). Formation cannot
be measured on a formed cluster and is reported as not measured. A running
cluster has no transition cibench can cause harmlessly, so propagation is
measured only with --allow-faults: SIGKILL of a member that is not the
master (as cibench failover --target injects it), its NODEDOWN and, once
its supervisor has restarted it, its rejoin's NODEUP, each committed ->
streamed by the first and the last other node's watch; the run fails if
the node is not back within --rejoin-timeout. Propagation compares the
transition's time (the master's clock) with this machine's when the watch
delivered it: with the master on another machine it is only as good as
their synchronisation (NTP), and can even come out negative. Steady load
reads /proc for a node on this machine and its /metrics
(process_cpu_seconds_total, process_open_fds) otherwise.

Each size of --nodes runs with --profile unless it names its own after a
colon: --nodes=3,16,64:default runs 3 and 16 nodes with lan-fast and 64
with the default profile, as cibench all does. lan-fast's 300 ms lease is
for a quiet LAN: 64 processes starting at once on 2 CPUs leave one silent
for longer than that, and it is declared down before the cluster forms
(docs/CLMS.md, "Not done yet"); the default profile's 3 s lease forms it.
The same size may run twice with different profiles (3,3:default). Before
spawning anything, cibench checks that its open-file limit (RLIMIT_NOFILE)
allows about 40 descriptors per node of the largest cluster, raising the
soft limit to the hard one if it must, and stops with the limit's name
when even the hard limit is too low (ulimit -Hn).

Examples:
  cibench membership                      # 3 and 16 nodes, lan-fast
  cibench membership --nodes=3,16,64:default   # 64 nodes with the default profile (cibench all)
  cibench membership --nodes=64 --profile=default --steady=5s
  cibench membership --nodes=16,16:default    # one size, both profiles
  cibench membership --nodes=3 --json
  cibench membership --target=10.0.0.1:7180 --token-file=/etc/ci/admin.token --steady=10s
  cibench membership --target=127.0.0.1:7180 --allow-faults --json`
}

func (c *membershipCmd) Validate() error {
	if _, err := parseMemberSizes(c.Nodes, c.Profile); err != nil {
		return err
	}
	if c.Steady <= 0 {
		return usagef("--steady must be positive")
	}
	if c.RejoinTimeout <= 0 {
		return usagef("--rejoin-timeout must be positive")
	}
	if c.AllowFaults && !c.enabled() {
		return usagef("--allow-faults is for --target: a spawned cluster's propagation is measured without faults")
	}
	_, err := c.targetFlags.validate()
	return err
}

func (c *membershipCmd) Run(g *globals) error {
	rep := bench.NewReport("membership", g.args)
	sizes, err := parseMemberSizes(c.Nodes, c.Profile)
	if err != nil {
		return err
	}
	res, err := runMembership(g, membershipPlan{sizes: sizes, steady: c.Steady, profile: c.Profile,
		target: c.targetFlags, faults: c.faultFlags, allowFaults: c.AllowFaults}, g.stderr)
	if err != nil {
		return err
	}
	if c.JSON {
		rep.Membership = res
		rep.Finish()
		return rep.WriteJSON(g.stdout)
	}
	return writeMembershipText(g.stdout, res)
}

// memberSize is one spawned cluster of a membership run: its size and the
// CLMS timing profile it runs with.
type memberSize struct {
	nodes   int
	profile string
}

func (m memberSize) String() string { return fmt.Sprintf("%d:%s", m.nodes, m.profile) }

// Cluster sizes cibench membership spawns: three master-eligible nodes at
// least, and one loopback address each (127.0.0.1 to .254).
const (
	minMemberNodes = 3
	maxMemberNodes = 254
)

// timingProfiles are the CLMS timing profiles a spawned cluster can run
// with (clms.TimingProfile).
var timingProfiles = []string{"lan-fast", "default"}

// parseMemberSizes reads --nodes: sizes, each optionally followed by
// ":PROFILE"; a size without one runs with profile. The same size may
// appear with different profiles, not twice with the same one.
func parseMemberSizes(specs []string, profile string) ([]memberSize, error) {
	if len(specs) == 0 {
		return nil, usagef("--nodes is empty: give cluster sizes, such as 3,16,64:default")
	}
	var out []memberSize
	for _, spec := range specs {
		num, prof, named := strings.Cut(strings.TrimSpace(spec), ":")
		n, err := strconv.Atoi(num)
		if err != nil {
			return nil, usagef("--nodes: %q is not a cluster size (N or N:PROFILE, such as 64:default)", spec)
		}
		if n < minMemberNodes || n > maxMemberNodes {
			return nil, usagef("--nodes: %d is not %d to %d", n, minMemberNodes, maxMemberNodes)
		}
		if !named {
			prof = profile
		}
		if !slices.Contains(timingProfiles, prof) {
			return nil, usagef("--nodes: %q: profile %q is not one of %s", spec, prof, strings.Join(timingProfiles, ", "))
		}
		m := memberSize{nodes: n, profile: prof}
		if slices.Contains(out, m) {
			return nil, usagef("--nodes: %d nodes with the %s profile listed twice", n, prof)
		}
		out = append(out, m)
	}
	return out, nil
}

// membershipPlan is one cibench membership run.
type membershipPlan struct {
	sizes       []memberSize
	steady      time.Duration
	profile     string      // of the sizes that name none; the result's Profile
	target      targetFlags // spawn clusters when empty
	faults      faultFlags
	allowFaults bool
}

// Why a target run does not measure what a spawned one does.
const (
	formationOnTarget  = "the target cluster was already formed: formation is measured on spawned clusters only"
	propagationNoFault = "a running cluster has no transition cibench can cause without a fault: give --allow-faults to kill a member and time its NODEDOWN and rejoin"
)

func runMembership(g *globals, p membershipPlan, progress io.Writer) (*bench.MembershipResult, error) {
	res := &bench.MembershipResult{Profile: p.profile, Mode: bench.ModeSpawned}
	if p.target.enabled() {
		res.Mode, res.Endpoints, res.Profile = bench.ModeTarget, p.target.Target, ""
		run, err := membershipRun(g, memberSize{}, p)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "membership: running cluster of %d nodes measured\n", run.Nodes)
		res.Runs = append(res.Runs, run)
		return res, nil
	}
	// Every cluster's descriptors, checked before the first is spawned:
	// the largest is the one that needs most.
	largest := 0
	for _, m := range p.sizes {
		largest = max(largest, m.nodes)
	}
	if err := ensureDescriptors(largest); err != nil {
		return nil, err
	}
	for _, m := range p.sizes {
		run, err := membershipRun(g, m, p)
		if err != nil {
			return nil, fmt.Errorf("%d nodes (%s profile): %w", m.nodes, m.profile, err)
		}
		fmt.Fprintf(progress, "membership: %d nodes formed in %s (%s profile)\n", m.nodes, fmtDur(run.Formation), m.profile)
		res.Runs = append(res.Runs, run)
	}
	return res, nil
}

// membershipRun measures one cluster: a spawned one of m.nodes nodes with
// m.profile, or the target (m zero).
func membershipRun(g *globals, m memberSize, p membershipPlan) (run bench.MembershipRun, err error) {
	ctx := g.ctx
	run.Steady, run.Profile = p.steady, m.profile
	t0 := time.Now()
	fc, closeFn, err := openCluster(g, clusterSpec{nodes: m.nodes, profile: m.profile}, p.target, p.faults)
	if err != nil {
		return run, err
	}
	defer func() { err = errors.Join(err, closeFn()) }()
	c := fc.view()
	run.Nodes = len(c.nodes())
	if p.target.enabled() {
		run.FormationNotMeasured = formationOnTarget
		if err := fc.waitFormed(ctx); err != nil {
			return run, err
		}
	} else {
		run.Formation = time.Since(t0) // startAll waited for every node
	}

	st, err := c.status(ctx, c.nodes()[0])
	if err != nil {
		return run, err
	}
	master := int(st.Master)
	// A member that is neither master nor keyseq's owner when there is
	// one: the highest-numbered, outside the raft group when nodes > 3.
	member, err := c.pickVictim(ctx, "member")
	if err != nil {
		member = slices.Max(others(c.nodes(), master))
	}

	// Steady state: nothing but the reads on each side of the window.
	read := func() (ms, ps procUse, bytes float64, err error) {
		if ms, err = c.procStats(ctx, master); err != nil {
			return
		}
		if ps, err = c.procStats(ctx, member); err != nil {
			return
		}
		bytes, err = icsBytes(ctx, c.cl[master])
		return
	}
	m0, p0, b0, err := read()
	if err != nil {
		return run, err
	}
	run.FDsMaster, run.FDsMember = m0.fds, p0.fds
	w0 := time.Now()
	select {
	case <-time.After(p.steady):
	case <-ctx.Done():
		return run, context.Cause(ctx)
	}
	m1, p1, b1, err := read()
	if err != nil {
		return run, err
	}
	window := time.Since(w0).Seconds()
	run.MasterCPU = (m1.cpu - m0.cpu) / window
	run.MemberCPU = (p1.cpu - p0.cpu) / window
	run.MasterBytesPerSec = (b1 - b0) / window

	since := st.LastTransition
	switch {
	case !p.target.enabled():
		// A planned shutdown: the member's first transition.
		run.PropagationBy = "shutdown"
		times, err := propagation(ctx, fc, member, since, syscall.SIGTERM, faultTimeout,
			func(admin.Transition) bool { return true })
		if err != nil {
			return run, err
		}
		run.PropagationFirst, run.PropagationAll = times[0].first, times[0].all
		cc := fc.(*cinodeCluster)
		code, err := cc.waitExit(ctx, member)
		if err == nil && code != 0 {
			err = fmt.Errorf("node %d's planned shutdown exited %d", member, code)
		}
		return run, err
	case !p.allowFaults:
		run.PropagationNotMeasured = propagationNoFault
		return run, nil
	}
	run.PropagationBy = "kill-rejoin"
	times, err := propagation(ctx, fc, member, since, syscall.SIGKILL, faultTimeout+p.faults.RejoinTimeout,
		func(tr admin.Transition) bool { return tr.To == "DOWN" },
		func(tr admin.Transition) bool { return tr.To == "UP" })
	if err != nil {
		return run, err
	}
	run.PropagationFirst, run.PropagationAll = times[0].first, times[0].all
	run.PropagationUpFirst, run.PropagationUpAll = times[1].first, times[1].all
	_, err = fc.restore(ctx, faultOutcome{victim: member})
	return run, err
}

// spread is when a transition reached the first and the last watcher.
type spread struct{ first, all time.Duration }

// watched is a transition a node's /v1/watch stream delivered, and when;
// or the error that ended the stream.
type watched struct {
	node int
	tr   admin.Transition
	at   time.Time
	err  error
}

// watchNodes opens the /v1/watch stream of every node of ns from since and
// returns once each has said hello, so that nothing committed afterwards
// can be missed. keep(n) is node n's filter, called once on n's goroutine:
// each transition it sends arrives on the channel with the time n's stream
// delivered it, and the stream ends when it says no more. A stream's error
// arrives once and ends it. Every stream ends with ctx; stop cancels them
// and waits for their goroutines.
func (v *adminView) watchNodes(ctx context.Context, ns []int, since uint64,
	keep func(n int) func(admin.Transition) (send, more bool)) (_ <-chan watched, stop func(), _ error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	got := make(chan watched, 4*len(ns))
	hello := make(chan struct{}, len(ns))
	for _, n := range ns {
		wg.Add(1)
		go func() { // ends with ctx, an error, or keep's last
			defer wg.Done()
			filter := keep(n)
			send := func(w watched) bool { return sendUnlessDone(ctx, got, w) }
			for ev, err := range v.cl[n].Watch(ctx, since, faultTimeout) {
				if err != nil {
					send(watched{node: n, err: fmt.Errorf("node %d's watch: %w", n, err)})
					return
				}
				if ev.Event == "hello" {
					hello <- struct{}{}
				}
				if ev.Event != "transition" {
					continue
				}
				ok, more := filter(*ev.Transition)
				if ok && !send(watched{node: n, tr: *ev.Transition, at: time.Now()}) {
					return
				}
				if !more {
					return
				}
			}
		}()
	}
	for range ns {
		select {
		case <-hello:
		case w := <-got:
			stop()
			return nil, nil, w.err
		case <-ctx.Done():
			stop()
			return nil, nil, fmt.Errorf("waiting for the watch streams: %w", context.Cause(ctx))
		}
	}
	return got, stop, nil
}

// propagation watches every node but member from since, sends sig to
// member, and times, for each of want in turn, the first transition of
// member it accepts: from its commit (its time) to each other node's watch
// streaming it.
func propagation(ctx context.Context, fc faultCluster, member int, since uint64, sig syscall.Signal, bound time.Duration,
	want ...func(admin.Transition) bool) ([]spread, error) {
	c := fc.view()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	watchers := others(c.nodes(), member)
	got, stop, err := c.watchNodes(ctx, watchers, since, func(int) func(admin.Transition) (bool, bool) {
		i := 0 // which of want this node's stream waits for
		return func(tr admin.Transition) (bool, bool) {
			if int(tr.Node) != member || !want[i](tr) {
				return false, true
			}
			i++
			return true, i < len(want)
		}
	})
	if err != nil {
		return nil, err
	}
	defer stop()
	fire, err := fc.inject(ctx, member, sig)
	if err != nil {
		return nil, err
	}
	if err := fire(); err != nil {
		return nil, err
	}
	out := make([]spread, len(want))
	count := make([]int, len(want))
	next := map[int]int{} // node -> which of want its next delivery is
	tick := time.NewTicker(10 * pollEvery)
	defer tick.Stop()
	for left := len(watchers) * len(want); left > 0; {
		select {
		case s := <-got:
			if s.err != nil {
				return nil, s.err
			}
			i := next[s.node]
			next[s.node]++
			d := s.at.Sub(s.tr.Time)
			if count[i] == 0 {
				out[i].first = d
			}
			count[i]++
			out[i].all = max(out[i].all, d)
			left--
		case <-tick.C:
			// The watchers must live; the member's exit is what sig asks
			// for (a planned shutdown exits 0 as soon as its SHUTDOWN is
			// committed, often before every stream has delivered it).
			for _, w := range watchers {
				if err := fc.check(w); err != nil {
					return nil, err
				}
			}
		case <-ctx.Done():
			if context.Cause(ctx) == context.DeadlineExceeded && sig == syscall.SIGKILL {
				return nil, fmt.Errorf("node %d's transitions after %s did not reach every other node within %v: did its supervisor restart it?", member, sig, bound)
			}
			return nil, fmt.Errorf("waiting for node %d's transitions on every node: %w", member, context.Cause(ctx))
		}
	}
	return out, nil
}

// procUse is a process's CPU seconds (user+system) and open descriptors.
type procUse struct {
	cpu float64
	fds int
}

// procStats reads node n's process: from /proc when it is a cinode of
// this machine, else from its /metrics.
func (v *adminView) procStats(ctx context.Context, n int) (procUse, error) {
	st, err := v.status(ctx, n)
	if err != nil {
		return procUse{}, err
	}
	if local, _ := localCinode("/proc", v.cl[n].Addr, st.PID); local {
		return procUse{cpu: procCPU(st.PID), fds: countFDs(st.PID)}, nil
	}
	m, err := metricSums(ctx, v.cl[n], "process_cpu_seconds_total", "process_open_fds")
	if err != nil {
		return procUse{}, fmt.Errorf("node %d: %w", n, err)
	}
	return procUse{cpu: m[0], fds: int(m[1])}, nil
}

// procCPU is a process's user+system CPU time in seconds, from
// /proc/PID/stat (clock ticks of 1/100 s, USER_HZ on Linux); 0 if unknown.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count after its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	return (ut + st) / 100
}

// countFDs is the number of a process's open descriptors.
func countFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// icsBytes sums ci_ics_bytes_in_total and ci_ics_bytes_out_total over
// every label set of a node's /metrics.
func icsBytes(ctx context.Context, cl *admin.Client) (float64, error) {
	m, err := metricSums(ctx, cl, "ci_ics_bytes_in_total", "ci_ics_bytes_out_total")
	return m[0] + m[1], err
}

// metricSums reads a node's /metrics and sums each named family over its
// label sets.
func metricSums(ctx context.Context, cl *admin.Client, names ...string) ([]float64, error) {
	sums := make([]float64, len(names))
	code, body, err := cl.Text(ctx, "/metrics")
	if err != nil {
		return sums, err
	}
	if code != 200 {
		return sums, fmt.Errorf("/metrics answered %d", code)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		for i, name := range names {
			rest, ok := strings.CutPrefix(l, name)
			if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
				continue
			}
			v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
			if err != nil {
				return sums, fmt.Errorf("/metrics line %q: %w", l, err)
			}
			sums[i] += v
		}
	}
	return sums, sc.Err()
}

func writeMembershipText(w io.Writer, res *bench.MembershipResult) error {
	where := "spawned clusters"
	if res.Mode == bench.ModeTarget {
		where = "running cluster at " + strings.Join(res.Endpoints, ",")
	}
	fmt.Fprintf(w, "membership: %s; propagation from commit to the first / last other node's watch; steady load per second\n", where)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "nodes\tprofile\tformation\tpropagation first\tall\tmaster CPU\tmember CPU\tmaster ICS bytes/s\tfds master\tmember\t\n")
	measured := func(d time.Duration, why string) string {
		if why != "" {
			return "not measured"
		}
		return fmtDur(d)
	}
	for i, r := range res.Runs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%.1f%%\t%.1f%%\t%.0f\t%d\t%d\t\n", r.Nodes, orDash(res.RunProfile(i)), measured(r.Formation, r.FormationNotMeasured),
			measured(r.PropagationFirst, r.PropagationNotMeasured), measured(r.PropagationAll, r.PropagationNotMeasured),
			100*r.MasterCPU, 100*r.MemberCPU, r.MasterBytesPerSec, r.FDsMaster, r.FDsMember)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range res.Runs {
		if r.FormationNotMeasured != "" {
			fmt.Fprintf(w, "%d nodes: formation not measured: %s\n", r.Nodes, r.FormationNotMeasured)
		}
		if r.PropagationNotMeasured != "" {
			fmt.Fprintf(w, "%d nodes: propagation not measured: %s\n", r.Nodes, r.PropagationNotMeasured)
		}
		if r.PropagationBy == "kill-rejoin" {
			fmt.Fprintf(w, "%d nodes: propagation of a killed member's NODEDOWN (above) and of its rejoin's NODEUP: first %s, all %s\n",
				r.Nodes, fmtDur(r.PropagationUpFirst), fmtDur(r.PropagationUpAll))
		}
	}
	return nil
}

// orDash is s, or a dash when s is empty (a target cluster's profile).
func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
