package bench

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// GRPC is grpc-go unary calls over one HTTP/2 connection, insecure on
// loopback. A raw-bytes codec forced on both sides replaces protobuf, so
// no generated code is needed and no encoding cost is added that the other
// peers do not pay.
type GRPC struct{}

func (*GRPC) Name() string { return "grpc" }

// rawMsg is the message type the raw codec moves.
type rawMsg struct{ b []byte }

// rawCodec sends rawMsg bytes as they are.
type rawCodec struct{}

func (rawCodec) Name() string { return "cibench-raw" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(*rawMsg)
	if !ok {
		return nil, fmt.Errorf("bench: raw codec cannot marshal %T", v)
	}
	return m.b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*rawMsg)
	if !ok {
		return fmt.Errorf("bench: raw codec cannot unmarshal %T", v)
	}
	// grpc hands the codec a fresh copy (it materializes its buffers), so
	// keeping it is safe.
	m.b = data
	return nil
}

// grpcMethod is the full method name; the service exists only in echoDesc.
const grpcMethod = "/cibench.Echo/Echo"

// echoServer is the service implementation type echoDesc names.
type echoServer interface{}

// echoDesc is what protoc-gen-go-grpc would generate for a one-method service.
var echoDesc = grpc.ServiceDesc{
	ServiceName: "cibench.Echo",
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req rawMsg
			if err := dec(&req); err != nil {
				return nil, err
			}
			// A new buffer per reply: grpc may still be writing the
			// previous one when the next request arrives.
			b, err := Reply(nil, req.b)
			if err != nil {
				return nil, err
			}
			return &rawMsg{b: b}, nil
		},
	}},
	Metadata: "cibench",
}

func (*GRPC) Serve(listen string) (string, func() error, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return "", nil, err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&echoDesc, struct{}{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	stop := func() error {
		srv.Stop() // closes the listener and connections, waits for handlers
		return <-done
	}
	return ln.Addr().String(), stop, nil
}

func (*GRPC) Dial(addr string) (Client, error) {
	// passthrough: the address is used as is, no resolver goroutines.
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		return nil, err
	}
	// Connect now, so that the first timed call does not pay for it.
	conn.Connect()
	return &grpcClient{conn: conn}, nil
}

type grpcClient struct{ conn *grpc.ClientConn }

func (c *grpcClient) Call(req, resp []byte) ([]byte, error) {
	in, out := rawMsg{b: req}, rawMsg{}
	if err := c.conn.Invoke(context.Background(), grpcMethod, &in, &out); err != nil {
		return resp, err
	}
	if len(resp) == 0 {
		return out.b, nil
	}
	return append(resp, out.b...), nil
}

func (c *grpcClient) Close() error { return c.conn.Close() }
