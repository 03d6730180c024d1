package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine"
)

type demoCmd struct {
	Short   bool `help:"Shrink every phase to about a second (for tests and impatient people)." env:"CI_DEMO_SHORT"`
	Callers int  `default:"16" help:"Concurrent callers on node 1 during the load phases." env:"CI_DEMO_CALLERS"`
	ICSOnly bool `name:"ics-only" help:"Only the ICS part, as the demo was before CLMS: four ICS nodes, one SIGKILLed while calls to it are in flight and restarted, latency against raw TCP. No cinode needed." env:"CI_DEMO_ICS_ONLY"`
}

func (*demoCmd) Help() string {
	return `Shows the whole system on this machine, in two parts.

The cluster: a cluster.toml in a temporary directory (insecure, lan-fast
timing, 3 nodes on 127.0.0.1-3 with free ports, keyseq as a key service
all three may run, an admin endpoint each); three cinode processes; the
cluster as "cluster -v" shows it; ids from keyseq; SIGKILL of keyseq's
owner, with the failover's detection, decision, pull and ready times as
the survivors' admin endpoints show them, and ids continuing above the
highest handed out; the killed node back as a new incarnation; SIGSTOP of
a node and its detection time, then SIGCONT: it finds itself declared down,
fences itself and exits 4; where the metrics are.

ICS: four ICS nodes (this process and three "cibench node" children) doing
RPC work, a load table, and ICS latency against raw TCP measured in the
same run. --ics-only runs only this part, with the ICS-level kill and
restart of a node that was the whole demo before CLMS existed (it needs no
cinode binary).

cinode and cluster must be beside cibench or on PATH (make demo builds
bin/ first). About 10 seconds (--short: 5) on an idle machine; Ctrl-C stops every
process it started and removes the temporary directory.

Exit status: 0 if every step did what it shows, 1 otherwise. Timing goals
are reported, not enforced: this is one run on whatever machine you have.

Examples:
  cibench demo              # what "make demo" runs
  cibench demo --short      # every phase about a second
  cibench demo --ics-only   # only ICS: no CLMS, no cinode`
}

// demoCluster is the demo cluster's name.
const demoCluster = "demo"

// demoTimes are the demo's phase lengths.
type demoTimes struct {
	load       time.Duration // phase 2: load on every node
	slow       time.Duration // how long the slow calls sleep
	afterKill  time.Duration // phase 3: load goes on at least this long after the kill
	restart    time.Duration // phase 4: load once node 3 is back
	latCalls   int           // phase 5: timed calls per peer
	latBlock   int           // phase 5: calls in a row before switching peer
	latWarmup  int           // phase 5: untimed calls per peer first
	slowCalls3 int           // slow calls in flight to node 3 at the kill
	slowCalls  int           // slow calls to each of nodes 2 and 4 meanwhile
}

func (c *demoCmd) times() demoTimes {
	if c.Short {
		return demoTimes{load: time.Second, slow: time.Second, afterKill: 300 * time.Millisecond,
			restart: 300 * time.Millisecond, latCalls: 1000, latBlock: 100, latWarmup: 100, slowCalls3: 8, slowCalls: 2}
	}
	return demoTimes{load: 3 * time.Second, slow: 2 * time.Second, afterKill: time.Second,
		restart: time.Second, latCalls: 3000, latBlock: 100, latWarmup: 300, slowCalls3: 8, slowCalls: 2}
}

// demo is one run of the demo and everything it started.
type demo struct {
	g      *globals
	exe    string
	t      demoTimes
	ctx    context.Context // cancelled by Ctrl-C or by a child exiting when it should not
	cancel context.CancelCauseFunc

	n1       *engine.Node
	downs    *downLog                     // node 1's node-down callbacks
	nodes    map[engine.NodeNum]*demoNode // the live child nodes
	killed   []*demoNode                  // nodes killed on purpose, already reaped
	raw      *child                       // the raw TCP peer of phase 5
	rawCl    bench.Client                 // its client
	one      *fleet                       // the ICS pair at GOMAXPROCS=1, for the latency phase
	addrs    map[engine.NodeNum]string    // every node's current address
	incs     map[engine.NodeNum]string    // every child's incarnation, as reported
	order    []engine.NodeNum             // child node numbers, for printing
	failed   []string                     // checks that did not hold
	closed   bool                         // shutdown has run
	callers  int                          // concurrent callers in the load phases
	step     int                          // the last heading's number
	icsOnly  bool                         // only the ICS part
	cl       *cinodeCluster               // the cinode cluster of the first part
	highest  uint64                       // the highest id keyseq handed the demo
	tmp      string                       // TMPDIR of the ICS part's child nodes
	lastKill faultOutcome                 // the owner's kill
}

