package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The first part of the demo: a cluster of cinode processes.

// demoGoals are the lan-fast goals of issues 11 and 12, shown beside the
// demo's one-off figures (not enforced: one run on any machine).
const (
	goalCrashDetect = 100 * time.Millisecond
	goalHangDetect  = 500 * time.Millisecond
	goalKeyFailover = 150 * time.Millisecond
)

func (d *demo) cinodeStart() error {
	d.head("A cluster of three cinode processes on 127.0.0.1-3")
	cl, err := newCinodeCluster(clusterSpec{nodes: 3, profile: "lan-fast", keyseq: true})
	if err != nil {
		return err
	}
	d.cl = cl
	d.say("cluster.toml in %s: insecure (loopback only), timing profile lan-fast,", cl.dir)
	d.say("keyseq (a cluster-wide id allocator) as a key service all three may run")
	t0 := time.Now()
	if err := cl.startAll(d.ctx); err != nil {
		return err
	}
	for _, n := range cl.nodes() {
		d.say("node %d  pid %d  ICS %s  admin http://%s", n, cl.procs[n].pid, cl.ics[n], cl.admins[n])
	}
	if err := cl.waitKeyseqReady(d.ctx); err != nil {
		return err
	}
	d.say("formed and keyseq ready %s after exec", fmtDur(time.Since(t0)))
	return d.clusterV()
}

// clusterV runs the admin command, cluster -v, and shows its table.
func (d *demo) clusterV() error {
	bin, err := findTool("cluster")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-c", d.cl.toml, "-v").CombinedOutput()
	d.say("$ cluster -c cluster.toml -v")
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		d.say("  %s", sc.Text())
	}
	d.check(err == nil, "cluster -v: %v", err)
	return nil
}

// nextIDs asks node n's admin endpoint for count ids from keyseq.
func (d *demo) nextIDs(n, count int) (keyseqRange, error) {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	var rg keyseqRange
	err := d.cl.cl[n].Post(ctx, fmt.Sprintf("/v1/keyseq/next?count=%d", count), nil, &rg)
	return rg, err
}

// highestID is the highest id the demo was handed.
func (d *demo) keyseqPhase() error {
	d.head("keyseq hands out ids")
	ks, err := d.cl.keysvc(d.ctx, 1)
	if err != nil {
		return err
	}
	d.say("keyseq's owner is node %d, epoch %d; every node asks it (POST /v1/keyseq/next on the node's admin endpoint):", ks.Owner, ks.Epoch)
	var last uint64
	for _, n := range d.cl.nodes() {
		rg, err := d.nextIDs(n, 100)
		if err != nil {
			return fmt.Errorf("ids through node %d: %w", n, err)
		}
		d.say("  via node %d: ids %d-%d (epoch %d)", n, rg.First, rg.Last, rg.Epoch)
		d.check(rg.First > last && rg.Count == 100, "node %d was handed %d-%d after %d", n, rg.First, rg.Last, last)
		last = rg.Last
	}
	d.highest = last
	d.say("no id twice, in order: the owner reserves blocks on every member before it hands them out")
	return nil
}

