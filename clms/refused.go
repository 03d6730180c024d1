package clms

import "fmt"

// PeerRefusesUs is evidence that this incarnation was declared down: node
// n's engine refused our handshake because it refuses this incarnation
// (engine.ErrDeclaredDown), which an engine does only once the NODEDOWN is
// committed. A node cut off while it was declared down (a hang, a
// partition) learns it this way when it reaches the others again: its
// lease lapsed meanwhile (it is suspended), and now it fences for good.
func (c *Core) PeerRefusesUs(n NodeNum) {
	if c.phase != phaseMember {
		return // joining, left or fenced already: nothing to fence
	}
	c.fence(fmt.Sprintf("node %d refuses this incarnation: it was declared down", n))
}
