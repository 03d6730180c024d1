// Package inventory is a service in a module of its own, as a user of
// github.com/clusterinfra/ci writes one: TestOutsideModule copies it into a
// throwaway module, generates its stubs with "go tool icsgen" and runs
// inventory_test.go there.
package inventory

import (
	"context"
	"errors"
)

// ErrNoSuchItem is declared below, so callers match it with errors.Is.
var ErrNoSuchItem = errors.New("inventory: no such item")

//go:generate go tool icsgen -t Inventory

// Inventory counts items in stock.
//
//icsgen:service name=inventory channel=8 subservice=2 version=1
//icsgen:errors ErrNoSuchItem
type Inventory interface {
	// Count returns how many of item are in stock, or ErrNoSuchItem.
	//
	//icsgen:proc 1
	Count(ctx context.Context, item string) (int, error)
}

// Stock is an Inventory over a fixed map.
type Stock map[string]int

// Count implements Inventory.
func (s Stock) Count(_ context.Context, item string) (int, error) {
	n, ok := s[item]
	if !ok {
		return 0, ErrNoSuchItem
	}
	return n, nil
}
