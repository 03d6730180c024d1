// Package examplesvc is a complete small cluster service built with
// icsgen, the one docs/WRITING_A_SERVICE.md walks through: a key-value
// store with counters. kv.go declares the service as the annotated
// interface KV; kv_ics.go is generated from it by go generate; store.go
// implements it.
//
// Serving it on one node and calling it from another:
//
//	store := examplesvc.NewStore()
//	if err := examplesvc.RegisterKV(node2, store); err != nil {
//		return err
//	}
//	kv := examplesvc.NewKVClient(node1)
//	version, err := kv.Put(ctx, 2, "greeting", []byte("hello"), nil, 0)
//	entry, err := kv.Get(ctx, 2, "greeting")
//	if errors.Is(err, examplesvc.ErrNotFound) {
//		// the key is not there: a declared error crosses as itself
//	}
//	err = kv.Touch(ctx, 2, []string{"greeting"}) // one-way
package examplesvc
