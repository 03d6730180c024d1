package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/services/admin"
)

// membershipCmd is cibench membership.
type membershipCmd struct {
	Nodes   []int         `default:"3,16" sep:"," help:"Cluster sizes, one spawned cluster each (3 to 254; --nodes=64 wants about 64 x 40 descriptors)." env:"CI_NODES"`
	Steady  time.Duration `default:"2s" help:"Window over which the master's steady CPU and bytes/s are measured." env:"CI_STEADY"`
	Profile string        `default:"lan-fast" enum:"lan-fast,default" help:"CLMS timing profile of the spawned clusters." env:"CI_PROFILE"`
	JSON    bool          `name:"json" help:"Print the result as JSON (docs/BENCH_SCHEMA.md, the membership section) instead of a table." env:"CI_JSON"`
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

Examples:
  cibench membership                      # 3 and 16 nodes
  cibench membership --nodes=64 --steady=5s
  cibench membership --nodes=3 --json`
}

func (c *membershipCmd) Validate() error {
	for _, n := range c.Nodes {
		if n < 3 || n > 254 {
			return usagef("--nodes: %d is not 3 to 254", n)
		}
	}
	if c.Steady <= 0 {
		return usagef("--steady must be positive")
	}
	return nil
}

func (c *membershipCmd) Run(g *globals) error {
	rep := bench.NewReport("membership", g.args)
	res, err := runMembership(g, c.Nodes, c.Steady, c.Profile, g.stderr)
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

func runMembership(g *globals, sizes []int, steady time.Duration, profile string, progress io.Writer) (*bench.MembershipResult, error) {
	res := &bench.MembershipResult{Profile: profile}
	for _, n := range sizes {
		run, err := membershipRun(g.ctx, n, steady, profile)
		if err != nil {
			return nil, fmt.Errorf("%d nodes: %w", n, err)
		}
		fmt.Fprintf(progress, "membership: %d nodes formed in %s\n", n, fmtDur(run.Formation))
		res.Runs = append(res.Runs, run)
	}
	return res, nil
}

func membershipRun(ctx context.Context, nodes int, steady time.Duration, profile string) (run bench.MembershipRun, err error) {
	run.Nodes, run.Steady = nodes, steady
	c, err := newCinodeCluster(clusterSpec{nodes: nodes, profile: profile})
	if err != nil {
		return run, err
	}
	defer func() {
		if _, cerr := c.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	t0 := time.Now()
	if err := c.startAll(ctx); err != nil {
		return run, err
	}
	run.Formation = time.Since(t0)

	st, err := c.status(ctx, 1)
	if err != nil {
		return run, err
	}
	master := int(st.Master)
	member := nodes // the highest-numbered: outside the raft group when nodes > 3
	if member == master {
		member--
	}
	mp, pp := c.procs[master].pid, c.procs[member].pid
	run.FDsMaster, run.FDsMember = countFDs(mp), countFDs(pp)

	// Steady state: nothing but the two reads on each side of the window.
	cpu0m, cpu0p := procCPU(mp), procCPU(pp)
	b0, err := icsBytes(ctx, c.cl[master])
	if err != nil {
		return run, err
	}
	w0 := time.Now()
	select {
	case <-time.After(steady):
	case <-ctx.Done():
		return run, context.Cause(ctx)
	}
	b1, err := icsBytes(ctx, c.cl[master])
	if err != nil {
		return run, err
	}
	window := time.Since(w0).Seconds()
	run.MasterCPU = (procCPU(mp) - cpu0m) / window
	run.MemberCPU = (procCPU(pp) - cpu0p) / window
	run.MasterBytesPerSec = (b1 - b0) / window

	run.PropagationFirst, run.PropagationAll, err = propagation(ctx, c, member, st.LastTransition)
	return run, err
}

// propagation shuts member down (a planned SHUTDOWN) and times, from the
// commit of its first transition, when each other node's watch streams it.
func propagation(ctx context.Context, c *cinodeCluster, member int, since uint64) (first, all time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, faultTimeout)
	defer cancel()
	type seen struct {
		tr  admin.Transition
		at  time.Time
		err error
	}
	got := make(chan seen, c.spec.nodes)
	hello := make(chan struct{}, c.spec.nodes)
	watchers := 0
	for _, n := range c.nodes() {
		if n == member {
			continue
		}
		watchers++
		go func() { // ends with ctx (cancelled on return) or the first transition of member
			for ev, err := range c.cl[n].Watch(ctx, since, faultTimeout) {
				if err != nil {
					got <- seen{err: err}
					return
				}
				if ev.Event == "hello" {
					hello <- struct{}{}
				}
				if ev.Event == "transition" && int(ev.Transition.Node) == member {
					got <- seen{tr: *ev.Transition, at: time.Now()}
					return
				}
			}
		}()
	}
	for range watchers {
		select {
		case <-hello:
		case s := <-got:
			return 0, 0, fmt.Errorf("watch: %v", s.err)
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("waiting for the watch streams: %w", context.Cause(ctx))
		}
	}
	if err := c.signal(member, syscall.SIGTERM); err != nil {
		return 0, 0, err
	}
	for i := range watchers {
		select {
		case s := <-got:
			if s.err != nil {
				return 0, 0, fmt.Errorf("watch: %w", s.err)
			}
			d := s.at.Sub(s.tr.Time)
			if i == 0 {
				first = d
			}
			all = max(all, d)
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("waiting for node %d's shutdown on every node: %w", member, context.Cause(ctx))
		}
	}
	code, err := c.waitExit(ctx, member)
	if err == nil && code != 0 {
		err = fmt.Errorf("node %d's planned shutdown exited %d", member, code)
	}
	return first, all, err
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
	code, body, err := cl.Text(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("/metrics answered %d", code)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "ci_ics_bytes_in_total") && !strings.HasPrefix(l, "ci_ics_bytes_out_total") {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics line %q: %w", l, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

func writeMembershipText(w io.Writer, res *bench.MembershipResult) error {
	fmt.Fprintf(w, "membership: %s profile; propagation from commit to the first / last other node's watch; steady load per second\n", res.Profile)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "nodes\tformation\tpropagation first\tall\tmaster CPU\tmember CPU\tmaster ICS bytes/s\tfds master\tmember\t\n")
	for _, r := range res.Runs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.1f%%\t%.1f%%\t%.0f\t%d\t%d\t\n", r.Nodes, fmtDur(r.Formation), fmtDur(r.PropagationFirst),
			fmtDur(r.PropagationAll), 100*r.MasterCPU, 100*r.MemberCPU, r.MasterBytesPerSec, r.FDsMaster, r.FDsMember)
	}
	return tw.Flush()
}
