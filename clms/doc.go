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
// This file holds the vocabulary shared by the core, its runner and the
// cluster API: node states, transitions and timing.
package clms
