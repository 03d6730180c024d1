package node_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

// The loaded-node harness (issue 11, "a node that is merely slow or
// CPU-saturated must not be declared down"): a 3-node cluster of processes
// in which one node runs at 100% CPU for a while, counting every GOINGDOWN
// applied anywhere (the oracle: zero) and the near misses the nodes' stats
// show. Two ways to saturate it:
//
//   - inproc: GOMAXPROCS busy goroutines inside the node's process, which
//     compete with the node's own goroutines for the Go scheduler's Ps;
//   - inproc-pinned: the same, with the node's process pinned to one CPU
//     and the other nodes to the others, so that the hog starves the node
//     and not the whole (small) machine;
//   - pinned: the node's process and an external hog process (as many busy
//     threads as the machine has CPUs) pinned to the same CPU, so the
//     kernel gives the node a fraction of one CPU.
//
// make test runs inproc for 5 s. CI_CPUHOG_SECONDS=60 runs the long
// version; CI_CPUHOG_MODES ("inproc,pinned", the default when long),
// CI_CPUHOG_PROFILE ("lan-fast" or "default") and CI_CPUHOG_TARGET
// ("member", the default, or "master": which node to load) select the rest;
// CI_CPUHOG_STRETCH overrides the timing stretch (4 under -race, else 1).
// Results: docs/CLMS.md, "Loaded nodes".
func TestCPUHog(t *testing.T) {
	secs, modes := 5, []string{"inproc"}
	if s := os.Getenv("CI_CPUHOG_SECONDS"); s != "" {
		var err error
		if secs, err = strconv.Atoi(s); err != nil || secs <= 0 {
			t.Fatalf("CI_CPUHOG_SECONDS=%q: want a positive number of seconds", s)
		}
		modes = []string{"inproc", "pinned"}
	}
	if s := os.Getenv("CI_CPUHOG_MODES"); s != "" {
		modes = strings.Split(s, ",")
	}
	profile := cmp(os.Getenv("CI_CPUHOG_PROFILE"), "lan-fast")
	target := cmp(os.Getenv("CI_CPUHOG_TARGET"), "member")
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			if mode != "inproc" && mode != "inproc-pinned" && mode != "pinned" {
				t.Fatalf("mode %q: want inproc, inproc-pinned or pinned", mode)
			}
			hogRun(t, mode, profile, target, time.Duration(secs)*time.Second)
		})
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// hogResult is what one run measured.
type hogResult struct {
	nodeDowns   []clms.Transition // every GOINGDOWN applied anywhere
	fenced      []clms.NodeNum
	missed      map[clms.NodeNum]uint64 // heartbeats missed, per node
	suspicions  uint64                  // suspicions raised by any master
	lapses      map[clms.NodeNum]uint64 // lease lapses, per node
	leaders     map[clms.NodeNum]uint64 // raft leader changes (including to none: a pre-candidate), per node
	terms       uint64                  // raft term increases (elections), the most any node saw
	late        map[clms.NodeNum]uint64 // late ticks, per node
	rtt         [clms.RTTBuckets]uint64 // the loaded node's imalive round trips, in ticks
	nodeCPU     float64                 // the loaded node's CPU use, in CPUs
	hogCPU      float64                 // the external hog's, in CPUs
	beforeLoad1 string
}

