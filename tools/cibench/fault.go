package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/services/admin"
)

// faultTimeout bounds one fault's aftermath: far above the default
// profile's hang detection (lease 3 s + margin 1 s) and a failover.
const faultTimeout = 30 * time.Second

// keyseqState is cinode's GET /v1/keyseq (tools/cinode/keyseq.go).
type keyseqState struct {
	Owner     uint32 `json:"owner"`
	Epoch     uint64 `json:"epoch"`
	Ready     bool   `json:"ready"`
	Seen      uint64 `json:"seen"`
	Serving   bool   `json:"serving"`
	Assembled *struct {
		Epoch  uint64            `json:"epoch"`
		Pulled map[string]uint64 `json:"pulled"`
		Base   uint64            `json:"base"`
		At     time.Time         `json:"at"`
	} `json:"assembled"`
}

// keyseqRange is cinode's POST /v1/keyseq/next reply.
type keyseqRange struct {
	Epoch uint64 `json:"epoch"`
	First uint64 `json:"first"`
	Count uint64 `json:"count"`
	Last  uint64 `json:"last"`
}

// faultOutcome is what followed one fault, every time since the fault was
// injected; 0 for a phase that does not apply.
type faultOutcome struct {
	victim          int
	fault           string // "sigkill" or "sigstop"
	wasMaster       bool
	wasOwner        bool // owned keyseq
	down            admin.Transition
	survivors       []int
	newMaster       int
	newOwner, third int // keyseq's new owner, and a survivor that is not it (0 if none)
	oldEpoch        uint64
	newEpoch        uint64
	base            uint64 // the new owner continues after this id

	detected    time.Duration // the victim's GOINGDOWN committed (its transition's time)
	nodeDownAll time.Duration // every survivor has applied it (its watch stream delivered it)
	masterAt    time.Duration // every survivor names the same new master (wasMaster)
	decisionAt  time.Duration // a survivor shows keyseq in a newer epoch (wasOwner)
	pulledAt    time.Duration // the new owner's pull finished (its own clock reading)
	readyAt     time.Duration // every survivor shows keyseq ready in the new epoch
	survivorCPU *float64      // CPU seconds of the survivors, from before the fault to the end; nil: not measured
	// observed is how: observedPush (watch streams and long polls, each
	// time when the change arrived) or observedPoll (a poll round).
	observed string
}

// trial is the outcome as bench.Report's failover section has it.
func (o faultOutcome) trial(n int) bench.FailoverTrial {
	t := bench.FailoverTrial{Trial: n, Fault: o.fault, Victim: "member", SurvivorCPU: o.survivorCPU}
	switch {
	case o.wasOwner:
		t.Victim = "key-service-owner"
	case o.wasMaster:
		t.Victim = "master"
	}
	add := func(name string, at time.Duration) {
		if at > 0 {
			t.Phases = append(t.Phases, bench.FailoverPhase{Name: name, At: at})
		}
	}
	add(bench.FailoverDetected, o.detected)
	add(bench.FailoverNodeDown, o.nodeDownAll)
	add(bench.FailoverMaster, o.masterAt)
	add(bench.FailoverKeyReady, o.readyAt)
	return t
}

// faultCluster is what the failover and membership scenarios drive: a
// cluster cibench spawned (cinodeCluster) or a running one it was pointed
// at (targetCluster). The measuring code reads both through view's admin
// endpoints alike; only how a fault is injected and undone differs.
type faultCluster interface {
	view() *adminView
	// check is an error once the run cannot go on: node n's spawned
	// process exited, or a fault could not be injected.
	check(n int) error
	// inject prepares sig (SIGKILL, SIGSTOP, SIGTERM) for node n's
	// process, or says why it cannot be sent; fire sends it, at once.
	inject(ctx context.Context, n int, sig syscall.Signal) (fire func() error, err error)
	// restore brings a fault's victim back as a new incarnation: a
	// spawned one is restarted (waitFormed waits for it to rejoin), a
	// target one is waited for until its supervisor restarted it and the
	// cluster re-formed. It returns the victim's exit status, -1 when
	// cibench cannot know it (target mode).
	restore(ctx context.Context, o faultOutcome) (int, error)
	// waitFormed waits until every node is ready and sees all UP.
	waitFormed(ctx context.Context) error
}

