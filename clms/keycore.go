package clms

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// The key-service logic of the core: the owner's failover (Failover, the
// pull, FailoverData, ready), the members' answers to pulls, planned moves
// and drains, and the master's assignments. docs/CLMS.md, "Key services".

// keyStage is where an owner's failover is.
type keyStage uint8

const (
	stageStart    keyStage = iota // assigned; begins when this node acts as owner
	stageFailover                 // ActKeyFailover handed out
	stagePull                     // pulls sent, waiting for members' data
	stageData                     // ActKeyFailoverData handed out
	stageReport                   // done; telling the master until the ready record
	stageDone                     // the ready record is applied
)

// keyRun is this node's failover of one key service, as its new owner.
type keyRun struct {
	epoch    uint64
	handover bool
	from     NodeNum
	stage    keyStage
	stageAt  int64
	lastSend int64
	expect   map[NodeNum]uint64 // members still to answer the pull, with their incarnation
	pulled   map[NodeNum][]byte
	ticks    [4]int64 // failover, pull, data, ready
}

// pullKey names a pull a member was asked for.
type pullKey struct {
	name  string
	epoch uint64
	to    NodeNum
}

// pushKey names the answer a member pushed for a pull this node has not
// started yet: one per member and key service (keyHoldPushed).
type pushKey struct {
	name string
	from NodeNum
}

type pullServe struct {
	done bool
	data []byte
	err  string
}

// keyState is this node's key-service bookkeeping beside the replicated
// state. None of it is replicated.
type keyState struct {
	specs        []KeyServiceSpec
	spec         map[string]KeyServiceSpec
	panic        PanicPolicy
	pullTimeout  int64
	drainTimeout int64
	acting       map[string]uint64 // what ActKeyOwner last told the runner
	runs         map[string]*keyRun
	served       map[pullKey]*pullServe
	early        map[string]Message // a pull for an epoch not applied here yet
	handing      map[string]uint64  // ActKeyHandOff handed out for this epoch
	released     map[string]uint64  // HandOff done: released this epoch
	handData     map[string][]byte  // the released epoch's hand-over data
	abort        map[string]uint64  // HandOff failed in this epoch: keep serving, tell the master
	lastSend     map[string]int64   // release/abort reports
	last         map[string][4]int64
	formed       bool
	// pushed holds members' answers that came unasked before this node, as
	// the new owner, started its pull (docs/CLMS.md, "Failover"): at most
	// one per member and service, kept only while its epoch may still be
	// this node's to pull in.
	pushed map[pushKey]Message
	// halt is a cluster panic under PanicHalt, pending on the master until
	// every member without raft applied the record (haltSeq) or haltAt:
	// the master's push is how they learn it.
	halt       string
	haltSeq    uint64
	haltAt     int64
	draining   bool
	drained    bool
	drainStart int64
	drainSent  int64
}

func newKeyState(cfg Config, t ticks) keyState {
	ks := keyState{specs: slices.Clone(cfg.Keys.Services), spec: map[string]KeyServiceSpec{}, panic: cfg.Keys.Panic,
		acting: map[string]uint64{}, runs: map[string]*keyRun{}, served: map[pullKey]*pullServe{}, early: map[string]Message{}, pushed: map[pushKey]Message{},
		handing: map[string]uint64{}, released: map[string]uint64{}, handData: map[string][]byte{},
		abort: map[string]uint64{}, lastSend: map[string]int64{}, last: map[string][4]int64{}}
	if ks.panic == "" {
		ks.panic = PanicHalt
	}
	tm := cfg.Timing
	ks.pullTimeout, ks.drainTimeout = t.callback, 2*t.callback
	if cfg.Keys.PullTimeout > 0 {
		ks.pullTimeout = int64(tm.Ticks(cfg.Keys.PullTimeout))
	}
	if cfg.Keys.DrainTimeout > 0 {
		ks.drainTimeout = int64(tm.Ticks(cfg.Keys.DrainTimeout))
	}
	for _, sp := range ks.specs {
		ks.spec[sp.Name] = sp
	}
	return ks
}

