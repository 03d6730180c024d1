package badprobe

import "context"

//icsgen:service channel=7 subservice=0 version=1
type OnProbe interface {
	//icsgen:proc 1
	Ping(ctx context.Context) error
}
