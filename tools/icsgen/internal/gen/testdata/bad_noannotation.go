package badnoannotation

import "context"

// Plain has no //icsgen:service line.
type Plain interface {
	Get(ctx context.Context, key string) (string, error)
}
