package badtypes

import (
	"context"
	"time"
)

type Shape interface{ Area() float64 }

type Empty struct{}

//icsgen:service channel=8 subservice=0 version=1
type Bad interface {
	//icsgen:proc 1
	Pointer(ctx context.Context, p *int) error
	//icsgen:proc 2
	Chan(ctx context.Context, c chan int) error
	//icsgen:proc 3
	Array(ctx context.Context, a [4]byte) error
	//icsgen:proc 4
	Foreign(ctx context.Context, d time.Duration) error
	//icsgen:proc 5
	Anonymous(ctx context.Context, s struct{ X int }) error
	//icsgen:proc 6
	FloatKey(ctx context.Context, m map[float64]string) error
	//icsgen:proc 7
	Iface(ctx context.Context, s Shape) error
	//icsgen:proc 8
	Unknown(ctx context.Context, u Undeclared) error
	//icsgen:proc 9
	Nothing(ctx context.Context, e Empty) error
	//icsgen:proc 10
	Variadic(ctx context.Context, xs ...int) error
}
