package examplesvc

import (
	"context"
	"errors"

	"github.com/clusterinfra/ci/engine"
)

// Errors the service returns. They are declared with //icsgen:errors below,
// so a caller on another node matches them with errors.Is.
var (
	ErrNotFound = errors.New("examplesvc: key not found")
	ErrConflict = errors.New("examplesvc: version conflict")
)

// Entry is a stored value.
type Entry struct {
	Key     string
	Value   []byte
	Version uint64 // 1 for the first Put, then one more per Put
	Meta    Meta
}

// Meta is what the store knows of an entry besides its value: a struct
// nested in Entry, with a map.
type Meta struct {
	Writer  uint32            // the node that last wrote the entry
	Labels  map[string]string // free-form, set by Put
	Touches uint32            // Touch messages received for the key
}

// Stats summarises a store.
type Stats struct {
	Keys     int
	Counters map[string]int64
	Touches  uint64
}

//go:generate go run ../../tools/icsgen -i kv.go -t KV -o kv_ics.go --check-decoders

// KV is a small key-value and counter service: the example every new
// cluster service can start from (docs/WRITING_A_SERVICE.md). Store
// implements it; kv_ics.go, generated from this interface, holds KVClient,
// RegisterKV and the marshalling.
//
//icsgen:service name=kv channel=8 subservice=1 version=1 min=1 max=16
//icsgen:errors ErrNotFound ErrConflict
type KV interface {
	// Get returns the entry stored under key, or ErrNotFound.
	//
	//icsgen:proc 1
	Get(ctx context.Context, key string) (Entry, error)

	// Put stores value under key when the entry's version is still
	// ifVersion (0: the key must not exist yet), or fails with ErrConflict.
	// It returns the new version. from is the caller's node, filled in by
	// the server stub: callers do not pass it.
	//
	//icsgen:proc 2
	Put(ctx context.Context, from engine.NodeNum, key string, value []byte, labels map[string]string, ifVersion uint64) (uint64, error)

	// Add adds delta to the counter named name and returns its new value.
	//
	//icsgen:proc 3
	Add(ctx context.Context, name string, delta int64) (int64, error)

	// List returns up to limit entries whose keys start with prefix, in key
	// order, and whether more were left out.
	//
	//icsgen:proc 4
	List(ctx context.Context, prefix string, limit int) ([]Entry, bool, error)

	// Touch counts a touch on each key that exists. It is one-way: the
	// caller learns only that the message left.
	//
	//icsgen:proc 5
	//icsgen:oneway
	Touch(ctx context.Context, from engine.NodeNum, keys []string)

	// Stats summarises the store.
	//
	//icsgen:proc 6
	Stats(ctx context.Context) (Stats, error)
}