func validateKeys(k KeyConfig) error {
	seen := map[string]bool{}
	for _, sp := range k.Services {
		if sp.Name == "" || len(sp.Name) > maxString || seen[sp.Name] {
			return fmt.Errorf("key service %q is empty, longer than %d bytes, or listed twice", sp.Name, maxString)
		}
		seen[sp.Name] = true
	}
	if k.Panic != "" && k.Panic != PanicHalt && k.Panic != PanicDegraded {
		return fmt.Errorf("key service panic policy %q (want %q or %q)", k.Panic, PanicHalt, PanicDegraded)
	}
	return nil
}

// KeyServiceActing reports whether this node acts as owner of key service
// name at this tick, and in which epoch: the committed record names this
// incarnation, the node holds its membership lease, and it has not released
// the service in a hand-over. The invariant checker asks it.
func (c *Core) KeyServiceActing(name string) (uint64, bool) {
	r := c.st.keys[name]
	if r == nil || r.Owner != c.self || r.OwnerInc != c.inc || r.Phase == KeyUnowned || !c.Acting() {
		return 0, false
	}
	if r.Phase == KeyHandover && c.ks.released[name] == r.Epoch {
		return 0, false
	}
	return r.Epoch, true
}

// KeyServiceSpecs returns the key services this core was configured with.
func (c *Core) KeyServiceSpecs() []KeyServiceSpec { return slices.Clone(c.ks.specs) }

// Formed reports whether every critical key service had a ready owner in
// this node's applied state since this incarnation joined: the node's
// readiness (with Acting), and on the master the formed cluster.
func (c *Core) Formed() bool { return c.ks.formed }

// KeyFailoverDone reports that Failover(ctx, epoch) of key service name
// returned (err is logged; the failover goes on: the routine is the
// service's business, as in CI).
func (c *Core) KeyFailoverDone(name string, epoch uint64, err error) {
	defer c.keyPoll()
	run := c.ks.runs[name]
	if _, acting := c.KeyServiceActing(name); run == nil || run.epoch != epoch || run.stage != stageFailover || !acting {
		return
	}
	run.ticks[0] = c.now - run.stageAt
	if err != nil {
		c.act(Action{Kind: ActLog, KeyService: name, Epoch: epoch, Reason: fmt.Sprintf("key service %q: Failover in epoch %d: %v", name, epoch, err)})
	}
	if c.ks.spec[name].Pull {
		c.keyStartPull(name, run, c.keyMembers())
		return
	}
	c.keyReport(name, run)
}

// KeyPullDone reports the result of PullData(ctx, epoch) of key service
// name, run for owner (ActKeyPullData's Node; this node itself included).
func (c *Core) KeyPullDone(name string, epoch uint64, owner NodeNum, data []byte, err error) {
	defer c.keyPoll()
	msg := ""
	if err != nil {
		msg = err.Error()
		if msg == "" {
			msg = "failed"
		}
	}
	if len(data) > maxKeyData {
		data, msg = nil, fmt.Sprintf("PullData returned %d bytes, more than %d", len(data), maxKeyData)
	}
	if owner == c.self {
		c.keyPulled(name, epoch, c.self, c.inc, data, msg)
		return
	}
	sv := c.ks.served[pullKey{name, epoch, owner}]
	if sv == nil || sv.done {
		return
	}
	sv.done, sv.data, sv.err = true, data, msg
	c.sendKeyData(name, epoch, owner, sv)
}

func (c *Core) sendKeyData(name string, epoch uint64, to NodeNum, sv *pullServe) {
	m := Message{Type: MsgKeyData, To: to, KeyService: name, Epoch: epoch, Data: sv.data}
	if sv.err != "" {
		m.Status, m.Reason = StatusRetry, truncate(sv.err)
	}
	c.send(m)
}

func truncate(s string) string {
	if len(s) > maxString {
		return s[:maxString]
	}
	return s
}

// KeyFailoverDataDone reports that FailoverData (or TakeOver) of key
// service name in epoch returned; err is logged. The owner then tells the
// master, which commits the service ready.
func (c *Core) KeyFailoverDataDone(name string, epoch uint64, err error) {
	defer c.keyPoll()
	run := c.ks.runs[name]
	if _, acting := c.KeyServiceActing(name); run == nil || run.epoch != epoch || run.stage != stageData || !acting {
		return
	}
	run.ticks[2] = c.now - run.stageAt
	if err != nil {
		c.act(Action{Kind: ActLog, KeyService: name, Epoch: epoch, Reason: fmt.Sprintf("key service %q: FailoverData in epoch %d: %v", name, epoch, err)})
	}
	c.keyReport(name, run)
}

