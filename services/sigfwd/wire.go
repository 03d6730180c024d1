package sigfwd

import (
	"context"
	"errors"

	"github.com/clusterinfra/ci/engine"
)

// The outcomes a caller tells apart with errors.Is. A nil error means the
// signal was delivered. They cross the wire as themselves (//icsgen:errors
// below), each also matching engine.ErrFailed.
var (
	// ErrRefused: the target node's policy does not allow this signal.
	ErrRefused = errors.New("sigfwd: refused by policy")
	// ErrNotFound: no handler of that name, or no such process, there.
	ErrNotFound = errors.New("sigfwd: no such target")
	// ErrInvalid: a process ID or signal number that is never valid.
	ErrInvalid = errors.New("sigfwd: invalid signal or process")
)

//go:generate go run ../../tools/icsgen -i wire.go -t Forwarding -o wire_ics.go --check-decoders

// Forwarding is the wire protocol of the signal forwarding service, one of
// CI's three cluster services, on the CLMS channel beside CLMS (subservice
// 0) and the cluster API (1). Forwarder serves it and calls it; wire_ics.go
// is generated from it.
//
//icsgen:service name=sigfwd channel=6 subservice=2 version=1 min=1 max=8
//icsgen:errors ErrRefused ErrNotFound ErrInvalid
type Forwarding interface {
	// Named delivers signal and arg to the handler registered under
	// handler on the serving node.
	//
	//icsgen:proc 1
	Named(ctx context.Context, from engine.NodeNum, handler string, signal string, arg []byte) error

	// Process sends the OS signal sig to process pid on the serving node,
	// if the node's policy allows it.
	//
	//icsgen:proc 2
	Process(ctx context.Context, from engine.NodeNum, pid int32, sig int32) error
}
