package badchannel

import "context"

//icsgen:service channel=4 subservice=0 version=1
type OnReply interface {
	//icsgen:proc 1
	Ping(ctx context.Context) error
}
