package clms

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"time"
)

// ErrConfigMismatch: the master refused this node's join because their
// boot configurations disagree on what every node must share (the node
// table, the timing, the key services). Retrying cannot help; the
// operator must give every node the same cluster.toml.
var ErrConfigMismatch = errors.New("clms: this node's boot configuration differs from the master's")

// ConfigDigest fingerprints what every node of a cluster must agree on, so
// that a node started with another cluster.toml is refused at its join
// rather than acting on another quorum, lease or key-service list:
//
//   - the node table: each node's number and whether it is master-eligible
//     (addresses are checked by the ICS handshake, not here);
//   - the timing, except JoinTimeout (how long this node keeps trying is
//     its own business): the lease safety argument needs one lease and
//     margin on both sides, raft one election timeout;
//   - the key services: names, critical, pull, and the panic policy.
//
// Vote requests carry it as well: no voter votes for a candidate whose
// digest is not its own, so a node with another file is never elected.
//
// What a node may run (NodeInfo) and node-local bounds (PullTimeout,
// DrainTimeout) are its own and not included. Never 0 (0 on the wire
// means "not sent").
func ConfigDigest(cfg Config) uint64 {
	h := fnv.New64a()
	var buf [binary.MaxVarintLen64]byte
	num := func(v uint64) { h.Write(buf[:binary.PutUvarint(buf[:], v)]) }
	str := func(s string) { num(uint64(len(s))); h.Write([]byte(s)) }
	dur := func(d time.Duration) { num(uint64(d)) }

	str("nodes")
	nodes := slices.Clone(cfg.Nodes)
	slices.SortFunc(nodes, func(a, b NodeConfig) int { return int(a.Num) - int(b.Num) })
	num(uint64(len(nodes)))
	for _, n := range nodes {
		num(uint64(n.Num))
		if n.MasterEligible {
			num(1)
		} else {
			num(0)
		}
	}
	t := cfg.Timing
	str("timing")
	for _, d := range []time.Duration{t.Tick, t.Heartbeat, t.LeaseTimeout, t.LeaseMargin, t.ProbeAfter,
		t.ElectionTimeout, t.RaftHeartbeat, t.CallbackTimeout} {
		dur(d)
	}
	str("keys")
	specs := slices.Clone(cfg.Keys.Services)
	slices.SortFunc(specs, func(a, b KeyServiceSpec) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	num(uint64(len(specs)))
	for _, s := range specs {
		str(s.Name)
		flags := uint64(0)
		if s.Critical {
			flags |= 1
		}
		if s.Pull {
			flags |= 2
		}
		num(flags)
	}
	panicPolicy := cfg.Keys.Panic
	if panicPolicy == "" {
		panicPolicy = PanicHalt // the zero value means halt
	}
	str(string(panicPolicy))
	if d := h.Sum64(); d != 0 {
		return d
	}
	return 1
}

// configMismatch is the reason a node gives for refusing a join or a vote
// whose digest is not its own; a refused joiner logs it too.
func configMismatch(self NodeNum, own uint64, other NodeNum, theirs uint64) string {
	return fmt.Sprintf("boot configurations differ (node table, timing or key services): node %d has digest %016x, node %d %016x: give every node the same cluster.toml",
		self, own, other, theirs)
}