func hogRun(t *testing.T, mode, profile, target string, d time.Duration) {
	pc := newProcCluster(t, nodetest.Options{Nodes: 3, Profile: profile})
	if k, err := strconv.Atoi(os.Getenv("CI_CPUHOG_STRETCH")); err == nil && k >= 1 {
		pc.k = k // CI_CPUHOG_STRETCH=1: lan-fast as is, even under -race
	}
	pc.startAll()
	all := pc.all()
	pc.waitFor("3 nodes UP", all, repUp(all...))
	master := pc.master(all)
	victim := master
	if target != "master" {
		victim = others(all, master)[0]
	}
	p := pc.procs[victim]
	res := hogResult{missed: map[clms.NodeNum]uint64{}, lapses: map[clms.NodeNum]uint64{}, late: map[clms.NodeNum]uint64{},
		leaders: map[clms.NodeNum]uint64{}, beforeLoad1: loadAvg()}

	var hogCmd *exec.Cmd
	if mode == "inproc-pinned" {
		// The loaded node keeps its GOMAXPROCS Ps but gets one CPU; the
		// others get the rest, so the hog starves the node and not the
		// machine (a 2-core machine is otherwise saturated as a whole).
		if nCPU() < 2 {
			t.Skip("inproc-pinned needs 2 CPUs")
		}
		for _, n := range all {
			cpus := []int{nCPU() - 1}
			if n != victim {
				cpus = nil
				for c := range nCPU() - 1 {
					cpus = append(cpus, c)
				}
			}
			if err := pinAll(pc.procs[n].cmd.Process.Pid, cpus...); err != nil {
				t.Fatal(err)
			}
		}
	}
	if mode == "pinned" {
		cpu := nCPU() - 1
		if err := pinAll(p.cmd.Process.Pid, cpu); err != nil {
			t.Fatal(err)
		}
		hogCmd = exec.Command(os.Args[0], "-test.run=^$")
		hogCmd.Env = append(os.Environ(), envHogProc+"=1")
		if err := hogCmd.Start(); err != nil {
			t.Fatal(err)
		}
		hogDone := make(chan struct{})
		go func() { _ = hogCmd.Wait(); close(hogDone) }()
		t.Cleanup(func() { _ = hogCmd.Process.Kill(); <-hogDone })
		if err := pinAll(hogCmd.Process.Pid, cpu); err != nil {
			t.Fatal(err)
		}
	}
	before := map[clms.NodeNum]childReport{}
	for _, n := range all {
		before[n], _ = pc.procs[n].report()
	}
	cpu0 := procCPU(p.cmd.Process.Pid)
	var hog0 time.Duration
	if hogCmd != nil {
		hog0 = procCPU(hogCmd.Process.Pid)
	}
	start := time.Now()
	if mode != "pinned" {
		p.command(fmt.Sprintf("hog %s", d), "hog")
	}
	// The run is the measured interval itself, not a synchronisation: it
	// ends early only if a node process exits (a fence).
	stop := make(chan struct{})
	exits := make(chan clms.NodeNum, len(all))
	for _, n := range all {
		go func() {
			select {
			case <-pc.procs[n].exit:
				exits <- n
			case <-stop:
			}
		}()
	}
	select {
	case n := <-exits:
		t.Errorf("node %d exited during the load (code %d)", n, pc.procs[n].code)
	case <-time.After(d):
	}
	close(stop)
	elapsed := time.Since(start)
	if cpu1 := procCPU(p.cmd.Process.Pid); cpu1 != 0 { // 0: the process is gone (fenced)
		res.nodeCPU = float64(cpu1-cpu0) / float64(elapsed)
	}
	if hogCmd != nil {
		res.hogCPU = float64(procCPU(hogCmd.Process.Pid)-hog0) / float64(elapsed)
		_ = hogCmd.Process.Kill()
	}
	// Whatever a master proposed during the load is committed and applied
	// everywhere once the histories agree.
	var live []clms.NodeNum
	for _, n := range all {
		select {
		case <-pc.procs[n].exit:
			res.fenced = append(res.fenced, n)
		default:
			live = append(live, n)
		}
	}
	pc.sameHistory(live)
	after := map[clms.NodeNum]childReport{}
	for _, n := range live {
		after[n], _ = pc.procs[n].report()
	}
	seen := map[[2]uint64]bool{}
	for _, n := range live {
		a, b := after[n], before[n]
		for _, tr := range a.Applied {
			if tr.T.To == clms.StateGoingDown && !seen[[2]uint64{uint64(tr.T.Node), tr.T.Incarnation}] {
				seen[[2]uint64{uint64(tr.T.Node), tr.T.Incarnation}] = true
				res.nodeDowns = append(res.nodeDowns, tr.T)
			}
		}
		res.missed[n] = a.Stats.HeartbeatsMissed - b.Stats.HeartbeatsMissed
		res.suspicions += a.Stats.Suspicions - b.Stats.Suspicions
		res.lapses[n] = a.Stats.LeaseLapses - b.Stats.LeaseLapses
		res.late[n] = a.LateTicks - b.LateTicks
		res.leaders[n] = a.Stats.LeaderChanges - b.Stats.LeaderChanges
		res.terms = max(res.terms, a.Stats.RaftTerm-b.Stats.RaftTerm)
		if n == victim {
			for i := range res.rtt {
				res.rtt[i] = a.Stats.HeartbeatRTT[i] - b.Stats.HeartbeatRTT[i]
			}
		}
	}
	tick := pc.c.Config.Timing.Tick
	t.Logf("cpuhog: mode=%s profile=%s stretch=%d target=%s(node %d, master %d) load=%v node-cpu=%.2f hog-cpu=%.2f loadavg=%s->%s",
		mode, profile, pc.k, target, victim, master, elapsed.Round(time.Millisecond), res.nodeCPU, res.hogCPU, res.beforeLoad1, loadAvg())
	t.Logf("cpuhog: NODEDOWNs=%d fenced=%v heartbeats-missed=%v suspicions=%d lease-lapses=%v leader-changes=%v raft-terms=+%d late-ticks=%v",
		len(res.nodeDowns), res.fenced, res.missed, res.suspicions, res.lapses, res.leaders, res.terms, res.late)
	t.Logf("cpuhog: node %d imalive round trip (tick %v): n=%d p50=%v p99=%v max=%v (lease %v)", victim, tick,
		rttCount(res.rtt), rttPct(res.rtt, 0.50, tick), rttPct(res.rtt, 0.99, tick), rttPct(res.rtt, 1, tick),
		pc.c.Config.Timing.LeaseTimeout*time.Duration(pc.k))
	for _, tr := range res.nodeDowns {
		t.Errorf("false NODEDOWN: %v", tr)
	}
	if len(res.fenced) > 0 {
		t.Errorf("nodes %v fenced themselves under load", res.fenced)
	}
}

