package node_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/clms/clmstest"
	"github.com/clusterinfra/ci/services/node"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

// proc is one node process.
type proc struct {
	t     testing.TB
	num   clms.NodeNum
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	exit  chan struct{} // closed when the process has exited; code is set
	code  int
	// fencedAt is when (ns, wall clock) the process said it fenced itself,
	// and why.
	fencedAt int64
	fenceWhy string
}

// procCluster is a cluster of node processes.
type procCluster struct {
	t     testing.TB
	c     *nodetest.Cluster
	dirs  map[clms.NodeNum]string
	procs map[clms.NodeNum]*proc
	env   map[clms.NodeNum][]string // extra environment per node (listen/peer overrides)
	k     int                       // timing stretch
}

// procStretch keeps lan-fast as is, except under the race detector, which
// slows the node processes themselves several times over.
func procStretch() int {
	if raceEnabled {
		return 4
	}
	return 1
}

func newProcCluster(t testing.TB, opt nodetest.Options) *procCluster {
	c, err := nodetest.Write(t.TempDir(), opt)
	if err != nil {
		t.Fatal(err)
	}
	pc := &procCluster{t: t, c: c, dirs: map[clms.NodeNum]string{}, procs: map[clms.NodeNum]*proc{},
		env: map[clms.NodeNum][]string{}, k: procStretch()}
	for num := range c.Addrs {
		pc.dirs[num] = t.TempDir()
	}
	return pc
}

func (pc *procCluster) all() []clms.NodeNum {
	var ns []clms.NodeNum
	for n := range pc.c.Addrs {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

// start starts node num's process and waits for its "ready".
func (pc *procCluster) start(num clms.NodeNum) *proc {
	t := pc.t
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envConfig+"="+pc.c.Path, envNum+"="+strconv.Itoa(int(num)),
		envData+"="+pc.dirs[num], envStretch+"="+strconv.Itoa(pc.k))
	cmd.Env = append(cmd.Env, pc.env[num]...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, num: num, cmd: cmd, stdin: stdin, lines: make(chan string, 16), exit: make(chan struct{})}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT) // a stopped process cannot die of SIGKILL until continued on some kernels
		_ = cmd.Process.Kill()
		<-p.exit
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		}
		close(p.exit)
	}()
	select {
	case l := <-p.lines:
		if l != "ready" {
			t.Fatalf("node %d: %s", num, l)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("node %d did not start", num)
	}
	pc.procs[num] = p
	return p
}

func (pc *procCluster) startAll() {
	for _, n := range pc.all() {
		pc.start(n)
	}
}

// report asks the process for its status and history.
func (p *proc) report() (childReport, bool) {
	var rep childReport
	if _, err := io.WriteString(p.stdin, "status\n"); err != nil {
		return rep, false
	}
	select {
	case l, ok := <-p.lines:
		if !ok {
			return rep, false
		}
		if p.fenceLine(l) {
			return rep, false
		}
		js, found := strings.CutPrefix(l, "status ")
		if !found {
			p.t.Fatalf("node %d: %s", p.num, l)
		}
		if err := json.Unmarshal([]byte(js), &rep); err != nil {
			p.t.Fatal(err)
		}
		return rep, true
	case <-time.After(10 * time.Second):
		p.t.Fatalf("node %d does not answer", p.num)
	}
	return rep, false
}

// fenceLine records the child's "fenced <ns> <reason>" line, if l is one.
func (p *proc) fenceLine(l string) bool {
	rest, found := strings.CutPrefix(l, "fenced ")
	if found {
		at, why, _ := strings.Cut(rest, " ")
		p.fencedAt, _ = strconv.ParseInt(at, 10, 64)
		p.fenceWhy = why
	}
	return found
}

// drain reads what an exited process still said.
func (p *proc) drain() {
	for l := range p.lines {
		p.fenceLine(l)
	}
}

