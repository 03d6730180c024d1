package badsignatures

import (
	"context"

	"github.com/clusterinfra/ci/engine"
)

//icsgen:service channel=9 subservice=2 version=1
type Sigs interface {
	//icsgen:proc 1
	NoCtx(key string) error
	//icsgen:proc 2
	CtxSecond(key string, ctx context.Context) error
	//icsgen:proc 3
	NoError(ctx context.Context) string
	//icsgen:proc 4
	ErrorFirst(ctx context.Context) (error, string)
	//icsgen:proc 5
	NoResults(ctx context.Context, key string)
	//icsgen:proc 6
	//icsgen:oneway
	OneWayWithError(ctx context.Context, key string) error
	//icsgen:proc 7
	NodeLater(ctx context.Context, key string, n engine.NodeNum) error
	//icsgen:proc 8
	TwoErrors(ctx context.Context) (error, error)
}