// command sends a line to the process and expects the answer want.
func (p *proc) command(line, want string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatal(err)
	}
	select {
	case l := <-p.lines:
		if l != want {
			p.t.Fatalf("node %d: %q answered %q, want %q", p.num, line, l, want)
		}
	case <-time.After(10 * time.Second):
		p.t.Fatalf("node %d does not answer %q", p.num, line)
	}
}

func rttCount(h [clms.RTTBuckets]uint64) uint64 {
	var n uint64
	for _, c := range h {
		n += c
	}
	return n
}

// rttPct is the q-quantile of h as an upper bound: bucket i holds round
// trips of i whole ticks, so below (i+1) ticks ("≥" for the last bucket).
func rttPct(h [clms.RTTBuckets]uint64, q float64, tick time.Duration) string {
	n := rttCount(h)
	if n == 0 {
		return "-"
	}
	need := uint64(q*float64(n) + 0.999999)
	var acc uint64
	for i, c := range h {
		acc += c
		if acc >= max(need, 1) {
			if i == len(h)-1 {
				return fmt.Sprintf(">=%v", time.Duration(i)*tick)
			}
			return fmt.Sprintf("<%v", time.Duration(i+1)*tick)
		}
	}
	return "-"
}

// pinAll pins every thread of process pid to cpus (as taskset -a): threads
// it creates later inherit the mask. Two passes catch threads created
// while the first ran.
func pinAll(pid int, cpus ...int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	for range 2 {
		tids, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		if err != nil {
			return err
		}
		for _, e := range tids {
			tid, _ := strconv.Atoi(e.Name())
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != syscall.ESRCH {
				return fmt.Errorf("pin thread %d of %d to CPUs %v: %w", tid, pid, cpus, err)
			}
		}
	}
	return nil
}

func nCPU() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 1
	}
	return slices.Max([]int{set.Count(), 1})
}

// procCPU is the user+system CPU time process pid has used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (USER_HZ, 100 on Linux).
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], "/")
}
