// Package clms is CI's cluster membership service (CLMS): it keeps track of
// nodes joining and leaving the cluster and guarantees an identical view of
// membership on every node.
//
// The CLMS master is the leader of a raft group formed by the
// master-eligible nodes; every membership transition is committed to that
// group's log before any node acts on it, so a minority partition can never
// change membership. Members send "imalive" heartbeats to the master and hold
// a lease renewed by each answered one; a member whose lease runs out stops
// acting as a member on its own, before the master may declare it down.
//
// The membership logic is Core, a clock-free state machine in the style of
// etcd raft's RawNode; a runner drives it (docs/CLMS.md has the protocol, the
// safety argument and the runner's duties):
//
//	c, err := clms.NewCore(clms.Config{Self: 2, Nodes: table, Timing: clms.LANFastTiming(), Incarnation: boot})
//	// every Timing.Tick:             c.Tick()
//	// n+1 ticks due at once:         c.Late(n), then c.Tick() n+1 times
//	// every message off the wire:    m, err := clms.DecodeMessage(b); c.Step(m)
//	// engine evidence:               c.PeerConnectionLost(n), c.PeerCrashProof(n, inc)
//	// then, after each input:
//	for c.HasReady() {
//		rd := c.Ready()
//		// persist rd.HardState, rd.Entries, rd.Snapshot; send rd.Messages;
//		// rebuild views from rd.Restored if set; publish rd.Applied; carry
//		// out rd.Actions (callbacks, fencing ...); store rd.Compact
//		c.Advance()
//	}
//
// Config.Compaction bounds what a core keeps (docs/CLMS.md, "Log
// compaction"): a voter snapshots its State and compacts its raft log every
// SnapshotEvery entries (Ready.Compact, Store.Compact), the State keeps
// HistoryKeep records and transitions, and a node that falls behind receives
// the State whole (a raft snapshot, or a state image from the master) and
// reports it in Ready.Restored.
//
// Key services (docs/CLMS.md, "Key services") ride on the same record
// stream: the master assigns each to one capable node with an epoch, the
// fencing token; the owner acts only under its membership lease
// (Core.KeyServiceActing); services check epochs with State.CheckEpoch or an
// EpochGuard; the runner carries out the key-service actions with a
// KeyServices registry.
//
// Package clmstest runs many cores over a simulated network and clock.
//
// types.go and timing.go hold the vocabulary shared by the core, its runner
// and the cluster API: node states, transitions and timing.
package clms