// KeyHandOffDone reports that HandOff(ctx, epoch) of key service name
// returned: with err nil this node released the service (it acts as its
// owner no more) and data goes to the new owner; with an error the move is
// aborted and this node keeps serving.
func (c *Core) KeyHandOffDone(name string, epoch uint64, data []byte, err error) {
	defer c.keyPoll()
	r := c.st.keys[name]
	if _, acting := c.KeyServiceActing(name); r == nil || r.Phase != KeyHandover || r.Epoch != epoch || c.ks.handing[name] != epoch || !acting {
		return
	}
	if err == nil && len(data) > maxKeyData {
		err = fmt.Errorf("HandOff returned %d bytes, more than %d", len(data), maxKeyData)
	}
	if err != nil {
		c.ks.abort[name] = epoch
		c.act(Action{Kind: ActLog, KeyService: name, Epoch: epoch, Reason: fmt.Sprintf("key service %q: HandOff in epoch %d failed, keeping it: %v", name, epoch, err)})
	} else {
		c.ks.released[name], c.ks.handData[name] = epoch, data
	}
	c.ks.lastSend[name] = -1 << 40
}

// MoveKeyService asks the master to move key service name to node to (0:
// any capable node) by a planned hand-over. The outcome shows in the
// applied records; the request is not repeated.
func (c *Core) MoveKeyService(name string, to NodeNum) error {
	if _, ok := c.ks.spec[name]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownKeyService, name)
	}
	if _, ok := c.st.members[to]; to != 0 && !ok {
		return fmt.Errorf("%w: %d", ErrUnknownNode, to)
	}
	if c.phase != phaseMember {
		return ErrNotMember
	}
	if c.isMaster() {
		c.masterKeyMove(name, to)
		return nil
	}
	c.send(Message{Type: MsgKeyMove, To: c.master, KeyService: name, Node: to})
	return nil
}

// keyMembers is every member with its incarnation, this node included: the
// nodes a failover pulls from.
func (c *Core) keyMembers() map[NodeNum]uint64 {
	out := map[NodeNum]uint64{}
	for n, m := range c.st.members {
		if m.State.IsMember() {
			out[n] = m.Incarnation
		}
	}
	return out
}

func (c *Core) keyBegin(name string, run *keyRun) {
	run.stageAt, run.pulled = c.now, nil
	if run.handover {
		if m := c.st.members[run.from]; m != nil && m.State.IsMember() {
			c.keyStartPull(name, run, map[NodeNum]uint64{run.from: m.Incarnation})
			return
		}
		run.handover = false // the previous owner is gone: an ordinary failover
	}
	run.stage = stageFailover
	c.act(Action{Kind: ActKeyFailover, KeyService: name, Epoch: run.epoch})
}

// keyStartPull asks every member in from for its data, but for those whose
// answer for this epoch came already, pushed unasked: those count as
// answered (a failover only: in a hand-over nobody pushes).
func (c *Core) keyStartPull(name string, run *keyRun, from map[NodeNum]uint64) {
	run.stage, run.stageAt, run.lastSend = stagePull, c.now, c.now
	run.expect, run.pulled = from, map[NodeNum][]byte{}
	var answered []Message
	for _, n := range slices.Sorted(maps.Keys(from)) {
		if m, ok := c.ks.pushed[pushKey{name, n}]; ok && !run.handover && m.Epoch == run.epoch && m.FromInc == from[n] {
			answered = append(answered, m)
			continue
		}
		if n == c.self {
			c.act(Action{Kind: ActKeyPullData, KeyService: name, Epoch: run.epoch, Node: c.self})
		} else {
			c.send(Message{Type: MsgKeyPull, To: n, KeyService: name, Epoch: run.epoch})
		}
	}
	for k, m := range c.ks.pushed {
		if k.name == name && m.Epoch <= run.epoch {
			delete(c.ks.pushed, k)
		}
	}
	if len(from) == 0 {
		c.keyFinishPull(name, run)
		return
	}
	for _, m := range answered {
		c.stats.KeyPullsPushed++
		c.keyPulled(name, m.Epoch, m.From, m.FromInc, m.Data, keyDataFailure(m))
	}
}

