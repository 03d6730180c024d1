package examplesvc

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/clusterinfra/ci/engine"
)

// Store is an in-memory KV, safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	entries  map[string]*Entry // guarded by mu
	counters map[string]int64  // guarded by mu
	touches  uint64            // guarded by mu
}

var _ KV = (*Store)(nil)

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{entries: map[string]*Entry{}, counters: map[string]int64{}}
}

// Get implements KV.
func (s *Store) Get(_ context.Context, key string) (Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return Entry{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return cloneEntry(e), nil
}

// Put implements KV.
func (s *Store) Put(_ context.Context, from engine.NodeNum, key string, value []byte, labels map[string]string, ifVersion uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	var have uint64
	if ok {
		have = e.Version
	}
	if have != ifVersion {
		return 0, fmt.Errorf("%w: %q is at version %d, not %d", ErrConflict, key, have, ifVersion)
	}
	if !ok {
		e = &Entry{Key: key}
		s.entries[key] = e
	}
	e.Value = slices.Clone(value)
	e.Version++
	e.Meta.Writer = uint32(from)
	e.Meta.Labels = maps.Clone(labels)
	return e.Version, nil
}

// Add implements KV.
func (s *Store) Add(_ context.Context, name string, delta int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counters[name] += delta
	return s.counters[name], nil
}

// List implements KV.
func (s *Store) List(_ context.Context, prefix string, limit int) ([]Entry, bool, error) {
	if limit < 0 {
		return nil, false, fmt.Errorf("examplesvc: negative limit %d", limit)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k := range s.entries {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	more := len(keys) > limit
	if more {
		keys = keys[:limit]
	}
	out := make([]Entry, len(keys))
	for i, k := range keys {
		out[i] = cloneEntry(s.entries[k])
	}
	return out, more, nil
}

// Touch implements KV.
func (s *Store) Touch(_ context.Context, _ engine.NodeNum, keys []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if e, ok := s.entries[k]; ok {
			e.Meta.Touches++
			s.touches++
		}
	}
}

// Stats implements KV.
func (s *Store) Stats(context.Context) (Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Keys: len(s.entries), Counters: maps.Clone(s.counters), Touches: s.touches}, nil
}

func cloneEntry(e *Entry) Entry {
	c := *e
	c.Value = slices.Clone(e.Value)
	c.Meta.Labels = maps.Clone(e.Meta.Labels)
	return c
}
