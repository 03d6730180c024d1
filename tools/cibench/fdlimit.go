package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// fdsPerNode is what a spawned cluster costs in open descriptors per node,
// for the whole run: each cinode's sockets to its peers (the master of 64
// nodes held 1,022, docs/CLMS.md), and on cibench's side its pipes, admin
// connections and watch streams, with room to spare. Every process of the
// run inherits cibench's limit.
const fdsPerNode = 40

// fdBaseline is cibench's own descriptors before any node: standard
// streams, the Go runtime's, the output file.
const fdBaseline = 64

// fdLimit is RLIMIT_NOFILE as getrlimit and setrlimit see it; a variable
// so that the tests can check the decisions without changing the
// process's limit.
type fdLimit struct {
	get func(*unix.Rlimit) error
	set func(*unix.Rlimit) error
}

var processFDLimit = fdLimit{
	get: func(r *unix.Rlimit) error { return unix.Getrlimit(unix.RLIMIT_NOFILE, r) },
	set: func(r *unix.Rlimit) error { return unix.Setrlimit(unix.RLIMIT_NOFILE, r) },
}

// ensureDescriptors makes sure a cluster of nodes spawned nodes fits in
// RLIMIT_NOFILE (see ensure).
func ensureDescriptors(nodes int) error { return processFDLimit.ensure(nodes) }

// ensure checks that the soft limit allows fdsPerNode descriptors for each
// of nodes nodes, and raises it to the hard limit when it does not but the
// hard one does (Go passes a limit it was told to set on to the cinode
// processes). It fails, naming the limit, when even the hard one is too
// low: a node that runs out of descriptors mid-run fails in ways that do
// not say why.
func (l fdLimit) ensure(nodes int) error {
	need := uint64(fdBaseline + fdsPerNode*nodes)
	var r unix.Rlimit
	if err := l.get(&r); err != nil {
		return fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if r.Cur >= need {
		return nil
	}
	if r.Max < need {
		return fmt.Errorf("%d nodes want about %d open descriptors (%d each), over RLIMIT_NOFILE's hard limit of %d: raise it (ulimit -Hn, limits.conf, LimitNOFILE=) or spawn fewer nodes",
			nodes, need, fdsPerNode, r.Max)
	}
	raised := unix.Rlimit{Cur: r.Max, Max: r.Max}
	if err := l.set(&raised); err != nil {
		return fmt.Errorf("%d nodes want about %d open descriptors, over RLIMIT_NOFILE's soft limit of %d, and raising it to the hard limit %d failed: %w",
			nodes, need, r.Cur, r.Max, err)
	}
	return nil
}
