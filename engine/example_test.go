package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/clusterinfra/ci/engine"
)

// Two nodes in one program: node 2 serves an echo service, node 1 calls it.
// In a real cluster each node is its own process (cibench demo runs four) and
// the addresses come from the cluster configuration.
func Example() {
	echo := engine.ServiceOn(engine.ChanFirstService, 1)

	start := func(num engine.NodeNum, addr string) *engine.Node {
		cfg := engine.DefaultConfig()
		cfg.Node, cfg.Cluster, cfg.ListenAddr = num, "example", addr
		cfg.Insecure = true // loopback only; see Security for a real cluster
		n, err := engine.New(cfg)
		if err != nil {
			log.Fatal(err)
		}
		if err := n.Start(); err != nil {
			log.Fatal(err)
		}
		return n
	}
	n1 := start(1, "127.0.0.1:0") // port 0: pick a free port, see Addr
	defer n1.Close()
	n2 := start(2, "127.0.0.2:0")
	defer n2.Close()
	_ = n1.SetPeer(2, n2.Addr())
	_ = n2.SetPeer(1, n1.Addr())

	err := n2.Register(engine.Service{
		ID:         echo,
		Name:       "echo",
		MaxHandles: 8,
		Procs: []engine.Handler{
			0: func(ctx context.Context, req *engine.Request, resp *engine.Response) error {
				resp.Body = append(resp.Body, req.Args...)
				return nil
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := n1.Call(ctx, 2, engine.Method{Service: echo, Proc: 0}, []byte("hello, node 2"), nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply)

	// Arguments over CompressAbove bytes travel compressed (a Service's
	// Compression does the same for its replies); the receiver needs no
	// setting to read them.
	big := bytes.Repeat([]byte("ics "), 1024)
	m := engine.Method{Service: echo, Compression: engine.CompressS2, CompressAbove: 512}
	reply, err = n1.Call(ctx, 2, m, big, nil)
	fmt.Println(len(reply), bytes.Equal(reply, big), err)

	_, err = n1.Call(ctx, 2, engine.Method{Service: echo, Proc: 7}, nil, nil)
	fmt.Println(errors.Is(err, engine.ErrProcUnavail))
	// Output:
	// hello, node 2
	// 4096 true <nil>
	// true
}