func (c *demoCmd) Run(g *globals) (err error) {
	if c.Callers < 3 {
		return usagef("--callers must be at least 3 (one per child node)")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	d := &demo{g: g, exe: exe, t: c.times(), downs: &downLog{}, callers: c.Callers,
		nodes: make(map[engine.NodeNum]*demoNode), addrs: make(map[engine.NodeNum]string),
		incs: make(map[engine.NodeNum]string), order: []engine.NodeNum{2, 3, 4}, icsOnly: c.ICSOnly}
	// Every engine keeps a private directory in TMPDIR, which a node the
	// demo kills cannot remove: the ICS part's child nodes get a TMPDIR of
	// the demo's own, removed after everything stopped (the cinode cluster
	// has its own).
	if d.tmp, err = os.MkdirTemp("", "cidemo-"); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d.tmp)) }()
	d.ctx, d.cancel = context.WithCancelCause(g.ctx)
	defer d.cancel(nil)
	start := time.Now()
	defer func() {
		// On every path: stop the children and close node 1.
		err = errors.Join(err, d.shutdown())
		if g.ctx.Err() != nil {
			err = errors.New("interrupted")
		}
		took := time.Since(start).Seconds()
		switch {
		case g.ctx.Err() != nil:
			d.say("\ndemo interrupted after %.1fs", took)
		case err != nil || len(d.failed) > 0:
			d.say("\ndemo FAILED after %.1fs", took)
			for _, f := range d.failed {
				d.say("  - %s", f)
			}
			if err == nil {
				err = fmt.Errorf("demo: %d checks failed", len(d.failed))
			}
		default:
			d.say("\ndemo ok (%.1fs)", took)
		}
	}()
	phases := []func() error{d.startCluster, d.loadPhase, d.killPhase, d.restartPhase, d.latencyPhase}
	if c.ICSOnly {
		d.say("cibench demo --ics-only: a local ICS cluster, node 1 in this process, nodes 2-4 in child processes")
	} else {
		d.say("cibench demo: a 3-node cluster of cinode processes, then ICS load and latency")
		phases = []func() error{d.cinodeStart, d.keyseqPhase, d.ownerKillPhase, d.hangPhase, d.metricsPhase, d.cinodeStop,
			d.startCluster, d.loadPhase, d.latencyPhase}
	}
	for _, phase := range phases {
		if err := phase(); err != nil {
			if cause := context.Cause(d.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause // the child that died, not the symptom
			}
			return err
		}
	}
	return nil
}

// head prints the next step's heading.
func (d *demo) head(format string, args ...any) {
	d.step++
	d.say("\n== %d. "+format+" ==", append([]any{d.step}, args...)...)
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.g.stdout, format+"\n", args...)
}

func (d *demo) check(ok bool, format string, args ...any) {
	if !ok {
		d.failed = append(d.failed, fmt.Sprintf(format, args...))
	}
}

// onExit is told when a child exits without being asked to.
func (d *demo) onExit(err error) { d.cancel(err) }

// ---- phase 1 ----