// keyPulled takes one member's answer (or failure: msg) to the pull.
func (c *Core) keyPulled(name string, epoch uint64, from NodeNum, inc uint64, data []byte, msg string) {
	run := c.ks.runs[name]
	if _, acting := c.KeyServiceActing(name); run == nil || run.epoch != epoch || run.stage != stagePull || !acting {
		return
	}
	if want, ok := run.expect[from]; !ok || want != inc {
		return
	}
	delete(run.expect, from)
	if msg != "" {
		c.keyLeaveOut(name, run, from, "PullData failed: "+msg)
	} else {
		run.pulled[from] = data
	}
	if len(run.expect) == 0 {
		c.keyFinishPull(name, run)
	}
}

func (c *Core) keyLeaveOut(name string, run *keyRun, n NodeNum, why string) {
	c.stats.KeyPullFailures++
	c.act(Action{Kind: ActLog, KeyService: name, Epoch: run.epoch, Node: n,
		Reason: fmt.Sprintf("key service %q epoch %d: node %d left out of the pull: %s", name, run.epoch, n, why)})
}

func (c *Core) keyFinishPull(name string, run *keyRun) {
	run.ticks[1] = c.now - run.stageAt
	if _, ok := run.pulled[run.from]; run.handover && !ok {
		// The previous owner's hand-over did not arrive (it died): fail over
		// instead, pulling from every member.
		run.handover = false
		c.keyBegin(name, run)
		return
	}
	run.stage, run.stageAt = stageData, c.now
	c.act(Action{Kind: ActKeyFailoverData, KeyService: name, Epoch: run.epoch, Pulled: run.pulled,
		Handover: run.handover, From: run.from})
	run.pulled = nil
}

func (c *Core) keyReport(name string, run *keyRun) {
	run.stage, run.stageAt, run.lastSend = stageReport, c.now, c.now
	if c.isMaster() {
		c.masterKeyReady(c.self, c.inc, name, run.epoch)
		return
	}
	c.send(Message{Type: MsgKeyReady, To: c.master, KeyService: name, Epoch: run.epoch})
}

// applyKeyRecord reacts to a key-service record this node applied.
func (c *Core) applyKeyRecord(r Record) {
	k := r.Key
	switch k.Phase {
	case KeyFailover:
		if k.Handover {
			c.stats.KeyHandovers++
		} else if k.From != 0 {
			c.stats.KeyFailovers++
		}
		if !k.Handover && c.ks.spec[k.Name].Pull && k.Owner != c.self && c.Acting() {
			// The new owner will pull from every member: run PullData now,
			// beside its Failover, and push the answer unasked, rather than
			// wait a hop for its request (docs/CLMS.md, "Failover").
			c.keyServe(k.Name, k.Epoch, k.Owner)
		}
	case KeyReady:
		if run := c.ks.runs[k.Name]; run != nil && run.epoch == k.Epoch && k.Owner == c.self && k.OwnerInc == c.inc {
			if run.stage == stageReport {
				run.ticks[3] = c.now - run.stageAt
			}
			run.stage = stageDone
			c.ks.last[k.Name] = run.ticks
		}
		if c.ks.handing[k.Name] == k.Epoch {
			// A move in this epoch ended (aborted): serve again, and run
			// HandOff afresh if another move starts in the same epoch.
			delete(c.ks.released, k.Name)
			delete(c.ks.abort, k.Name)
			delete(c.ks.handing, k.Name)
		}
	case KeyUnowned:
		if k.Panic && c.phase == phaseMember {
			why := fmt.Sprintf("critical key service %q lost its owner (node %d, epoch %d) and no capable node is left", k.Name, k.From, k.Epoch)
			if c.ks.panic == PanicHalt {
				c.ks.halt, c.ks.haltSeq, c.ks.haltAt = why+": cluster panic (policy halt)", r.Seq, c.now+c.t.callback
			} else {
				c.act(Action{Kind: ActLog, KeyService: k.Name, Epoch: k.Epoch, Reason: "CLUSTER DEGRADED: " + why + " (policy degraded)"})
			}
		}
	}
	for pk := range c.ks.served {
		if pk.name == k.Name && pk.epoch < k.Epoch {
			delete(c.ks.served, pk)
		}
	}
	if c.m != nil && c.m.ready {
		c.masterApplied(r)
	}
}

