package clms

import "fmt"

// PeerRefusesUs is a hint that this incarnation was declared down: node
// n's engine refused our handshake as an incarnation it refuses
// (engine.ErrDeclaredDown). A node cut off while it was declared down (a
// hang, a partition) learns it this way when it reaches the others again,
// since every member's engine refuses it and no master will answer it.
//
// The refusal frame comes before any key exchange, so anyone who can
// answer at a peer's address can forge it. It therefore fences only a node
// that is not acting (its membership lease lapsed): by the safety argument
// (docs/CLMS.md) a running incarnation is declared down only after its lease
// ran out on its own clock, so a refusal while the lease is valid
// contradicts what the master granted and is ignored (false returned; the
// runner counts it). A forger must first cut the node off from every
// master for a whole lease, which already costs it its membership.
func (c *Core) PeerRefusesUs(n NodeNum) bool {
	if c.phase != phaseMember {
		return false // joining, left or fenced already: nothing to fence
	}
	if c.Acting() {
		return false
	}
	c.fence(fmt.Sprintf("node %d refuses this incarnation: it was declared down", n))
	return true
}