// waitFor polls the processes on until cond holds for every one.
func (pc *procCluster) waitFor(what string, on []clms.NodeNum, cond func(childReport) bool) map[clms.NodeNum]childReport {
	pc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		reps := map[clms.NodeNum]childReport{}
		ok := true
		for _, n := range on {
			rep, alive := pc.procs[n].report()
			if !alive || !cond(rep) {
				ok = false
				reps[n] = rep
				break
			}
			reps[n] = rep
		}
		if ok {
			return reps
		}
		if time.Now().After(deadline) {
			dump := ""
			for n, r := range reps {
				dump += fmt.Sprintf("\nnode %d: %+v", n, r.Status)
			}
			pc.t.Fatalf("timed out waiting for %s:%s", what, dump)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func repUp(nodes ...clms.NodeNum) func(childReport) bool {
	f := up(nodes...)
	return func(r childReport) bool { return f(r.Status) }
}

func repDown(n clms.NodeNum, inc uint64) func(childReport) bool {
	return func(r childReport) bool {
		m := member(r.Status, n)
		return m.Incarnation == inc && m.State == "DOWN"
	}
}

// goneAt is when r applied the first transition taking incarnation inc of
// n out of the membership (GOINGDOWN or SHUTDOWN), or 0.
func goneAt(r childReport, n clms.NodeNum, inc uint64) (int64, clms.Transition) {
	for _, a := range r.Applied {
		if a.T.Node == n && a.T.Incarnation == inc && (a.T.To == clms.StateGoingDown || a.T.To == clms.StateShutdown) {
			return a.At, a.T
		}
	}
	return 0, clms.Transition{}
}

// nonMaster is a node of on that is not the master: the victim of the
// tests whose fault must not also cost an election.
func (pc *procCluster) nonMaster(on []clms.NodeNum) clms.NodeNum {
	if m := pc.master(on); on[0] == m {
		return on[1]
	}
	return on[0]
}

func (pc *procCluster) master(on []clms.NodeNum) clms.NodeNum {
	reps := pc.waitFor("a master", on, func(r childReport) bool { return r.Status.Master != 0 })
	return reps[on[0]].Status.Master
}

func histories(reps map[clms.NodeNum]childReport) map[clms.NodeNum][]clms.Transition {
	h := map[clms.NodeNum][]clms.Transition{}
	for n, r := range reps {
		for _, a := range r.Applied {
			h[n] = append(h[n], a.T)
		}
	}
	return h
}

// sameHistory waits until the processes have applied the same last
// transition, then checks that their histories are identical.
func (pc *procCluster) sameHistory(on []clms.NodeNum) {
	pc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		reps := map[clms.NodeNum]childReport{}
		lasts := map[clms.TransitionID]bool{}
		for _, n := range on {
			r, _ := pc.procs[n].report()
			reps[n] = r
			lasts[r.Status.LastTransition] = true
		}
		if len(lasts) == 1 {
			h := histories(reps)
			for _, n := range on[1:] {
				if !slices.Equal(h[n], h[on[0]]) {
					pc.t.Fatalf("histories differ:\nnode %d: %v\nnode %d: %v", on[0], h[on[0]], n, h[n])
				}
			}
			return
		}
		if time.Now().After(deadline) {
			pc.t.Fatalf("nodes %v never applied the same last transition", on)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// crashTrial kills a non-master with SIGKILL and returns how long it took
// until every survivor applied its GOINGDOWN, checking the cause.
func (pc *procCluster) crashTrial(victim clms.NodeNum, survivors []clms.NodeNum, wantCause clms.Cause, sig syscall.Signal) time.Duration {
	pc.t.Helper()
	return pc.faultTrial(victim, survivors, wantCause, func() {
		if err := pc.procs[victim].cmd.Process.Signal(sig); err != nil {
			pc.t.Fatal(err)
		}
	})
}

// faultTrial is crashTrial with any fault.
func (pc *procCluster) faultTrial(victim clms.NodeNum, survivors []clms.NodeNum, wantCause clms.Cause, fault func()) time.Duration {
	pc.t.Helper()
	rep, _ := pc.procs[victim].report()
	inc := rep.Status.Incarnation
	start := time.Now()
	fault()
	reps := pc.waitFor(fmt.Sprintf("GOINGDOWN of node %d on every survivor", victim), survivors, func(r childReport) bool {
		at, _ := goneAt(r, victim, inc)
		return at != 0
	})
	var worst int64
	for n, r := range reps {
		at, tr := goneAt(r, victim, inc)
		if tr.Cause != wantCause {
			pc.t.Fatalf("node %d saw %v, want cause %s", n, tr, wantCause)
		}
		worst = max(worst, at)
	}
	return time.Duration(worst - start.UnixNano())
}

func TestProcFormationAndCrash(t *testing.T) {
	pc := newProcCluster(t, nodetest.Options{Nodes: 3})
	pc.startAll()
	all := pc.all()
	pc.waitFor("3 nodes UP", all, repUp(all...))
	victim := pc.nonMaster(all)
	survivors := others(all, victim)
	rep, _ := pc.procs[victim].report()
	d := pc.crashTrial(victim, survivors, clms.CauseCrash, syscall.SIGKILL)
	t.Logf("kill -9 of node %d: GOINGDOWN applied on every survivor after %v", victim, d)
	pc.waitFor("the killed node DOWN", survivors, repDown(victim, rep.Status.Incarnation))
	pc.sameHistory(survivors)
}

func TestProcHangFences(t *testing.T) {
	pc := newProcCluster(t, nodetest.Options{Nodes: 3})
	pc.startAll()
	all := pc.all()
	pc.waitFor("3 nodes UP", all, repUp(all...))
	victim := pc.nonMaster(all)
	survivors := others(all, victim)
	d := pc.crashTrial(victim, survivors, clms.CauseSilence, syscall.SIGSTOP)
	t.Logf("SIGSTOP of node %d: GOINGDOWN applied on every survivor after %v", victim, d)
	timing := clmstest.Stretch(clms.LANFastTiming(), time.Duration(pc.k))
	if d < timing.LeaseTimeout {
		t.Fatalf("a hung node declared down after %v, before its lease (%v) could have run out", d, timing.LeaseTimeout)
	}
	// Continued, it halts with the fence code.
	p := pc.procs[victim]
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-p.exit:
	case <-time.After(20 * time.Second):
		t.Fatal("the continued node did not fence itself")
	}
	if p.code != node.ExitFenced {
		t.Fatalf("the continued node exited with %d, want ExitFenced (%d)", p.code, node.ExitFenced)
	}
	// Its lease had lapsed (suspended); what fences it for good is hearing
	// that it was declared down (docs/CLMS.md, "Suspended, fenced").
	p.drain()
	if !strings.Contains(p.fenceWhy, "declared down") {
		t.Fatalf("the continued node fenced because %q, want: declared down", p.fenceWhy)
	}
	pc.sameHistory(survivors)
}

func TestProcMasterKill(t *testing.T) {
	pc := newProcCluster(t, nodetest.Options{Nodes: 3})
	pc.startAll()
	all := pc.all()
	pc.waitFor("3 nodes UP", all, repUp(all...))
	master := pc.master(all)
	survivors := others(all, master)
	d := pc.crashTrial(master, survivors, clms.CauseCrash, syscall.SIGKILL)
	t.Logf("kill -9 of the master (node %d): GOINGDOWN applied on every survivor after %v", master, d)
	reps := pc.waitFor("a new master", survivors, func(r childReport) bool {
		return r.Status.Master != 0 && r.Status.Master != master && r.Status.LeaseValid
	})
	masters := 0
	for _, r := range reps {
		if r.Status.IsMaster {
			masters++
		}
	}
	if masters != 1 {
		t.Fatalf("%d survivors act as master, want 1", masters)
	}
	pc.sameHistory(survivors)
}

// partition puts a proxy between every ordered pair of nodes (i dials j
// through proxies[i][j]), so that a node can be cut off by blackholing its
// proxies both ways.
func (pc *procCluster) partitionable() map[clms.NodeNum]map[clms.NodeNum]*nodetest.Proxy {
	proxies := map[clms.NodeNum]map[clms.NodeNum]*nodetest.Proxy{}
	for _, i := range pc.all() {
		proxies[i] = map[clms.NodeNum]*nodetest.Proxy{}
		var peers []string
		for _, j := range pc.all() {
			if i == j {
				continue
			}
			host, _, _ := strings.Cut(pc.c.Addrs[j], ":")
			ihost, _, _ := strings.Cut(pc.c.Addrs[i], ":")
			px, err := nodetest.NewProxy(host+":0", pc.c.Addrs[j], ihost)
			if err != nil {
				pc.t.Fatal(err)
			}
			pc.t.Cleanup(func() { _ = px.Close() })
			proxies[i][j] = px
			peers = append(peers, fmt.Sprintf("%d=%s", j, px.Addr()))
		}
		pc.env[i] = append(pc.env[i], envPeers+"="+strings.Join(peers, ","))
	}
	return proxies
}

// cut blackholes (on) or restores every proxy to and from node n.
func (pc *procCluster) cut(proxies map[clms.NodeNum]map[clms.NodeNum]*nodetest.Proxy, n clms.NodeNum, on bool) {
	for _, j := range others(pc.all(), n) {
		proxies[n][j].Blackhole(on)
		proxies[j][n].Blackhole(on)
	}
}

// The master is cut off from the others by a partition: its lease lapses
// and it stops acting as a member (suspended) before the majority declares
// it down; the majority elects a new master and carries on; at no time do
// two nodes act as master in one term. When the partition heals, the old
// master learns it was declared down (the others refuse its incarnation)
// and fences itself for good: under halt it exits with ExitFenced.
func TestProcPartitionedMaster(t *testing.T) {
	pc := newProcCluster(t, nodetest.Options{Nodes: 3})
	proxies := pc.partitionable()
	pc.startAll()
	all := pc.all()
	pc.waitFor("3 nodes UP", all, repUp(all...))
	cut := pc.master(all)
	rep, _ := pc.procs[cut].report()
	inc := rep.Status.Incarnation
	survivors := others(all, cut)
	pc.cut(proxies, cut, true)
	masters := map[uint64]map[clms.NodeNum]bool{} // term -> nodes acting as master in it
	var suspendedAt int64                         // when the cut-off node was first seen not acting
	deadline := time.Now().Add(30 * time.Second)
	for {
		done := true
		for _, n := range all {
			r, _ := pc.procs[n].report()
			if r.Status.IsMaster {
				if masters[r.Status.RaftTerm] == nil {
					masters[r.Status.RaftTerm] = map[clms.NodeNum]bool{}
				}
				masters[r.Status.RaftTerm][n] = true
				if len(masters[r.Status.RaftTerm]) > 1 {
					t.Fatalf("two masters in term %d: %v", r.Status.RaftTerm, masters[r.Status.RaftTerm])
				}
			}
			switch {
			case n == cut && !r.Status.LeaseValid && !r.Status.IsMaster:
				if suspendedAt == 0 {
					suspendedAt = time.Now().UnixNano()
				}
			case n == cut:
				done = false
			default:
				if at, _ := goneAt(r, cut, inc); at == 0 || r.Status.Master == 0 || r.Status.Master == cut {
					done = false
				}
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new master with the cut-off one down and suspended; masters by term %v", masters)
		}
		time.Sleep(10 * time.Millisecond) // not more often: the nodes share two cores with this loop
	}
	reps := pc.waitFor("the cut-off node gone", survivors, func(r childReport) bool { at, _ := goneAt(r, cut, inc); return at != 0 })
	for n, r := range reps {
		at, tr := goneAt(r, cut, inc)
		if tr.Cause != clms.CauseSilence {
			t.Fatalf("node %d saw %v, want cause silence", n, tr)
		}
		if suspendedAt >= at {
			t.Fatalf("node %d declared the cut-off node down at %d, before it was seen suspended (%d)", n, at, suspendedAt)
		}
		t.Logf("node %d: the cut-off master was declared down %v after it was seen suspended", n, time.Duration(at-suspendedAt))
	}
	pc.sameHistory(survivors)

	// Healed, it hears that it was declared down, and halts.
	pc.cut(proxies, cut, false)
	p := pc.procs[cut]
	select {
	case <-p.exit:
	case <-time.After(20 * time.Second):
		t.Fatal("the healed node did not fence itself")
	}
	p.drain()
	if p.code != node.ExitFenced || !strings.Contains(p.fenceWhy, "declared down") {
		t.Fatalf("the healed node exited with %d (%q), want ExitFenced (%d) for being declared down", p.code, p.fenceWhy, node.ExitFenced)
	}
}