func (d *demo) startCluster() error {
	d.head("Four nodes of cluster %q on 127.0.0.1-4", demoCluster)
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr = 1, demoCluster, "127.0.0.1:0"
	cfg.Insecure = true // the demo runs on loopback
	n1, err := engine.New(cfg)
	if err != nil {
		return err
	}
	d.n1 = n1
	n1.OnNodeDown(d.downs.add)
	if err := registerDemoServices(n1, nil); err != nil {
		return err
	}
	if err := n1.Start(); err != nil {
		return err
	}
	d.addrs[1] = n1.Addr()

	// The children start together; each knows node 1 from its command line.
	type started struct {
		n   *demoNode
		err error
	}
	res := make([]started, len(d.order))
	var wg sync.WaitGroup
	for i, num := range d.order {
		wg.Go(func() {
			res[i].n, res[i].err = d.spawnNode(num, map[engine.NodeNum]string{1: n1.Addr()})
		})
	}
	wg.Wait()
	var errs []error
	for _, r := range res {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		d.nodes[r.n.num] = r.n
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.say("node 1  %-17s  this process (pid %d)", n1.Addr(), os.Getpid())
	for _, num := range d.order {
		n := d.nodes[num]
		d.addrs[num], d.incs[num] = n.addr, n.inc
		d.say("node %d  %-17s  pid %d, incarnation %s", num, n.addr, n.pid, n.inc)
	}

	// Now everyone learns everyone: node 1 directly, the children over their
	// stdin, each answering once its SetPeer is done.
	for _, num := range d.order {
		if err := n1.SetPeer(num, d.addrs[num]); err != nil {
			return err
		}
		for _, other := range d.order {
			if other != num {
				if err := d.nodes[num].setPeer(d.ctx, other, d.addrs[other]); err != nil {
					return err
				}
			}
		}
	}
	ok, total, fails := d.mesh()
	d.say("every node knows the other three; each called every other's echo: %d/%d ok", ok, total)
	for _, f := range fails {
		d.say("  %s", f)
	}
	if ok != total {
		return errors.New("the cluster did not form")
	}
	return nil
}

// mesh has every node call echo on every other node. Nodes 2-4 do it in
// their mesh procedure, called from node 1.
func (d *demo) mesh() (ok, total int, fails []string) {
	count := func(r demoMeshResult) {
		ok += len(r.OK)
		total += len(r.OK) + len(r.Failed)
		fails = append(fails, r.Failed...)
	}
	count(demoMeshFrom(d.ctx, d.n1))
	for _, num := range d.order {
		ctx, cancel := context.WithTimeout(d.ctx, 20*time.Second)
		body, err := d.n1.Call(ctx, num, demoMesh, nil, nil)
		cancel()
		var r demoMeshResult
		if err == nil {
			err = json.Unmarshal(body, &r)
		}
		if err != nil {
			total += len(d.order) // it could not say: count its three calls as failed
			fails = append(fails, fmt.Sprintf("node 1 -> node %d mesh: %v", num, err))
			continue
		}
		count(r)
	}
	return ok, total, fails
}

// ---- the load ----

// callRec is one call in the kill phase.
type callRec struct {
	node       engine.NodeNum
	slow       bool
	start, end time.Time
	err        error
}

// callerOut is what one caller did.
type callerOut struct {
	node     engine.NodeNum
	hist     *bench.Hist
	ok       int
	failed   int
	firstErr error
	recs     []callRec // only when the run keeps records
}

// load runs d's callers against nodes 2-4, caller i on node 2+i%3, making
// work calls until stop is closed or the context ends. With keep, every
// call is recorded and a failure does not stop the caller (it backs off a
// little, as a real client would); without, the first failure does.
func (d *demo) load(ctx context.Context, callers int, stop <-chan struct{}, keep bool) ([]*callerOut, time.Duration) {
	outs := make([]*callerOut, callers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range outs {
		o := &callerOut{node: d.order[i%len(d.order)], hist: bench.NewHist()}
		outs[i] = o
		wg.Go(func() { d.caller(ctx, i, o, stop, keep) })
	}
	wg.Wait()
	return outs, time.Since(start)
}

func (d *demo) caller(ctx context.Context, id int, o *callerOut, stop <-chan struct{}, keep bool) {
	args := make([]byte, 64)
	binary.BigEndian.PutUint32(args, uint32(id))
	var reply []byte
	for k := uint64(0); ; k++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		binary.BigEndian.PutUint64(args[8:], k)
		t0 := time.Now()
		var err error
		reply, err = d.n1.Call(ctx, o.node, demoWork, args, reply[:0])
		t1 := time.Now()
		if err == nil && k%32 == 0 {
			// Check now and then that the work was really done.
			if want := demoWorkResult(args); !bytes.Equal(reply, want[:]) {
				err = fmt.Errorf("node %d answered work with %x, want %x", o.node, reply, want)
			}
		}
		if keep {
			o.recs = append(o.recs, callRec{node: o.node, start: t0, end: t1, err: err})
		}
		if err != nil {
			o.failed++
			if o.firstErr == nil {
				o.firstErr = err
			}
			if !keep || ctx.Err() != nil {
				return
			}
			select { // a dead node answers at once: do not spin on it
			case <-time.After(5 * time.Millisecond):
			case <-stop:
			case <-ctx.Done():
			}
			continue
		}
		o.ok++
		o.hist.Record(t1.Sub(t0))
	}
}

// printLoad prints a table per node of what outs did in elapsed.
func (d *demo) printLoad(outs []*callerOut, elapsed time.Duration) error {
	tw := tabwriter.NewWriter(d.g.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "node\tcallers\tcalls\tcalls/s\tp50\tp99\tfailed\t\n")
	var all, failed int
	var errs []error
	for _, num := range d.order {
		h := bench.NewHist()
		var callers, bad int
		for _, o := range outs {
			if o.node != num {
				continue
			}
			callers++
			h.Merge(o.hist)
			bad += o.failed
			if o.firstErr != nil {
				errs = append(errs, fmt.Errorf("calls to node %d: %w", num, o.firstErr))
			}
		}
		n := int(h.Count())
		all += n
		failed += bad
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.0f\t%s\t%s\t%d\t\n", num, callers, n, float64(n)/elapsed.Seconds(),
			fmtDur(h.Quantile(50)), fmtDur(h.Quantile(99)), bad)
	}
	fmt.Fprintf(tw, "all\t%d\t%d\t%.0f\t\t\t%d\t\n", len(outs), all, float64(all)/elapsed.Seconds(), failed)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// ---- phase 2 ----

func (d *demo) loadPhase() error {
	d.head("Load: %d callers on node 1, %v of work calls (64 B in, SHA-256 x%d, 32 B out)",
		d.callers, d.t.load, demoWorkRounds)
	outs, elapsed := d.load(d.ctx, d.callers, afterChan(d.t.load), false)
	if err := d.ctx.Err(); err != nil {
		return context.Cause(d.ctx)
	}
	return d.printLoad(outs, elapsed)
}

// ---- phase 3 ----

func (d *demo) killPhase() error {
	victim := d.nodes[3]
	d.head("SIGKILL node 3 while calls to it are in flight")
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute) // a bound, never reached when things work
	defer cancel()

	stopLoad := make(chan struct{})
	loadDone := make(chan []*callerOut, 1)
	go func() {
		outs, _ := d.load(ctx, d.callers, stopLoad, true)
		loadDone <- outs
	}()
	defer func() { // on an early return: stop the callers, and any call they wait on
		select {
		case <-stopLoad:
		default:
			cancel()
			close(stopLoad)
			<-loadDone
		}
	}()

	// Slow calls: to node 3, which will never answer them, and to nodes 2
	// and 4, which will.
	var slowMu sync.Mutex
	var slow []callRec
	var slowWG sync.WaitGroup
	ms := []byte(strconv.Itoa(int(d.t.slow / time.Millisecond)))
	startSlow := func(num engine.NodeNum, count int) {
		for range count {
			slowWG.Go(func() {
				t0 := time.Now()
				_, err := d.n1.Call(ctx, num, demoSlow, ms, nil)
				rec := callRec{node: num, slow: true, start: t0, end: time.Now(), err: err}
				slowMu.Lock()
				slow = append(slow, rec)
				slowMu.Unlock()
			})
		}
	}
	startSlow(3, d.t.slowCalls3)
	startSlow(2, d.t.slowCalls)
	startSlow(4, d.t.slowCalls)
	// Wait until the slow calls are being served, not merely sent.
	for _, w := range []struct {
		num   engine.NodeNum
		count int
	}{{3, d.t.slowCalls3}, {2, d.t.slowCalls}, {4, d.t.slowCalls}} {
		if err := d.nodes[w.num].awaitSlow(ctx, w.count); err != nil {
			return err
		}
	}

	d.downs.reset()
	killAt := time.Now()
	if err := victim.kill(); err != nil {
		return fmt.Errorf("kill node 3: %w", err)
	}
	<-victim.exited
	delete(d.nodes, 3)
	d.killed = append(d.killed, victim)
	d.say("%d slow calls (%v each) and the work calls of %d callers in flight to node 3: SIGKILL pid %d",
		d.t.slowCalls3, d.t.slow, countFor(d.callers, 1), victim.pid)

	// Node 1's node-down callback.
	down, ok := d.downs.await(ctx, 3, 10*time.Second)
	if ok {
		d.say("node 1 saw node 3 down %s after the kill (%s)", fmtDur(down.at.Sub(killAt)), shortCause(down.cause, 3))
	} else {
		d.say("node 1 did NOT see node 3 down within 10s")
	}
	d.check(ok, "node 1's node-down callback for node 3 did not run")
	// What nodes 2 and 4 saw, from their own callbacks.
	var seen []string
	for _, num := range []engine.NodeNum{2, 4} {
		if ev, ok := d.nodes[num].awaitDown(ctx, 3, killAt, 2*time.Second); ok {
			seen = append(seen, fmt.Sprintf("node %d after %s", num, fmtDur(time.Unix(0, ev.AtNS).Sub(killAt))))
		} else {
			seen = append(seen, fmt.Sprintf("node %d did not report it", num))
		}
	}
	d.say("the other survivors saw it too: %s", strings.Join(seen, ", "))

	// Let the load run on, at least until the slow calls to 2 and 4 are done.
	slowDone := make(chan struct{})
	go func() { slowWG.Wait(); close(slowDone) }()
	select {
	case <-slowDone:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if rest := d.t.afterKill - time.Since(killAt); rest > 0 {
		select {
		case <-time.After(rest):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	windowEnd := time.Now()
	close(stopLoad)
	outs := <-loadDone
	if err := d.ctx.Err(); err != nil {
		return context.Cause(d.ctx)
	}

	var recs []callRec
	for _, o := range outs {
		recs = append(recs, o.recs...)
	}
	recs = append(recs, slow...)
	d.reportKill(recs, killAt, windowEnd)
	return nil
}

// reportKill sorts the calls of the kill phase into what happened to them.
func (d *demo) reportKill(recs []callRec, killAt, windowEnd time.Time) {
	var (
		outstanding, outSlow, outNodeDown, outAnswered int
		outLast                                        time.Duration // kill to the last ErrNodeDown
		after, afterNodeDown                           int
		afterSlowest                                   time.Duration
		othersOK, othersFailed, otherSlowOK, otherSlow int
		otherSlowLast                                  time.Duration
		unexpected                                     []string
	)
	for _, r := range recs {
		switch {
		case r.node == 3 && r.start.Before(killAt):
			if r.end.Before(killAt) {
				if r.err != nil {
					unexpected = append(unexpected, fmt.Sprintf("call to node 3 before the kill: %v", r.err))
				}
				continue // done before the signal: not outstanding
			}
			outstanding++
			if r.slow {
				outSlow++
			}
			switch {
			case r.err == nil:
				outAnswered++ // answered before the signal took effect
			case errors.Is(r.err, engine.ErrNodeDown):
				outNodeDown++
				outLast = max(outLast, r.end.Sub(killAt))
			default:
				unexpected = append(unexpected, fmt.Sprintf("outstanding call to node 3: %v", r.err))
			}
		case r.node == 3:
			after++
			if errors.Is(r.err, engine.ErrNodeDown) {
				afterNodeDown++
				afterSlowest = max(afterSlowest, r.end.Sub(r.start))
			} else {
				unexpected = append(unexpected, fmt.Sprintf("call to node 3 after the kill: %v", r.err))
			}
		case r.slow:
			otherSlow++
			if r.err == nil {
				otherSlowOK++
				otherSlowLast = max(otherSlowLast, r.end.Sub(r.start))
			} else {
				unexpected = append(unexpected, fmt.Sprintf("slow call to node %d: %v", r.node, r.err))
			}
		default:
			if r.err != nil {
				othersFailed++
				unexpected = append(unexpected, fmt.Sprintf("call to node %d: %v", r.node, r.err))
			} else if !r.end.Before(killAt) {
				othersOK++
			}
		}
	}
	d.say("%d/%d calls outstanding to node %d at the kill (%d of them slow) failed with ErrNodeDown, the last %s after it",
		outNodeDown, outstanding-outAnswered, 3, outSlow, fmtDur(outLast))
	if outAnswered > 0 {
		verb := "were"
		if outAnswered == 1 {
			verb = "was"
		}
		d.say("  (%d more %s answered between the signal and node 3's death)", outAnswered, verb)
	}
	d.say("  nothing waited for a deadline: the slow calls still had ~%v to run", d.t.slow.Round(100*time.Millisecond))
	d.say("%d new calls to node 3 after the kill failed fast with ErrNodeDown (slowest %s)", afterNodeDown, fmtDur(afterSlowest))
	window := windowEnd.Sub(killAt)
	d.say("nodes 2 and 4 in the %.1fs after the kill: %d calls ok (%.0f/s), %d failed; %d/%d slow calls answered after %s",
		window.Seconds(), othersOK, float64(othersOK)/window.Seconds(), othersFailed, otherSlowOK, otherSlow, fmtDur(otherSlowLast))
	for i, u := range unexpected {
		if i == 5 {
			d.say("  ... and %d more", len(unexpected)-i)
			break
		}
		d.say("  unexpected: %s", u)
	}
	d.check(outstanding > 0, "no call was outstanding to node 3 at the kill")
	d.check(outNodeDown == outstanding-outAnswered, "%d outstanding calls to node 3 did not fail with ErrNodeDown", outstanding-outAnswered-outNodeDown)
	d.check(outSlow == d.t.slowCalls3, "%d slow calls outstanding to node 3 at the kill, want %d", outSlow, d.t.slowCalls3)
	d.check(len(unexpected) == 0, "%d calls ended in an unexpected way", len(unexpected))
	d.check(othersOK > 0 && othersFailed == 0, "nodes 2 and 4 did not keep working: %d ok, %d failed", othersOK, othersFailed)
	d.check(otherSlowOK == otherSlow, "slow calls to nodes 2 and 4: %d/%d answered", otherSlowOK, otherSlow)
}

// ---- phase 4 ----

func (d *demo) restartPhase() error {
	d.head("Node 3 comes back: a new process, a new incarnation")
	peers := map[engine.NodeNum]string{1: d.addrs[1], 2: d.addrs[2], 4: d.addrs[4]}
	n3, err := d.spawnNode(3, peers)
	if err != nil {
		return err
	}
	d.nodes[3] = n3
	old := d.incs[3]
	d.addrs[3], d.incs[3] = n3.addr, n3.inc
	d.say("node 3  %-17s  pid %d, incarnation %s (was %s)", n3.addr, n3.pid, n3.inc, old)

	d.downs.reset()
	if err := d.n1.SetPeer(3, n3.addr); err != nil {
		return err
	}
	for _, num := range []engine.NodeNum{2, 4} {
		if err := d.nodes[num].setPeer(d.ctx, 3, n3.addr); err != nil {
			return err
		}
	}
	d.say("SetPeer(3, %s) on nodes 1, 2 and 4", n3.addr)

	ctx, cancel := context.WithTimeout(d.ctx, 20*time.Second)
	defer cancel()
	args := []byte("first call after the restart")
	t0 := time.Now()
	reply, err := d.n1.Call(ctx, 3, demoWork, args, nil)
	if err != nil {
		return fmt.Errorf("first call to the restarted node 3: %w", err)
	}
	if want := demoWorkResult(args); !bytes.Equal(reply, want[:]) {
		return fmt.Errorf("restarted node 3 answered work with %x, want %x", reply, want)
	}
	d.say("first call from node 1 answered in %s (dial and handshake included)", fmtDur(time.Since(t0)))
	if ev, ok := d.downs.await(ctx, 3, time.Second); ok {
		d.say("node 1 met the new incarnation and dropped the old link: %s", shortCause(ev.cause, 3))
	}
	ok, total, fails := d.mesh()
	d.say("each node called every other's echo again: %d/%d ok", ok, total)
	for _, f := range fails {
		d.say("  %s", f)
	}
	d.check(ok == total, "after the restart only %d/%d mesh calls worked", ok, total)

	d.say("load again, %v:", d.t.restart)
	outs, elapsed := d.load(d.ctx, d.callers, afterChan(d.t.restart), false)
	if err := d.ctx.Err(); err != nil {
		return context.Cause(d.ctx)
	}
	return d.printLoad(outs, elapsed)
}

// ---- phase 5 ----

func (d *demo) latencyPhase() error {
	d.head("Latency: ICS against raw TCP, measured in this run")
	argv := []string{d.exe, "--quiet", "serve", "--peer=raw", "--listen=127.0.0.1:0"}
	raw, err := spawn(d.ctx, "raw", argv, d.g.stderr, d.onExit)
	if err != nil {
		return err
	}
	d.raw = raw
	if d.rawCl, err = (&bench.Raw{}).Dial(raw.addr); err != nil {
		return err
	}
	// A second ICS pair whose two processes run at GOMAXPROCS=1, the
	// configuration docs/PERFORMANCE.md recommends on small machines.
	d.one = &fleet{stderr: d.g.stderr, onExit: d.onExit}
	targets, err := d.one.start(d.ctx, []string{"ics@1"}, false)
	if err != nil {
		return err
	}
	oneCl := targets[0].Client
	req, err := bench.NewRequest(64, 64)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
	defer cancel()
	icsHist, rawHist, oneHist := bench.NewHist(), bench.NewHist(), bench.NewHist()
	var resp []byte
	icsCall := func(h *bench.Hist) error {
		t0 := time.Now()
		var err error
		resp, err = d.n1.Call(ctx, 2, demoEcho, req, resp[:0])
		if h != nil {
			h.Record(time.Since(t0))
		}
		if err == nil && !bytes.Equal(resp, req) {
			err = fmt.Errorf("ICS echo answered %d bytes, want %d", len(resp), len(req))
		}
		return err
	}
	rawCall := func(h *bench.Hist) error {
		t0 := time.Now()
		var err error
		resp, err = d.rawCl.Call(req, resp[:0])
		if h != nil {
			h.Record(time.Since(t0))
		}
		if err == nil && len(resp) != len(req) {
			err = fmt.Errorf("raw echo answered %d bytes, want %d", len(resp), len(req))
		}
		return err
	}
	oneCall := func(h *bench.Hist) error {
		t0 := time.Now()
		var err error
		resp, err = oneCl.Call(req, resp[:0])
		if h != nil {
			h.Record(time.Since(t0))
		}
		if err == nil && len(resp) != len(req) {
			err = fmt.Errorf("ICS echo at GOMAXPROCS=1 answered %d bytes, want %d", len(resp), len(req))
		}
		return err
	}
	peers := [3]struct {
		call  func(*bench.Hist) error
		h     *bench.Hist
		procs int // GOMAXPROCS of this process during the peer's block; 0 keeps it
	}{{icsCall, icsHist, 0}, {rawCall, rawHist, 0}, {oneCall, oneHist, 1}}
	// block runs n calls of p, switching GOMAXPROCS around the block, never
	// per call: changing it stops the world.
	block := func(p int, n int, h bool) error {
		if procs := peers[p].procs; procs > 0 {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		}
		for range n {
			hist := peers[p].h
			if !h {
				hist = nil
			}
			if err := peers[p].call(hist); err != nil {
				return err
			}
		}
		return nil
	}
	for p := range peers {
		if err := block(p, d.t.latWarmup, false); err != nil {
			return err
		}
	}
	runtime.GC() // the load phases' garbage is not this phase's cost
	for b, done := 0, 0; done < d.t.latCalls; b++ {
		n := min(d.t.latBlock, d.t.latCalls-done)
		for j := range peers {
			if err := block((b+j)%len(peers), n, true); err != nil { // who goes first rotates
				return err
			}
		}
		done += n
	}
	is, rs, os1 := icsHist.Summary(), rawHist.Summary(), oneHist.Summary()
	d.say("64 B echo, one call in flight, %d calls each in alternating blocks of %d, servers in child processes:",
		is.Count, d.t.latBlock)
	tw := tabwriter.NewWriter(d.g.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tp50\tp99\t\n")
	fmt.Fprintf(tw, "ICS, node 1 -> node 2\t%s\t%s\t\n", fmtDur(is.P50), fmtDur(is.P99))
	fmt.Fprintf(tw, "raw TCP ping-pong\t%s\t%s\t\n", fmtDur(rs.P50), fmtDur(rs.P99))
	fmt.Fprintf(tw, "ICS at GOMAXPROCS=1, both ends\t%s\t%s\t\n", fmtDur(os1.P50), fmtDur(os1.P99))
	fmt.Fprintf(tw, "ICS / raw\t%.2fx\t%.2fx\t\n", float64(is.P50)/float64(rs.P50), float64(is.P99)/float64(rs.P99))
	fmt.Fprintf(tw, "ICS at GOMAXPROCS=1 / raw\t%.2fx\t%.2fx\t\n", float64(os1.P50)/float64(rs.P50), float64(os1.P99)/float64(rs.P99))
	if err := tw.Flush(); err != nil {
		return err
	}
	d.say("(one short run on a shared machine; make bench-report has interleaved rounds and the targets)")
	return nil
}

// ---- phase 6 ----

// shutdown stops every child and closes node 1; it runs once, on every path.
func (d *demo) shutdown() error {
	if d.closed {
		return nil
	}
	d.closed = true
	d.head("Shutdown")
	var errs []error
	if d.cl != nil {
		errs = append(errs, d.closeCinodes())
	}
	if d.one != nil {
		errs = append(errs, d.one.close())
	}
	if d.rawCl != nil {
		errs = append(errs, d.rawCl.Close())
	}
	var kids []*child
	var names, gone []string
	add := func(c *child, name string) {
		select {
		case <-c.exited: // died on its own: that is the error already reported
			gone = append(gone, name)
		default:
			kids = append(kids, c)
			names = append(names, name)
		}
	}
	for _, num := range d.order {
		if n := d.nodes[num]; n != nil {
			add(n.child, fmt.Sprintf("node %d (pid %d)", num, n.pid))
		}
	}
	if d.raw != nil {
		add(d.raw, fmt.Sprintf("raw TCP peer (pid %d)", d.raw.cmd.Process.Pid))
	}
	if err := stopAll(kids); err != nil {
		errs = append(errs, err)
	}
	if len(names) > 0 {
		d.say("stopped %s: every one exited and was waited for", strings.Join(names, ", "))
	}
	if len(gone) > 0 {
		d.say("already gone, and waited for: %s", strings.Join(gone, ", "))
	}
	for _, k := range d.killed {
		d.say("node %d's first process (pid %d) was killed in step 3 and waited for", k.num, k.pid)
	}
	if d.n1 != nil {
		errs = append(errs, d.n1.Close())
		d.say("closed node 1 (this process, pid %d)", os.Getpid())
	}
	return errors.Join(errs...)
}

// ---- child nodes ----

// demoNode is a "cibench node" child process.
type demoNode struct {
	*child // stop, exited and the exit status, as for "cibench serve"
	num    engine.NodeNum
	pid    int
	inc    string
	in     *lineWriter // its stdin

	ready chan demoEvent
	acks  chan demoEvent
	downs chan demoEvent
	slow  chan demoEvent
}

// spawnNode starts node num knowing peers and waits for its ready line.
func (d *demo) spawnNode(num engine.NodeNum, peers map[engine.NodeNum]string) (*demoNode, error) {
	argv := []string{d.exe, "--quiet", "node", fmt.Sprintf("--num=%d", num),
		fmt.Sprintf("--listen=127.0.0.%d:0", num), "--cluster=" + demoCluster}
	if len(peers) > 0 {
		argv = append(argv, "--peers="+formatDemoPeers(peers))
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = d.g.stderr
	cmd.Env = append(os.Environ(), "TMPDIR="+d.tmp)       // its engine's directory, if it is killed
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches only us; we stop the nodes
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("node %d", num)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	n := &demoNode{
		child: &child{name: name, cmd: cmd, stdin: stdin, exited: make(chan struct{})},
		num:   num,
		pid:   cmd.Process.Pid,
		in:    &lineWriter{enc: json.NewEncoder(stdin)},
		ready: make(chan demoEvent, 1),
		acks:  make(chan demoEvent, 16),
		downs: make(chan demoEvent, 64),
		slow:  make(chan demoEvent, 256),
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		n.routineRead(stdout)
	}()
	go func() {
		<-readDone // Wait closes stdout: read it all first
		n.err = cmd.Wait()
		close(n.exited)
		if !n.stopping.Load() {
			d.onExit(fmt.Errorf("%s (pid %d) exited during the demo: %v", name, n.pid, n.err))
		}
	}()

	t := time.NewTimer(readyTimeout)
	defer t.Stop()
	select {
	case ev := <-n.ready:
		n.addr, n.inc = ev.Addr, ev.Incarnation
		if ev.Addr == "" {
			err = errors.New("no address in its ready line")
		}
	case <-n.exited:
		err = fmt.Errorf("exited: %v", n.err)
	case <-t.C:
		err = fmt.Errorf("no ready line within %v", readyTimeout)
	case <-d.ctx.Done():
		err = context.Cause(d.ctx)
	}
	if err != nil {
		n.stopping.Store(true)
		_ = cmd.Process.Kill()
		<-n.exited
		return nil, fmt.Errorf("%s did not start: %w", name, err)
	}
	return n, nil
}

// routineRead sorts the node's stdout lines by event. It never blocks on a
// full channel (the node would stall writing): such an event is dropped.
func (n *demoNode) routineRead(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var ev demoEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		var ch chan demoEvent
		switch ev.Event {
		case "ready":
			ch = n.ready
		case "peer":
			ch = n.acks
		case "nodedown":
			ch = n.downs
		case "slow":
			ch = n.slow
		}
		if ch != nil {
			select {
			case ch <- ev:
			default:
			}
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// setPeer tells the node where peer is and waits until it has done SetPeer.
func (n *demoNode) setPeer(ctx context.Context, peer engine.NodeNum, addr string) error {
	n.in.write(demoPeerLine{Peer: peer, Addr: addr})
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case ev := <-n.acks:
			if ev.Peer != peer || ev.Addr != addr {
				continue // an answer to an earlier line
			}
			if ev.Err != "" {
				return fmt.Errorf("node %d: SetPeer(%d, %s): %s", n.num, peer, addr, ev.Err)
			}
			return nil
		case <-n.exited:
			return fmt.Errorf("node %d exited: %v", n.num, n.err)
		case <-t.C:
			return fmt.Errorf("node %d did not confirm SetPeer(%d) within 10s", n.num, peer)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// awaitSlow waits until count slow calls have started on the node.
func (n *demoNode) awaitSlow(ctx context.Context, count int) error {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for range count {
		select {
		case <-n.slow:
		case <-t.C:
			return fmt.Errorf("node %d: slow calls not being served after 10s", n.num)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// awaitDown waits for the node to report peer down at or after since.
func (n *demoNode) awaitDown(ctx context.Context, peer engine.NodeNum, since time.Time, wait time.Duration) (demoEvent, bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case ev := <-n.downs:
			if ev.Peer == peer && ev.AtNS >= since.UnixNano() {
				return ev, true
			}
		case <-t.C:
			return demoEvent{}, false
		case <-ctx.Done():
			return demoEvent{}, false
		}
	}
}

// kill sends SIGKILL: a crash, not a shutdown.
func (n *demoNode) kill() error {
	n.stopping.Store(true)
	return n.cmd.Process.Signal(syscall.SIGKILL)
}

// ---- node 1's node-down callbacks ----

type downEvent struct {
	node  engine.NodeNum
	at    time.Time
	cause string
}

// downLog collects node 1's node-down callbacks.
type downLog struct {
	mu     sync.Mutex // guards events and wake
	events []downEvent
	wake   chan struct{} // closed and replaced on every event
}

func (l *downLog) add(num engine.NodeNum, err error) {
	at := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, downEvent{node: num, at: at, cause: err.Error()})
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}

// reset forgets the events so far.
func (l *downLog) reset() {
	l.mu.Lock()
	l.events = nil
	l.mu.Unlock()
}

// await returns the first event for num since the last reset, waiting up to wait.
func (l *downLog) await(ctx context.Context, num engine.NodeNum, wait time.Duration) (downEvent, bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		l.mu.Lock()
		for _, ev := range l.events {
			if ev.node == num {
				l.mu.Unlock()
				return ev, true
			}
		}
		if l.wake == nil {
			l.wake = make(chan struct{})
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-t.C:
			return downEvent{}, false
		case <-ctx.Done():
			return downEvent{}, false
		}
	}
}

// ---- helpers ----

// afterChan is closed after d.
func afterChan(d time.Duration) <-chan struct{} {
	ch := make(chan struct{})
	time.AfterFunc(d, func() { close(ch) })
	return ch
}

// countFor is how many of callers callers load child node index i (0..2).
func countFor(callers, i int) int {
	return callers/3 + btoi(i < callers%3)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// shortCause drops the "ics: node down: node N: " every node-down cause starts with.
func shortCause(cause string, num engine.NodeNum) string {
	return strings.TrimPrefix(cause, fmt.Sprintf("%v: node %d: ", engine.ErrNodeDown, num))
}

// fmtDur prints a latency at the scale it lives at.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
