package badsubservice

import "context"

//icsgen:service channel=8 subservice=6 version=1
type Sub interface {
	//icsgen:proc 1
	Ping(ctx context.Context) error
}