func (c *cinodeCluster) view() *adminView  { return &c.adminView }
func (c *cinodeCluster) check(n int) error { return c.alive(n) }
func (c *cinodeCluster) inject(_ context.Context, n int, sig syscall.Signal) (func() error, error) {
	if err := c.alive(n); err != nil {
		return nil, err
	}
	return func() error { return c.signal(n, sig) }, nil
}
func (c *cinodeCluster) waitFormed(ctx context.Context) error { return c.waitReady(ctx, c.nodes()) }

func others(all []int, n int) []int {
	return slices.DeleteFunc(slices.Clone(all), func(x int) bool { return x == n })
}

// injectFault sends sig to victim and follows the cluster on the
// survivors' admin endpoints until every phase that applies is done; by
// polling when poll is set or a survivor has no long poll. The cluster must
// be formed (and keyseq ready, if declared).
func injectFault(ctx context.Context, fc faultCluster, victim int, sig syscall.Signal, poll bool) (faultOutcome, error) {
	c := fc.view()
	o := faultOutcome{victim: victim, fault: "sigkill", survivors: others(c.nodes(), victim)}
	if sig == syscall.SIGSTOP {
		o.fault = "sigstop"
	}
	for _, n := range o.survivors {
		if err := fc.check(n); err != nil {
			return o, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, faultTimeout)
	defer cancel()
	s0 := o.survivors[0]
	st, err := c.status(ctx, s0)
	if err != nil {
		return o, err
	}
	since := st.LastTransition
	o.wasMaster = int(st.Master) == victim
	if c.keyseq {
		ks, err := c.keysvc(ctx, s0)
		if err != nil {
			return o, err
		}
		o.wasOwner, o.oldEpoch = int(ks.Owner) == victim, ks.Epoch
	}

	// Push: every survivor's watch stream and long polls are open before
	// the fault, so that nothing it causes is missed. A survivor without
	// the long poll (an older cinode) makes it a poll.
	o.observed = observedPoll
	var views <-chan viewEvent
	if !poll {
		var stopViews func()
		views, stopViews, err = c.followViews(ctx, o.survivors)
		switch {
		case err == nil:
			o.observed = observedPush
			defer stopViews()
		case !errors.Is(err, errNoLongPoll):
			return o, err
		}
	}
	var got <-chan watched
	if o.observed == observedPush {
		var stopWatch func()
		got, stopWatch, err = c.watchNodes(ctx, o.survivors, since, func(int) func(admin.Transition) (bool, bool) {
			return func(tr admin.Transition) (bool, bool) {
				down := int(tr.Node) == victim && tr.From == "UP"
				return down, !down
			}
		})
		if err != nil {
			return o, err
		}
		defer stopWatch()
	}

	cpu0, cpuErr := cpuOf(ctx, fc, o.survivors)
	fire, err := fc.inject(ctx, victim, sig)
	if err != nil {
		return o, err
	}
	t0 := time.Now()
	if err := fire(); err != nil {
		return o, err
	}
	if o.observed == observedPush {
		err = o.followPushed(ctx, fc, t0, views, got)
	} else {
		err = o.poll(ctx, fc, t0, since)
	}
	if err != nil {
		return o, err
	}
	if cpu1, err := cpuOf(ctx, fc, o.survivors); err == nil && cpuErr == nil {
		d := cpu1 - cpu0
		o.survivorCPU = &d
	}
	if o.wasOwner {
		var ks keyseqState
		if err := c.cl[o.newOwner].Get(ctx, "/v1/keyseq", &ks); err != nil {
			return o, err
		}
		if a := ks.Assembled; a != nil && a.Epoch == o.newEpoch {
			o.pulledAt, o.base = a.At.Sub(t0), a.Base
		}
		for _, n := range o.survivors {
			if n != o.newOwner {
				o.third = n
				break
			}
		}
	}
	return o, nil
}

// recovered: every phase that applies is done.
func (o *faultOutcome) recovered() bool {
	return o.nodeDownAll > 0 && (!o.wasMaster || o.masterAt > 0) && (!o.wasOwner || o.readyAt > 0)
}

// followPushed times the phases from what the survivors' watch streams
// (got: each one's delivery of the victim's GOINGDOWN) and long polls
// (views: each one's status and keyseq as they change) push, at the time
// each arrives.
func (o *faultOutcome) followPushed(ctx context.Context, fc faultCluster, t0 time.Time, views <-chan viewEvent, got <-chan watched) error {
	applied := map[int]bool{}
	status := map[int]admin.Status{}
	keys := map[int]admin.KeyService{}
	tick := time.NewTicker(10 * pollEvery) // only to notice a survivor's exit
	defer tick.Stop()
	for !o.recovered() {
		var at time.Duration
		select {
		case w := <-got:
			if w.err != nil {
				return w.err
			}
			at = w.at.Sub(t0)
			if o.detected == 0 {
				o.down, o.detected = w.tr, w.tr.Time.Sub(t0)
			}
			if applied[w.node] = true; len(applied) == len(o.survivors) && o.nodeDownAll == 0 {
				o.nodeDownAll = at
			}
		case e := <-views:
			if e.err != nil {
				return e.err
			}
			at = e.at.Sub(t0)
			if e.st != nil {
				status[e.node] = *e.st
			}
			if e.ks != nil {
				keys[e.node] = *e.ks
			}
		case <-tick.C:
			for _, n := range o.survivors {
				if err := fc.check(n); err != nil {
					return err
				}
			}
			continue
		case <-ctx.Done():
			return fmt.Errorf("waiting for the cluster to recover from %s of node %d: %w", o.fault, o.victim, context.Cause(ctx))
		}
		if o.wasMaster && o.masterAt == 0 && len(status) == len(o.survivors) {
			masters := map[uint32]bool{}
			for _, st := range status {
				masters[st.Master] = true
			}
			if m := status[o.survivors[0]].Master; len(masters) == 1 && m != 0 && int(m) != o.victim {
				o.masterAt, o.newMaster = at, int(m)
			}
		}
		if o.wasOwner {
			ready := 0
			for _, ks := range keys {
				if ks.Epoch > o.oldEpoch && o.decisionAt == 0 {
					o.decisionAt = at
				}
				if ks.Epoch > o.oldEpoch && ks.Ready {
					ready++
					o.newOwner, o.newEpoch = int(ks.Owner), ks.Epoch
				}
			}
			if ready == len(o.survivors) && o.readyAt == 0 {
				o.readyAt = at
			}
		}
	}
	return nil
}

// poll times the phases by polling every survivor every pollEvery: for
// survivors without the long poll. A phase includes up to a poll round.
func (o *faultOutcome) poll(ctx context.Context, fc faultCluster, t0 time.Time, since uint64) error {
	c := fc.view()
	victim := o.victim
	var downID uint64
	applied := map[int]bool{}
	return c.poll(ctx, fmt.Sprintf("the cluster to recover from %s of node %d", o.fault, victim), func() (bool, error) {
		masters := map[uint32]bool{}
		ready := 0
		for _, n := range o.survivors {
			if err := fc.check(n); err != nil {
				return false, err
			}
			st, err := c.status(ctx, n)
			if err != nil {
				return false, err
			}
			at := time.Since(t0)
			masters[st.Master] = true
			if downID == 0 && st.LastTransition > since {
				trs, err := c.transitionsOf(ctx, n, since)
				if err != nil {
					return false, err
				}
				for _, tr := range trs {
					if int(tr.Node) == victim && tr.From == "UP" {
						o.down, downID = tr, tr.ID
						o.detected = tr.Time.Sub(t0)
						break
					}
				}
			}
			if downID != 0 && st.LastTransition >= downID {
				applied[n] = true
			}
			if o.wasOwner {
				ks, err := c.keysvc(ctx, n)
				if err != nil {
					return false, err
				}
				at = time.Since(t0)
				if ks.Epoch > o.oldEpoch && o.decisionAt == 0 {
					o.decisionAt = at
				}
				if ks.Epoch > o.oldEpoch && ks.Ready {
					ready++
					o.newOwner, o.newEpoch = int(ks.Owner), ks.Epoch
				}
			}
			if len(applied) == len(o.survivors) && o.nodeDownAll == 0 {
				o.nodeDownAll = at
			}
			if o.wasMaster && o.masterAt == 0 && len(masters) == 1 && !masters[0] && !masters[uint32(victim)] && n == o.survivors[len(o.survivors)-1] {
				o.masterAt, o.newMaster = at, int(st.Master)
			}
			if o.wasOwner && ready == len(o.survivors) && o.readyAt == 0 {
				o.readyAt = at
			}
		}
		return o.recovered(), nil
	})
}

// restore brings a fault's victim back as a new incarnation: a killed node
// is reaped, a stopped one continued (it finds itself declared down and
// fences: exit 4), then both restart; it returns the exit status.
func (c *cinodeCluster) restore(ctx context.Context, o faultOutcome) (int, error) {
	if o.fault == "sigstop" {
		if err := c.signal(o.victim, syscall.SIGCONT); err != nil {
			return 0, err
		}
	}
	code, err := c.waitExit(ctx, o.victim)
	if err != nil {
		return code, err
	}
	return code, c.start(o.victim)
}

// pickVictim chooses the node --victim names: the keyseq owner, the
// master, or a member that is neither; "owner-or-master" (cibench all
// against a target) is keyseq's owner when the cluster declares keyseq,
// else the master.
func (c *adminView) pickVictim(ctx context.Context, victim string) (int, error) {
	n0 := c.table[0]
	st, err := c.status(ctx, n0)
	if err != nil {
		return 0, err
	}
	owner := 0
	if c.keyseq {
		ks, err := c.keysvc(ctx, n0)
		if err != nil {
			return 0, err
		}
		owner = int(ks.Owner)
	}
	if victim == "owner-or-master" {
		victim = "master"
		if c.keyseq {
			victim = "keysvc-owner"
		}
	}
	switch victim {
	case "keysvc-owner":
		if !c.keyseq {
			return 0, usagef("--victim=keysvc-owner: the cluster declares no keyseq key service ([[key_services]] in its cluster.toml); use --victim=master or member")
		}
		if owner == 0 {
			return 0, fmt.Errorf("keyseq has no owner")
		}
		return owner, nil
	case "master":
		return int(st.Master), nil
	}
	// The highest-numbered member that is neither: with more than 3 nodes,
	// one outside the raft group.
	for _, n := range slices.Backward(c.table) {
		if n != owner && n != int(st.Master) {
			return n, nil
		}
	}
	return 0, fmt.Errorf("every node is the master or keyseq's owner: no plain member to fault")
}

// waitKeyseqReady waits until every node sees keyseq ready.
func (c *adminView) waitKeyseqReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cinodeUpTimeout)
	defer cancel()
	return c.poll(ctx, "keyseq ready on every node", func() (bool, error) {
		for _, n := range c.nodes() {
			ks, err := c.keysvc(ctx, n)
			if err != nil || !ks.Ready {
				return false, nil
			}
		}
		return true, nil
	})
}

// cpuOf is the CPU seconds the processes of nodes ns used so far, summed:
// /proc for a process of this machine (a spawned node; a target's cinode
// that localCinode proves local, once per process, since it reads the
// machine's socket table), else the node's /metrics.
func cpuOf(ctx context.Context, fc faultCluster, ns []int) (float64, error) {
	v := fc.view()
	sum := 0.0
	for _, n := range ns {
		if c, ok := fc.(*cinodeCluster); ok {
			sum += procCPU(c.procs[n].pid)
			continue
		}
		st, err := v.status(ctx, n)
		if err != nil {
			return 0, err
		}
		key := fmt.Sprintf("%s/%d", v.cl[n].Addr, st.PID)
		local, ok := v.localPID[key]
		if !ok {
			local, _ = localCinode("/proc", v.cl[n].Addr, st.PID)
			if v.localPID == nil {
				v.localPID = map[string]bool{}
			}
			v.localPID[key] = local
		}
		if local {
			sum += procCPU(st.PID)
			continue
		}
		m, err := metricSums(ctx, v.cl[n], "process_cpu_seconds_total")
		if err != nil {
			return 0, fmt.Errorf("node %d: %w", n, err)
		}
		sum += m[0]
	}
	return sum, nil
}
