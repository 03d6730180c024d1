package engine

import (
	"context"
	"time"
)

// Interceptors (issue 9 point 5) are middleware around calls, as gRPC's
// UnaryClientInterceptor and UnaryServerInterceptor: each sees the call's
// service, procedure, peer and priority, can time it and see its error,
// and decides whether and how to go on by calling next. They run in the
// order given in Config, the first outermost. icsgen stubs call the
// engine, so they go through them too. With none installed a call costs
// one nil check.

// CallInfo describes one call or one-way message to interceptors.
type CallInfo struct {
	// Peer is the callee on the client, the caller on the server.
	Peer NodeNum
	// Method is the procedure: on the server, Name and Version are the
	// registered service's.
	Method   Method
	Priority uint8     // the ICS priority it travels at
	OneWay   bool      // Send: no reply
	Start    time.Time // when the caller started it; on the server, when the request arrived
}

// Invoker performs a call described by info: the rest of the client chain,
// then the engine.
type Invoker func(ctx context.Context, info *CallInfo, args, reply []byte) ([]byte, error)

// ClientInterceptor wraps a call made by Call, Go, GoFunc or Send (OneWay:
// reply is nil and ignored). It returns what next returned, or its own
// error to refuse the call; it may change info (another peer, say).
// A declared error of icsgen stubs travels in a successful reply: with
// info.Method.DeclaredErrors, a non-zero first byte of the results is
// one (the stub turns it into the error after the chain has returned).
type ClientInterceptor func(ctx context.Context, info *CallInfo, args, reply []byte, next Invoker) ([]byte, error)

// ServerInterceptor wraps a handler. Returning an error without calling
// next refuses the request: ErrAuth reaches the caller as ErrAuth, other
// errors as the handler's failure (ErrFailed). ctx is the handler's: valid
// only until it returns, like the handler's.
type ServerInterceptor func(ctx context.Context, info *CallInfo, req *Request, resp *Response, next Handler) error

// chainClient composes ics around final, the first outermost.
func chainClient(ics []ClientInterceptor, final Invoker) Invoker {
	inv := final
	for i := len(ics) - 1; i >= 0; i-- {
		ic, next := ics[i], inv
		inv = func(ctx context.Context, info *CallInfo, args, reply []byte) ([]byte, error) {
			return ic(ctx, info, args, reply, next)
		}
	}
	return inv
}

// invoke is the end of the client chain: the engine's own call or send.
func (n *Node) invoke(ctx context.Context, info *CallInfo, args, reply []byte) ([]byte, error) {
	if info.OneWay {
		return nil, n.send(ctx, info.Peer, info.Method, args)
	}
	return n.call(ctx, info.Peer, info.Method, args, reply)
}

// intercepted runs a call through the client chain.
func (n *Node) intercepted(ctx context.Context, to NodeNum, m Method, args, reply []byte, oneWay bool) ([]byte, error) {
	info := &CallInfo{Peer: to, Method: m, Priority: n.outgoingPriority(ctx), OneWay: oneWay, Start: time.Now()}
	return n.clientChain(ctx, info, args, reply)
}

// runHandler runs req's handler, through the server chain if there is one.
func (n *Node) runHandler(ctx context.Context, svc *service, req *Request, resp *Response, start time.Time) error {
	h := svc.Procs[req.Proc]
	if len(n.cfg.ServerInterceptors) == 0 {
		return h(ctx, req, resp)
	}
	info := &CallInfo{Peer: req.From, Method: Method{Service: req.Service, Proc: req.Proc, Version: svc.Version, Name: svc.Name, DeclaredErrors: svc.DeclaredErrors}, Priority: req.Priority, OneWay: req.OneWay, Start: start}
	return serverChain(n.cfg.ServerInterceptors, ctx, info, req, resp, h)
}

// serverChain runs ics[0] with the rest of the chain, then h, as its next.
func serverChain(ics []ServerInterceptor, ctx context.Context, info *CallInfo, req *Request, resp *Response, h Handler) error {
	if len(ics) == 0 {
		return h(ctx, req, resp)
	}
	return ics[0](ctx, info, req, resp, func(ctx context.Context, req *Request, resp *Response) error {
		return serverChain(ics[1:], ctx, info, req, resp, h)
	})
}
