package baddupproc

import "context"

//icsgen:service channel=8 subservice=1 version=1
type Dup interface {
	//icsgen:proc 1
	Get(ctx context.Context, key string) (string, error)
	//icsgen:proc 2
	Put(ctx context.Context, key, value string) error
	//icsgen:proc 1
	Delete(ctx context.Context, key string) error
}
