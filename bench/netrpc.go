package bench

import (
	"net"
	"net/rpc"
)

// NetRPC is the standard library's net/rpc over TCP (gob encoding), with
// one multiplexed connection shared by all concurrent callers.
type NetRPC struct{}

func (*NetRPC) Name() string { return "netrpc" }

// EchoService is the net/rpc receiver. It is exported because net/rpc
// registers only exported types and methods.
type EchoService struct{}

// Echo answers one echo request.
func (EchoService) Echo(req []byte, resp *[]byte) error {
	var err error
	*resp, err = Reply((*resp)[:0], req)
	return err
}

// netrpcMethod is the service method the client calls.
const netrpcMethod = "EchoService.Echo"

func (*NetRPC) Serve(listen string) (string, func() error, error) {
	// A server per Serve, not rpc.DefaultServer: no package-level state.
	srv := rpc.NewServer()
	if err := srv.Register(EchoService{}); err != nil {
		return "", nil, err
	}
	s, err := startTCP(listen, func(c net.Conn) { srv.ServeConn(c) })
	if err != nil {
		return "", nil, err
	}
	return s.addr(), s.stop, nil
}

func (*NetRPC) Dial(addr string) (Client, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &netrpcClient{c: rpc.NewClient(conn)}, nil
}

type netrpcClient struct{ c *rpc.Client }

func (c *netrpcClient) Call(req, resp []byte) ([]byte, error) {
	// gob decodes into the slice in place when it has the capacity.
	reply := resp[len(resp):]
	if err := c.c.Call(netrpcMethod, req, &reply); err != nil {
		return resp, err
	}
	if len(resp) == 0 {
		return reply, nil
	}
	return append(resp, reply...), nil
}

func (c *netrpcClient) Close() error { return c.c.Close() }