// keyPoll brings the key services up to date after any input: tells the
// runner where this node acts as owner, starts and paces failovers,
// hand-overs and drains, and, on the master, assigns owners.
func (c *Core) keyPoll() {
	ks := &c.ks
	if ks.halt != "" && c.phase == phaseMember && c.keyHaltNow() {
		c.fence(ks.halt)
	}
	for _, sp := range ks.specs {
		name := sp.Name
		ep, acting := c.KeyServiceActing(name)
		if prev, was := ks.acting[name]; was != acting || prev != ep {
			if was {
				delete(ks.acting, name)
				c.act(Action{Kind: ActKeyOwner, KeyService: name, Epoch: prev, Valid: false})
			}
			if acting {
				ks.acting[name] = ep
				c.act(Action{Kind: ActKeyOwner, KeyService: name, Epoch: ep, Valid: true})
			}
		}
		r, _ := c.st.KeyService(name)
		if m, ok := ks.early[name]; ok && r.Epoch >= m.Epoch {
			delete(ks.early, name)
			c.servePull(m)
		}
		mine := r.Owner == c.self && r.OwnerInc == c.inc
		c.keyPollRun(name, r, mine, acting)
		if mine && r.Phase == KeyHandover {
			c.keyPollHandOff(name, r, acting)
		}
	}
	if len(ks.pushed) > 0 {
		c.keyPollPushed()
	}
	c.keyPollDrain()
	if !ks.formed && c.phase == phaseMember && c.st.formed(ks.specs) {
		ks.formed = true
		a := Action{Kind: ActFormed, Node: c.self, Inc: c.inc}
		if c.isMaster() {
			a.Reason = "cluster formed: every critical key service has a ready owner"
		}
		c.act(a)
	}
	if c.isMaster() {
		c.masterKeys()
	}
}

func (c *Core) keyPollRun(name string, r KeyRecord, mine, acting bool) {
	run := c.ks.runs[name]
	if !mine || r.Phase == KeyUnowned || (run != nil && run.epoch != r.Epoch) {
		delete(c.ks.runs, name)
		run = nil
	}
	if mine && r.Phase == KeyFailover && run == nil {
		run = &keyRun{epoch: r.Epoch, handover: r.Handover, from: r.From}
		c.ks.runs[name] = run
	}
	if run == nil || run.stage == stageDone {
		return
	}
	if !acting {
		// The runner cancelled the routines (ActKeyOwner false): start over
		// when this node acts again. A finished failover only reports.
		if run.stage < stageReport {
			run.stage, run.expect, run.pulled = stageStart, nil, nil
		}
		return
	}
	switch run.stage {
	case stageStart:
		c.keyBegin(name, run)
	case stagePull:
		for _, n := range slices.Sorted(maps.Keys(run.expect)) {
			if !c.st.holds(n, run.expect[n]) {
				delete(run.expect, n)
				c.keyLeaveOut(name, run, n, "no longer a member")
			}
		}
		if len(run.expect) > 0 && c.now-run.stageAt >= c.ks.pullTimeout {
			for _, n := range slices.Sorted(maps.Keys(run.expect)) {
				c.keyLeaveOut(name, run, n, fmt.Sprintf("no answer within %s", c.cfg.Timing.Tick*time.Duration(c.ks.pullTimeout)))
			}
			run.expect = nil
		}
		if len(run.expect) == 0 {
			c.keyFinishPull(name, run)
			return
		}
		if c.now-run.lastSend >= c.t.heartbeat {
			run.lastSend = c.now
			for _, n := range slices.Sorted(maps.Keys(run.expect)) {
				if n != c.self {
					c.send(Message{Type: MsgKeyPull, To: n, KeyService: name, Epoch: run.epoch})
				}
			}
		}
	case stageReport:
		if c.now-run.lastSend >= c.t.heartbeat {
			c.keyReport(name, run)
		}
	}
}

func (c *Core) keyPollHandOff(name string, r KeyRecord, acting bool) {
	ks := &c.ks
	switch {
	case ks.released[name] == r.Epoch || ks.abort[name] == r.Epoch:
		if c.now-ks.lastSend[name] < c.t.heartbeat || c.phase != phaseMember {
			return
		}
		ks.lastSend[name] = c.now
		st := StatusOK
		if ks.abort[name] == r.Epoch {
			st = StatusRetry
		}
		if c.isMaster() {
			c.masterKeyReleased(c.self, c.inc, name, r.Epoch, st)
		} else {
			c.send(Message{Type: MsgKeyReleased, To: c.master, KeyService: name, Epoch: r.Epoch, Status: st})
		}
	case !acting:
		delete(ks.handing, name) // cancelled with ActKeyOwner false: again when acting
	case ks.handing[name] != r.Epoch:
		ks.handing[name] = r.Epoch
		c.act(Action{Kind: ActKeyHandOff, KeyService: name, Epoch: r.Epoch, Node: r.Target})
	}
}

