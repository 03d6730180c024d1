package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/clusterinfra/ci/engine"
)

// ICS is our engine: two nodes, an echo service on the first service
// channel, and every concurrent caller sharing the one client node (one
// node pair), as ICS users do.
type ICS struct {
	// Inline runs the echo handler on the event loop; false hands each
	// request to a server handle goroutine.
	Inline bool
	// WriteMode is how both nodes write frames.
	WriteMode engine.WriteMode
	Pair      // cluster "" is "bench"
	// ClientAddr is the client node's address, for Serve when the client
	// lives in another process: the server node must know it before its
	// first reply. In one process Dial tells the server node itself.
	ClientAddr string

	mu      sync.Mutex // guards servers
	servers map[string]*engine.Node
}

// echoService is the echo service's ID: subservice 1 of the first service channel.
var echoService = engine.ServiceOn(engine.ChanFirstService, 1)

// echoMethod is the call the client makes.
var echoMethod = engine.Method{Service: echoService, Proc: 0}

// parseICS reads the variant suffix of an "ics..." peer name.
func parseICS(suffix string) (Peer, bool) {
	p := &ICS{Inline: true}
	if r, ok := strings.CutPrefix(suffix, "-handle"); ok {
		p.Inline, suffix = false, r
	}
	if r, ok := strings.CutPrefix(suffix, "-eventloop"); ok {
		p.WriteMode, suffix = engine.WriteEventLoop, r
	}
	if r, ok := strings.CutPrefix(suffix, "-netpoll"); ok {
		p.ReadMode, suffix = engine.ReadNetpoller, r
	} else if r, ok := strings.CutPrefix(suffix, "-gnet"); ok {
		p.ReadMode, suffix = engine.ReadEventLoops, r
	}
	if r, ok := strings.CutPrefix(suffix, "-loops"); ok {
		// Event loops per node, to compare loop counts in one run.
		n, err := strconv.Atoi(r)
		if err != nil || n < 1 || p.ReadMode == engine.ReadNetpoller {
			return nil, false
		}
		p.ReadMode, p.EventLoops, suffix = engine.ReadEventLoops, n, ""
	}
	return p, suffix == ""
}

func (p *ICS) Name() string {
	name := "ics"
	if !p.Inline {
		name += "-handle"
	}
	if p.WriteMode == engine.WriteEventLoop {
		name += "-eventloop"
	}
	switch {
	case p.EventLoops > 0:
		name += "-loops" + strconv.Itoa(p.EventLoops)
	case p.ReadMode == engine.ReadNetpoller:
		name += "-netpoll"
	case p.ReadMode == engine.ReadEventLoops:
		name += "-gnet"
	}
	return name
}

func (p *ICS) config(num engine.NodeNum, listen string) engine.Config {
	cfg := p.Pair.config(num, listen, "bench")
	cfg.WriteMode = p.WriteMode
	return cfg
}

func (p *ICS) Serve(listen string) (string, func() error, error) {
	server, client := p.nodes()
	cfg := p.config(server, listen)
	if p.ClientAddr != "" {
		cfg.Peers = map[engine.NodeNum]string{client: p.ClientAddr}
	}
	n, err := engine.New(cfg)
	if err != nil {
		return "", nil, err
	}
	err = n.Register(engine.Service{
		ID:   echoService,
		Name: "echo",
		Procs: []engine.Handler{func(_ context.Context, req *engine.Request, resp *engine.Response) error {
			var err error
			resp.Body, err = Reply(resp.Body, req.Args)
			return err
		}},
		MinHandles: 4,   // warm handles for a latency run
		MaxHandles: 256, // as many as a throughput run has callers
		Inline:     p.Inline,
	})
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		return "", nil, errors.Join(err, n.Close())
	}
	addr := n.Addr()
	p.mu.Lock()
	if p.servers == nil {
		p.servers = make(map[string]*engine.Node)
	}
	p.servers[addr] = n
	p.mu.Unlock()
	stop := func() error {
		p.mu.Lock()
		delete(p.servers, addr)
		p.mu.Unlock()
		return n.Close()
	}
	return addr, stop, nil
}

// Dial starts a client node and introduces it to the server node at addr.
// If that server was started by this ICS value, the server node learns the
// client's address here; otherwise it must have been given ClientAddr.
func (p *ICS) Dial(addr string) (Client, error) {
	c, err := p.NewClient()
	if err != nil {
		return nil, err
	}
	_, client := p.nodes()
	p.mu.Lock()
	sn := p.servers[addr]
	p.mu.Unlock()
	if sn != nil {
		err = sn.SetPeer(client, c.Addr())
	}
	if err == nil {
		err = c.Connect(addr)
	}
	if err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// NewClient starts the client node alone, so that its address can be given
// to a server in another process (cibench serve --client-addr) before
// Connect.
func (p *ICS) NewClient() (*ICSClient, error) {
	server, client := p.nodes()
	n, err := engine.New(p.config(client, ""))
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		if n != nil {
			err = errors.Join(err, n.Close())
		}
		return nil, fmt.Errorf("bench: ics client node: %w", err)
	}
	return &ICSClient{n: n, server: server, ctx: context.Background()}, nil
}

// ICSClient is a client node calling the echo service of one server node.
type ICSClient struct {
	n      *engine.Node
	server engine.NodeNum
	ctx    context.Context // calls are bounded by node-down, not by a deadline
}

// Addr is the client node's listen address.
func (c *ICSClient) Addr() string { return c.n.Addr() }

// Connect points the client at the server node's address.
func (c *ICSClient) Connect(serverAddr string) error { return c.n.SetPeer(c.server, serverAddr) }

func (c *ICSClient) Call(req, resp []byte) ([]byte, error) {
	return c.n.Call(c.ctx, c.server, echoMethod, req, resp)
}

func (c *ICSClient) Close() error { return c.n.Close() }
