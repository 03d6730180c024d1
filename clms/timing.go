package clms

import (
	"fmt"
	"time"
)

// Timing is how CLMS paces itself. The core counts in ticks (Tick is the
// length of one); the runner turns real time into ticks. Every duration below
// is a whole number of ticks. Start from DefaultTiming or LANFastTiming.
//
// The safety argument (docs/CLMS.md, "Safety argument"): a member renews its
// lease with every answered imalive and stops acting as a member when
// LeaseTimeout has passed on its own clock since it sent the last answered
// one; the master declares a silent node down only after LeaseTimeout +
// LeaseMargin of silence on its clock, so the node has fenced itself first
// even if its clock runs slower by up to the margin's share.
type Timing struct {
	Tick time.Duration // one tick of the core; granularity of every timer

	// Heartbeat is how often a member sends imalive to the master: CI sends
	// 3 per timeout period, so a single lost packet never costs a lease.
	Heartbeat time.Duration
	// LeaseTimeout is how long an answered imalive keeps a member a member.
	LeaseTimeout time.Duration
	// LeaseMargin is added on the master's side before it declares a silent
	// node down: room for clock-rate drift and the node noticing its expiry.
	LeaseMargin time.Duration
	// ProbeAfter is the silence after which the master probes a member
	// directly, so that one lost imalive is not yet a suspicion.
	ProbeAfter time.Duration

	// ElectionTimeout and RaftHeartbeat drive the raft group of the
	// master-eligible nodes (etcd raft's ElectionTick/HeartbeatTick).
	ElectionTimeout time.Duration
	RaftHeartbeat   time.Duration

	// CallbackTimeout bounds one subsystem callback; a callback that takes
	// longer is reported and the transition goes on without it.
	CallbackTimeout time.Duration
	// JoinTimeout bounds how long a coming-up node keeps probing and retrying
	// its join (for example while the master-eligible nodes elect) before it
	// gives up with an error.
	JoinTimeout time.Duration
}

// DefaultTiming is for ordinary networks and loaded machines: detection in
// seconds, like memberlist's LAN profile, and no false NODEDOWN for a node
// that stalls for a second.
func DefaultTiming() Timing {
	return Timing{
		Tick:            50 * time.Millisecond,  // fine enough for second-scale timers
		Heartbeat:       1 * time.Second,        // 3 per lease, as CI's imalive
		LeaseTimeout:    3 * time.Second,        // survives two lost imalives and a long GC pause
		LeaseMargin:     1 * time.Second,        // a third of the lease for clock drift
		ProbeAfter:      2 * time.Second,        // two missed imalives before a direct probe
		ElectionTimeout: 1 * time.Second,        // etcd's order of magnitude
		RaftHeartbeat:   100 * time.Millisecond, // a tenth of the election timeout, as etcd
		CallbackTimeout: 10 * time.Second,       // subsystems may touch disks
		JoinTimeout:     60 * time.Second,       // a whole cluster booting at once
	}
}

// LANFastTiming is for a quiet LAN or one machine: hang detection under half a
// second, crash detection (connection refused) in milliseconds.
func LANFastTiming() Timing {
	return Timing{
		Tick:            10 * time.Millisecond,  // timers to 10 ms
		Heartbeat:       100 * time.Millisecond, // 3 per lease
		LeaseTimeout:    300 * time.Millisecond, // 3 imalives
		LeaseMargin:     60 * time.Millisecond,  // 20% of the lease for drift
		ProbeAfter:      200 * time.Millisecond, // two missed imalives
		ElectionTimeout: 100 * time.Millisecond, // well inside the lease: members survive a master change
		RaftHeartbeat:   20 * time.Millisecond,
		CallbackTimeout: 2 * time.Second,
		JoinTimeout:     30 * time.Second,
	}
}

// TimingProfile returns a named profile: "default" or "lan-fast".
func TimingProfile(name string) (Timing, error) {
	switch name {
	case "", "default":
		return DefaultTiming(), nil
	case "lan-fast":
		return LANFastTiming(), nil
	}
	return Timing{}, fmt.Errorf("clms: unknown timing profile %q (want \"default\" or \"lan-fast\")", name)
}

// Ticks converts d to whole ticks, rounding up so that a timer never fires
// early.
func (t Timing) Ticks(d time.Duration) int {
	return int((d + t.Tick - 1) / t.Tick)
}

// MinClockRatio is the drift the lease argument tolerates: the lowest ratio
// of a member's clock rate to the master's for which a member's lease (plus
// the tick in which it notices the expiry) always ends on its own clock before
// the master's LeaseTimeout+LeaseMargin of silence ends on the master's:
// (LeaseTimeout+Tick)/ratio <= LeaseTimeout+LeaseMargin. LANFastTiming gives
// 0.861 (a member may run 13.9% slower than the master), DefaultTiming 0.7625.
func (t Timing) MinClockRatio() float64 {
	return float64(t.LeaseTimeout+t.Tick) / float64(t.LeaseTimeout+t.LeaseMargin)
}

// Validate rejects timings that break the safety argument or cannot work.
func (t Timing) Validate() error {
	if t.Tick <= 0 {
		return fmt.Errorf("clms: timing: tick must be positive")
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"heartbeat", t.Heartbeat}, {"lease_timeout", t.LeaseTimeout}, {"lease_margin", t.LeaseMargin},
		{"probe_after", t.ProbeAfter}, {"election_timeout", t.ElectionTimeout},
		{"raft_heartbeat", t.RaftHeartbeat}, {"callback_timeout", t.CallbackTimeout}, {"join_timeout", t.JoinTimeout},
	} {
		if f.d < t.Tick {
			return fmt.Errorf("clms: timing: %s (%v) must be at least one tick (%v)", f.name, f.d, t.Tick)
		}
	}
	switch {
	case t.Heartbeat*2 > t.LeaseTimeout:
		return fmt.Errorf("clms: timing: lease_timeout (%v) must cover at least two heartbeats (%v)", t.LeaseTimeout, t.Heartbeat)
	case t.ProbeAfter >= t.LeaseTimeout:
		return fmt.Errorf("clms: timing: probe_after (%v) must come before the lease runs out (%v)", t.ProbeAfter, t.LeaseTimeout)
	case t.RaftHeartbeat >= t.ElectionTimeout:
		return fmt.Errorf("clms: timing: raft_heartbeat (%v) must be shorter than election_timeout (%v)", t.RaftHeartbeat, t.ElectionTimeout)
	case t.ElectionTimeout*2 >= t.LeaseTimeout+t.LeaseMargin:
		// A master change must finish while members still hold their leases,
		// or every member fences itself whenever the master hangs.
		return fmt.Errorf("clms: timing: election_timeout (%v) must be under half of lease_timeout+lease_margin (%v)", t.ElectionTimeout, t.LeaseTimeout+t.LeaseMargin)
	}
	return nil
}