func (d *demo) ownerKillPhase() error {
	d.head("SIGKILL keyseq's owner: failover")
	victim, err := d.cl.pickVictim(d.ctx, "keysvc-owner")
	if err != nil {
		return err
	}
	st, err := d.cl.status(d.ctx, victim)
	if err != nil {
		return err
	}
	role := "not the master"
	if st.IsMaster {
		role = "also the CLMS master"
	}
	d.say("kill -9 node %d (pid %d): keyseq's owner, %s; the survivors' admin endpoints (watch streams and long polls) show:",
		victim, d.cl.procs[victim].pid, role)
	o, err := injectFault(d.ctx, d.cl, victim, syscall.SIGKILL, false)
	if err != nil {
		return err
	}
	d.lastKill = o
	tw := newTable(d)
	fmt.Fprintf(tw, "phase\tsince the kill\t\twhat\n")
	fmt.Fprintf(tw, "detection\t%s\t\tnode %d UP -> GOINGDOWN committed (transition %d, cause %s)\n",
		fmtDur(o.detected), victim, o.down.ID, o.down.Cause)
	fmt.Fprintf(tw, "decision\t%s\t\tkeyseq assigned to node %d in epoch %d (seen on a survivor)\n", fmtDur(o.decisionAt), o.newOwner, o.newEpoch)
	fmt.Fprintf(tw, "pull\t%s\t\tnode %d pulled every survivor's highest id and continues after %d\n", fmtDur(o.pulledAt), o.newOwner, o.base)
	fmt.Fprintf(tw, "ready\t%s\t\tkeyseq ready in epoch %d on every survivor\n", fmtDur(o.readyAt), o.newEpoch)
	fmt.Fprintf(tw, "nodedown\t%s\t\tevery survivor applied node %d's departure\n", fmtDur(o.nodeDownAll), victim)
	if o.wasMaster {
		fmt.Fprintf(tw, "new master\t%s\t\tnode %d, on every survivor\n", fmtDur(o.masterAt), o.newMaster)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	d.say("failover took %s (lan-fast goals: crash detection < %s, key service ready < %s)",
		fmtDur(o.readyAt), fmtDur(goalCrashDetect), fmtDur(goalKeyFailover))
	d.check(o.newOwner != victim && o.newEpoch > o.oldEpoch, "keyseq did not move: owner %d epoch %d", o.newOwner, o.newEpoch)

	rg, err := d.nextIDs(o.third, 100)
	if err != nil {
		return fmt.Errorf("ids after the failover: %w", err)
	}
	d.say("via node %d: ids %d-%d (epoch %d): above %d, the highest handed out before the kill", o.third, rg.First, rg.Last, rg.Epoch, d.highest)
	d.check(rg.First > d.highest && rg.Epoch == o.newEpoch, "ids after the failover start at %d (epoch %d), not above %d", rg.First, rg.Epoch, d.highest)
	d.highest = rg.Last

	t0 := time.Now()
	code, err := d.cl.restore(d.ctx, o)
	if err != nil {
		return err
	}
	d.check(code == -1, "the killed node's process exited %d, not by SIGKILL", code)
	if err := d.cl.waitReady(d.ctx, d.cl.nodes()); err != nil {
		return err
	}
	st, err = d.cl.status(d.ctx, victim)
	if err != nil {
		return err
	}
	d.say("node %d restarted (pid %d) and rejoined as a new incarnation, %s, in %s", victim, d.cl.procs[victim].pid, st.Incarnation, fmtDur(time.Since(t0)))
	return nil
}

func (d *demo) hangPhase() error {
	d.head("SIGSTOP a node: a hang")
	victim, err := d.cl.pickVictim(d.ctx, "member")
	if err != nil {
		return err
	}
	d.say("kill -STOP node %d (pid %d), neither master nor keyseq's owner: it stops answering but its sockets stay open",
		victim, d.cl.procs[victim].pid)
	o, err := injectFault(d.ctx, d.cl, victim, syscall.SIGSTOP, false)
	if err != nil {
		return err
	}
	d.say("detection: %s: node %d UP -> GOINGDOWN committed (cause %s); every survivor applied it at %s",
		fmtDur(o.detected), victim, o.down.Cause, fmtDur(o.nodeDownAll))
	d.say("(lan-fast goal for a hang: < %s; a crash is quicker because the closed connection says so)", fmtDur(goalHangDetect))
	d.say("kill -CONT node %d: it learns it was declared down and fences itself", victim)
	code, err := d.cl.restore(d.ctx, o)
	if err != nil {
		return err
	}
	d.say("node %d exited with status %d (4: fenced; a supervisor restarts it as a new incarnation)", victim, code)
	d.check(code == exitFencedCinode, "the continued node exited %d, want %d (fenced)", code, exitFencedCinode)
	t0 := time.Now()
	if err := d.cl.waitReady(d.ctx, d.cl.nodes()); err != nil {
		return err
	}
	d.say("and it did: node %d restarted (pid %d) and is UP again in %s", victim, d.cl.procs[victim].pid, fmtDur(time.Since(t0)))
	return nil
}

func (d *demo) metricsPhase() error {
	d.head("Metrics")
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	code, body, err := d.cl.cl[1].Text(ctx, "/metrics")
	if err != nil {
		return err
	}
	d.check(code == http.StatusOK, "/metrics answered %d", code)
	families := map[string]int{}
	for _, l := range strings.Split(body, "\n") {
		if name, ok := strings.CutPrefix(l, "# TYPE "); ok {
			name, _, _ = strings.Cut(name, " ")
			prefix, _, _ := strings.Cut(strings.TrimPrefix(name, "ci_"), "_")
			if strings.HasPrefix(name, "ci_") {
				prefix = "ci_" + prefix
			}
			families[prefix]++
		}
	}
	d.say("every node serves Prometheus metrics on its admin endpoint; while this demo runs:")
	d.say("  curl -s http://%s/metrics", d.cl.admins[1])
	d.say("node 1 has %d ci_clms_* families (membership, transitions, key services), %d ci_ics_* (RPC), %d go_* and %d process_*",
		families["ci_clms"], families["ci_ics"], families["go"], families["process"])
	d.check(families["ci_clms"] > 0 && families["ci_ics"] > 0, "metric families: %v", families)
	d.say("on your own cluster: cinode -c deploy/cluster.toml -n N, and deploy/prometheus.yml to scrape it;")
	d.say("status as JSON: curl -s http://%s/v1/status, and docs/ADMIN.md", d.cl.admins[1])
	return nil
}

func (d *demo) cinodeStop() error {
	d.head("The cinode cluster leaves")
	return d.closeCinodes()
}

// closeCinodes stops the cinode cluster (planned shutdowns, the master
// last) and removes its directory; it runs once.
func (d *demo) closeCinodes() error {
	if d.cl == nil {
		return nil
	}
	cl := d.cl
	d.cl = nil
	stopped, err := cl.close()
	var planned []string
	for _, p := range stopped {
		if !p.last {
			planned = append(planned, fmt.Sprintf("node %d (pid %d)", p.num, p.pid))
			d.check(p.code == 0, "node %d's planned shutdown exited %d; its log ends:%s", p.num, p.code, p.logTail)
		}
	}
	if len(planned) > 0 {
		d.say("SIGTERM to %s: planned shutdowns, SHUTDOWN committed, exit 0", strings.Join(planned, " and "))
	}
	for _, p := range stopped {
		if p.last {
			// The raft group is nodes 1-3: with two of them gone there is
			// no majority to commit the last one's SHUTDOWN, which it sees
			// (clms.ErrNoQuorum) and stops anyway.
			d.say("then the master, node %d (pid %d), the last of the raft group: no majority is left to commit its own", p.num, p.pid)
			d.say("SHUTDOWN; it says so and stops unrecorded, exit %d (its next start rejoins as after a crash)", p.code)
			d.check(p.code == 0, "the last voter, node %d, exited %d; its log ends:%s", p.num, p.code, p.logTail)
		}
	}
	if dead := cl.dead; len(dead) > 0 {
		var s []string
		for _, p := range dead {
			s = append(s, fmt.Sprintf("node %d's pid %d", p.num, p.pid))
		}
		d.say("earlier incarnations, reaped: %s", strings.Join(s, ", "))
	}
	if err == nil {
		d.say("removed %s", cl.dir)
	}
	return err
}

// newTable is a tabwriter on the demo's output, indented.
func newTable(d *demo) *tabwriter.Writer {
	return tabwriter.NewWriter(&indent{w: d.g.stdout}, 0, 0, 2, ' ', 0)
}

// indent writes two spaces before every line.
type indent struct {
	w   io.Writer
	mid bool // within a line
}

func (in *indent) Write(b []byte) (int, error) {
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !in.mid {
			if _, err := in.w.Write([]byte("  ")); err != nil {
				return 0, err
			}
		}
		if _, err := in.w.Write(line); err != nil {
			return 0, err
		}
		in.mid = line[len(line)-1] != '\n'
	}
	return len(b), nil
}
