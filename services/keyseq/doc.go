// Package keyseq is a cluster-wide sequence allocator run as a CLMS key
// service: the small, real service that shows why a key service needs
// failover with a data pull and the epoch as a fencing token.
//
// One node at a time, the owner, hands out ids: Next(ctx, count) returns
// count consecutive ids that no call anywhere in the cluster got before,
// stamped with the owner's epoch. Uniqueness must survive the owner's
// death, and no disk is shared, so the owner never hands out an id before
// every member knows it may have: it reserves ids in blocks
// (Config.Block), and a block is in use only once every member it believes
// up acknowledged it (the "note", stamped with its epoch). Every member
// keeps the highest id it has seen, reserved or handed out. When the owner
// dies, CLMS picks a new owner, which pulls each survivor's highest
// (PullData), continues after the largest (FailoverData), and only then
// serves: an id handed out before the crash was acknowledged by every
// survivor, so the new owner never hands it out again. A planned move
// hands the exact next id over instead (HandOff, TakeOver).
//
// The guarantee needs one survivor: a block is known to the members that
// acknowledged it, and a node that joins later learns the mark only at the
// owner's next reservation. If every node that acknowledged a block dies
// at once with the owner, ids of that block may be handed out again, as
// with any allocator without shared storage.
//
// The epoch fences a former owner: members refuse a note stamped with an
// epoch older than the newest they saw (clms.EpochGuard, fed with the
// records the node applied and the epochs it admitted), so an owner that
// was cut off cannot reserve, hence cannot hand out, ids once its
// successor's record or first operation reached the members; the owner
// refuses a request stamped with an epoch other than its own
// (ErrStaleEpoch for an older one: a client that remembered a former
// owner).
//
// Usage: the key service must be declared in cluster.toml and listed in
// the key_services of the nodes that may run it; every node registers it
// (the registry must be the same everywhere) before the node is built:
//
//	# cluster.toml
//	[[key_services]]
//	name = "keyseq"
//	[[nodes]]
//	number = 1
//	key_services = ["keyseq"]
//
//	reg := &clms.KeyServices{}
//	seq, err := keyseq.Register(reg, keyseq.Config{})
//	n, err := node.New(node.Config{Cluster: cfg, Node: 1, DataDir: dir, KeyServices: reg})
//	err = seq.Attach(n.Engine(), n.Runner()) // its ICS service, before Start
//	err = n.Start()
//	r, err := seq.Next(ctx, 10) // ids r.First .. r.First+9, from the owner in epoch r.Epoch
//
// Next can be called on any member: it finds the owner in the node's
// applied state, and waits (bounded by ctx) while the service fails over.
package keyseq
