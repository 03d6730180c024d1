package badrecursive

import "context"

// Tree nests itself through a slice: a hostile input could nest it deep
// enough to exhaust the decoder's stack.
type Tree struct {
	Name string
	Kids []Tree
}

//icsgen:service channel=8 subservice=3 version=1
type Trees interface {
	//icsgen:proc 1
	Store(ctx context.Context, t Tree) error
}