// keyDrain starts a planned shutdown's hand-over of the key services this
// node owns, and reports whether the leave must wait for it.
func (c *Core) keyDrain() bool {
	ks := &c.ks
	if ks.drained {
		return false
	}
	if ks.draining {
		return true
	}
	if len(c.keyOwned()) == 0 {
		return false
	}
	ks.draining, ks.drainStart, ks.drainSent = true, c.now, -1<<40
	c.keyPollDrain()
	return true
}

// keyOwned names the services whose record names this incarnation, or whose
// new owner is still taking this node's hand-over: a drain waits until the
// new owner has the data (a released service included: the release report
// must reach a master, and the new owner pulls the hand-over from here).
func (c *Core) keyOwned() []string {
	var out []string
	for _, sp := range c.ks.specs {
		r := c.st.keys[sp.Name]
		if r == nil {
			continue
		}
		if (r.Owner == c.self && r.OwnerInc == c.inc && r.Phase != KeyUnowned) || (r.Handover && r.From == c.self && r.Phase == KeyFailover) {
			out = append(out, sp.Name)
		}
	}
	return out
}

func (c *Core) keyPollDrain() {
	ks := &c.ks
	if !ks.draining || c.phase != phaseMember {
		return
	}
	owned := c.keyOwned()
	if len(owned) == 0 || c.now-ks.drainStart >= ks.drainTimeout {
		if len(owned) > 0 {
			c.act(Action{Kind: ActLog, Reason: fmt.Sprintf("shutdown: key services %v not handed over within %s: leaving; they fail over",
				owned, c.cfg.Timing.Tick*time.Duration(ks.drainTimeout))})
		}
		ks.draining, ks.drained = false, true
		c.Shutdown()
		return
	}
	if c.now-ks.drainSent < c.t.heartbeat {
		return
	}
	ks.drainSent = c.now
	for _, name := range owned {
		if r := c.st.keys[name]; r.Phase != KeyReady {
			continue // being handed over, or still failing over: asked when ready
		}
		if c.isMaster() {
			c.km().draining[c.self] = c.inc
			c.masterKeyMove(name, 0)
		} else {
			c.send(Message{Type: MsgKeyMove, To: c.master, KeyService: name, Status: StatusRetry})
		}
	}
}

// stepKey handles the key-service messages.
func (c *Core) stepKey(m Message) {
	if _, ok := c.ks.spec[m.KeyService]; !ok {
		return // a service this node was not configured with
	}
	member := c.st.holds(m.From, m.FromInc)
	switch m.Type {
	case MsgKeyPull:
		c.servePull(m)
	case MsgKeyData:
		if c.keyHoldPushed(m, member) {
			return
		}
		c.keyPulled(m.KeyService, m.Epoch, m.From, m.FromInc, m.Data, keyDataFailure(m))
	case MsgKeyReady:
		if c.isMaster() {
			c.masterKeyReady(m.From, m.FromInc, m.KeyService, m.Epoch)
		}
	case MsgKeyMove:
		if c.isMaster() && member {
			if m.Status == StatusRetry {
				c.km().draining[m.From] = m.FromInc
			}
			c.masterKeyMove(m.KeyService, m.Node)
		}
	case MsgKeyReleased:
		if c.isMaster() {
			c.masterKeyReleased(m.From, m.FromInc, m.KeyService, m.Epoch, m.Status)
		}
	}
}

// keyDataFailure is the PullData failure a keydata message reports ("": it
// carries the data).
func keyDataFailure(m Message) string {
	if m.Status == StatusOK {
		return ""
	}
	if m.Reason == "" {
		return "failed"
	}
	return m.Reason
}

