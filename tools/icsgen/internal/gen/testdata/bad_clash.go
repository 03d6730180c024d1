package badclash

import "context"

// KVClient is already taken: icsgen must not declare it again.
type KVClient struct{}

//icsgen:service channel=8 subservice=0 version=1
type KV interface {
	//icsgen:proc 1
	Get(ctx context.Context, key string) (string, error)
}
