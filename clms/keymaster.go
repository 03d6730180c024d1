package clms

import (
	"fmt"
	"slices"
)

// The master's side of key services: it assigns owners, commits them ready,
// moves services on request and panics the cluster when a critical one
// cannot be served. Every decision is a compare-and-set command (decideKey
// checks the safety rules again when it is applied).

// keyMaster is the master's key-service bookkeeping; a new master starts
// empty (owners resend ready and release reports; drains resend moves).
type keyMaster struct {
	proposed map[string]keyProposal
	draining map[NodeNum]uint64 // incarnations leaving: assign them nothing
	released map[string]uint64  // the owner released the service in this epoch
	logged   map[string]string  // the last line logged per service, not repeated
}

type keyProposal struct {
	rec KeyRecord
	at  int64
}

func (c *Core) km() *keyMaster {
	if c.m.keys == nil {
		c.m.keys = &keyMaster{proposed: map[string]keyProposal{}, draining: map[NodeNum]uint64{},
			released: map[string]uint64{}, logged: map[string]string{}}
	}
	return c.m.keys
}

// proposeKey proposes next for a service now in state cur, unless the same
// proposal is in flight (a lost one is retried after two election timeouts;
// a duplicate applies as a no-op).
func (c *Core) proposeKey(cur, next KeyRecord) {
	km := c.km()
	if p, ok := km.proposed[next.Name]; ok && p.rec == next && c.now-p.at < 2*c.t.election {
		return
	}
	km.proposed[next.Name] = keyProposal{next, c.now}
	cmd := command{Kind: RecordKeyService, T: Transition{Time: wallTime(c.cfg.WallClock)}, Key: next,
		KeyFrom: keyCAS{cur.Epoch, cur.Owner, cur.Phase}}
	c.proposeData(cmd.encode())
}

func (c *Core) keyLog(name, msg string) {
	if km := c.km(); km.logged[name] != msg {
		km.logged[name] = msg
		c.act(Action{Kind: ActLog, KeyService: name, Reason: msg})
	}
}

// keyCapable reports whether node n may take key service name now: UP,
// configured for it, not leaving, not about to be declared down.
func (c *Core) keyCapable(n NodeNum, name string) bool {
	m := c.st.members[n]
	if m == nil || m.State != StateUp || !slices.Contains(m.Info.KeyServices, name) {
		return false
	}
	if c.km().draining[n] == m.Incarnation || c.m.downPending[n] == m.Incarnation || c.gone[n] >= m.Incarnation {
		return false
	}
	return n != c.self || (!c.leaving && !c.ks.draining)
}

// keyPick chooses the capable node (not skip) that owns the fewest key
// services, the lowest number among equals: deterministic, and it spreads
// the services.
func (c *Core) keyPick(name string, skip NodeNum) NodeNum {
	owned := map[NodeNum]int{}
	for _, r := range c.st.keys {
		if r.Owner != 0 {
			owned[r.Owner]++
		}
	}
	best := NodeNum(0)
	for _, n := range c.st.nodes {
		if n != skip && c.keyCapable(n, name) && (best == 0 || owned[n] < owned[best]) {
			best = n
		}
	}
	return best
}

// masterKeys assigns every key service whose owner is gone, and completes
// released hand-overs. Run after every input on the master.
func (c *Core) masterKeys() {
	km := c.km()
	for _, sp := range c.ks.specs {
		r, _ := c.st.KeyService(sp.Name)
		// An owner whose GOINGDOWN this master has proposed counts as gone
		// already: its new owner is proposed right behind it, in the same
		// raft append, rather than a raft round later. The log orders the
		// two, and decideKey admits the new owner only once the old
		// incarnation is out of membership where it is applied, so an owner
		// record that overtook nothing still cannot overlap the old owner;
		// if the GOINGDOWN is lost, so is the record, or it is refused.
		alive := r.Owner != 0 && c.st.holds(r.Owner, r.OwnerInc) && c.m.downPending[r.Owner] != r.OwnerInc
		switch {
		case alive && r.Phase == KeyHandover && km.released[sp.Name] == r.Epoch:
			to := r.Target
			if to == r.Owner || !c.keyCapable(to, sp.Name) {
				to = c.keyPick(sp.Name, r.Owner)
			}
			if to == 0 {
				// Nowhere to go: the owner serves again.
				c.keyLog(sp.Name, fmt.Sprintf("key service %q: no capable node to hand over to: move aborted", sp.Name))
				next := r
				next.Phase, next.Target = KeyReady, 0
				c.proposeKey(r, next)
				continue
			}
			c.proposeKey(r, KeyRecord{Name: sp.Name, Owner: to, OwnerInc: c.st.members[to].Incarnation, Epoch: r.Epoch + 1,
				Phase: KeyFailover, Handover: true, From: r.Owner})
		case alive:
		default:
			// The owner left membership: by the membership safety argument
			// its lease ended (or its process is gone) before that commit,
			// so a new owner cannot overlap it.
			if to := c.keyPick(sp.Name, 0); to != 0 {
				delete(km.logged, sp.Name) // say it again if it is orphaned again
				c.proposeKey(r, KeyRecord{Name: sp.Name, Owner: to, OwnerInc: c.st.members[to].Incarnation,
					Epoch: r.Epoch + 1, Phase: KeyFailover, From: r.Owner})
				continue
			}
			if r.Owner != 0 {
				c.proposeKey(r, KeyRecord{Name: sp.Name, Epoch: r.Epoch, Phase: KeyUnowned, From: r.Owner, Panic: sp.Critical})
			}
			c.keyLog(sp.Name, fmt.Sprintf("key service %q (critical=%v) has no owner: waiting for a capable node", sp.Name, sp.Critical))
		}
	}
}

// masterKeyReady commits the owner's finished failover.
func (c *Core) masterKeyReady(from NodeNum, inc uint64, name string, epoch uint64) {
	r, _ := c.st.KeyService(name)
	if r.Owner == from && r.OwnerInc == inc && r.Epoch == epoch && r.Phase == KeyFailover {
		next := r
		next.Phase = KeyReady
		c.proposeKey(r, next)
	}
}

// masterKeyMove starts a planned move of a ready service to node to (0: the
// capable node masterKeys would pick).
func (c *Core) masterKeyMove(name string, to NodeNum) {
	r, _ := c.st.KeyService(name)
	if r.Phase != KeyReady || !c.st.holds(r.Owner, r.OwnerInc) {
		c.keyLog(name, fmt.Sprintf("key service %q: move refused: it is %s, not ready", name, r.Phase))
		return
	}
	if to == 0 {
		to = c.keyPick(name, r.Owner)
	}
	if to == 0 || to == r.Owner || !c.keyCapable(to, name) {
		c.keyLog(name, fmt.Sprintf("key service %q: move refused: node %d is not a capable UP node", name, to))
		return
	}
	next := r
	next.Phase, next.Target = KeyHandover, to
	c.proposeKey(r, next)
}

// masterKeyReleased takes the owner's hand-over report: released (the new
// owner is committed by masterKeys), or HandOff failed (the move aborts).
func (c *Core) masterKeyReleased(from NodeNum, inc uint64, name string, epoch uint64, st Status) {
	r, _ := c.st.KeyService(name)
	if r.Owner != from || r.OwnerInc != inc || r.Epoch != epoch || r.Phase != KeyHandover {
		return
	}
	if st == StatusOK {
		c.km().released[name] = epoch
		c.masterKeys()
		return
	}
	next := r
	next.Phase, next.Target = KeyReady, 0
	c.proposeKey(r, next)
}