// keyHoldPushed keeps a member's answer that came before this node started
// the pull it answers: for the epoch this node is failing over in, before
// the pull, or for a later epoch than it applied (its record is on its way
// here). One per member and service: the lowest such epoch, the next to be
// pulled (a peer that sends far-off epochs cannot push out the answer that
// will be used); keyPollPushed drops it once that epoch cannot be this
// node's pull any more. It reports whether m was taken (or dropped as one
// of those).
func (c *Core) keyHoldPushed(m Message, member bool) bool {
	r := c.st.keys[m.KeyService]
	run := c.ks.runs[m.KeyService]
	mine := run != nil && run.epoch == m.Epoch && run.stage < stagePull
	if !mine && (r != nil && r.Epoch >= m.Epoch) {
		return false // the pull it answers runs, is over, or is someone else's
	}
	k := pushKey{m.KeyService, m.From}
	if old, ok := c.ks.pushed[k]; member && (!ok || m.Epoch <= old.Epoch) {
		c.ks.pushed[k] = m
	}
	return true
}

// keyPollPushed drops held answers whose epoch is over here, or whose pull
// is someone else's, or started, or whose sender left membership.
func (c *Core) keyPollPushed() {
	for k, m := range c.ks.pushed {
		r := c.st.keys[k.name]
		run := c.ks.runs[k.name]
		later := r == nil || r.Epoch < m.Epoch
		mine := run != nil && run.epoch == m.Epoch && run.stage < stagePull
		if (!later && !mine) || !c.st.holds(m.From, m.FromInc) {
			delete(c.ks.pushed, k)
		}
	}
}

// servePull answers the owner's pull, once per epoch: PullData runs once
// and a repeated request gets the same answer.
func (c *Core) servePull(m Message) {
	r := c.st.keys[m.KeyService]
	if r == nil || r.Epoch < m.Epoch {
		// The owner's record is on its way here (the pull overtook the
		// push, or raft has not told us of the commit yet): answer when it
		// is applied rather than at the owner's next retry.
		c.ks.early[m.KeyService] = m
		return
	}
	if r.Epoch != m.Epoch || r.Owner != m.From || r.OwnerInc != m.FromInc || !c.Acting() {
		return // not the owner in our view: it asks again if it is
	}
	if r.Handover && r.From == c.self {
		if data, ok := c.ks.handData[m.KeyService]; ok && c.ks.released[m.KeyService] == r.Epoch-1 {
			c.sendKeyData(m.KeyService, m.Epoch, m.From, &pullServe{data: data})
		}
		return
	}
	c.keyServe(m.KeyService, m.Epoch, m.From)
}

// keyServe runs PullData of service name for owner in epoch, once: a
// repeated request (or the owner's request after this node pushed the
// answer unasked) gets the same answer, once there is one (KeyPullDone
// sends it).
func (c *Core) keyServe(name string, epoch uint64, owner NodeNum) {
	k := pullKey{name, epoch, owner}
	if sv := c.ks.served[k]; sv != nil {
		if sv.done {
			c.sendKeyData(name, epoch, owner, sv)
		}
		return
	}
	c.ks.served[k] = &pullServe{}
	c.act(Action{Kind: ActKeyPullData, KeyService: name, Epoch: epoch, Node: owner})
}

// keyStats fills the key-service part of s.
func (c *Core) keyStats(s *Stats) {
	s.KeyPushedHeld = len(c.ks.pushed)
	for _, sp := range c.ks.specs {
		r, _ := c.st.KeyService(sp.Name)
		_, acting := c.KeyServiceActing(sp.Name)
		t := c.ks.last[sp.Name]
		s.KeyServices = append(s.KeyServices, KeyServiceStats{KeyRecord: r, Critical: sp.Critical, Acting: acting,
			FailoverTicks: t[0], PullTicks: t[1], DataTicks: t[2], ReadyTicks: t[3]})
		if sp.Critical && r.Phase == KeyUnowned && r.Panic && c.ks.panic == PanicDegraded {
			s.KeyDegraded = append(s.KeyDegraded, sp.Name)
		}
	}
}

// keyHaltNow: a pending cluster panic fences this node now, unless it is
// the master and members without raft have yet to learn of it from its push.
func (c *Core) keyHaltNow() bool {
	if !c.isMaster() || c.now >= c.ks.haltAt {
		return true
	}
	for n, w := range c.m.watch {
		if !c.eligible[n] && c.st.holds(n, w.inc) && w.applied < c.ks.haltSeq {
			return false
		}
	}
	return true
}
