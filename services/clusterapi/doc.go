// Package clusterapi is CI's cluster API as a cluster service: the
// cluster_* and clusternode_* calls (cluster name, this node's number, max
// nodes, membership with the last transition id, the next transition to or
// from UP, detailed transitions, node info, set node info, node available)
// and a watch of transitions that never misses one (CI's SIGCLUSTER).
//
// It is served on every node on the CLMS channel as subservice 1 (service
// ID 6<<16|1, beside CLMS at 0 and signal forwarding at 2). api.go declares
// the wire protocol as the annotated interface API; api_ics.go is generated
// from it by icsgen. Server answers from a Backend, one node's view of the
// committed membership: the CLMS runner implements it, and MemBackend is a
// complete in-memory one (membership rows, a bounded transition log and its
// waiters) that a runner may feed with each committed transition.
//
// Serving on node 2 and calling from node 1:
//
//	backend, err := clusterapi.NewMemBackend([]clms.NodeNum{1, 2, 3}, clusterapi.MemConfig{})
//	srv, err := clusterapi.Register(node2, backend, clusterapi.Config{MaxNodes: 3})
//	err = backend.Append(committed...) // as CLMS commits transitions
//
//	c := clusterapi.NewClient(node1)
//	members, last, err := c.Membership(ctx, 2)
//	up, err := c.NodeAvail(ctx, 2, 3)
//	for t, err := range c.Watch(ctx, 2, last, nil) {
//		if err != nil {
//			return err // ctx ended, or ErrCompacted: start again from Membership
//		}
//		fmt.Println(t) // every transition after last, once, in order
//	}
//
// The watch is a loop of long polls (WaitTransitions): each returns the
// transitions after the last id the client has, or waits for one on the
// server, bounded by Config.MaxWait and the caller's context. A server that
// goes away is retried with a backoff from the last id delivered, so a
// restart costs time, never a transition.
//
// History is bounded: MemBackend keeps MemConfig.MaxRetained transitions
// (cinode: cluster.toml's compaction.api_history), and a request for
// transitions after an id no longer kept fails with ErrCompacted, naming the
// oldest kept, rather than skip any. A runner whose CLMS core restored a
// snapshot rebuilds the view with MemBackend.Restore.
package clusterapi
