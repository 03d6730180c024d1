package main

import (
	"context"
	"fmt"

	"github.com/clusterinfra/ci/engine"
)

// The ICS echo that /v1/ping calls (cluster ping, cibench --target): a
// service on a channel of its own, so that a bulk run's frames queue
// behind nothing of the cluster's and nothing of the cluster's queues
// behind them. The engine's own echo (Node.Ping) is on ChanCLMS, beside
// CLMS's raft appends, which a run of many 64 KiB requests would delay.
// Priority runs travel on the priority channels, as every priority call.
var (
	benchEchoService = engine.ServiceOn(engine.ChanFirstService+1, 0)
	benchEchoMethod  = engine.Method{Service: benchEchoService, Proc: 0, Name: benchEchoName}
)

const benchEchoName = "ci.bench.echo"

// benchEcho serves the echo on its node and implements admin.Pinger.
type benchEcho struct{ n *engine.Node }

func registerBenchEcho(n *engine.Node) (*benchEcho, error) {
	err := n.Register(engine.Service{ID: benchEchoService, Name: benchEchoName, Inline: true,
		Procs: []engine.Handler{func(_ context.Context, req *engine.Request, resp *engine.Response) error {
			resp.Body = req.Args // read-only until sent; the engine's buffer, not kept
			return nil
		}}})
	if err != nil {
		return nil, fmt.Errorf("bench echo: %w", err)
	}
	return &benchEcho{n: n}, nil
}

// Ping is one round trip to node to's echo, at ctx's priority; the echo
// is appended to reply. Only its length is checked: a bulk run measures
// the transport, not a comparison.
func (e *benchEcho) Ping(ctx context.Context, to engine.NodeNum, payload, reply []byte) ([]byte, error) {
	out, err := e.n.Call(ctx, to, benchEchoMethod, payload, reply)
	if err == nil && len(out)-len(reply) != len(payload) {
		err = fmt.Errorf("%w: echo from node %d: %d bytes, sent %d", engine.ErrCantDecodeRes, to, len(out)-len(reply), len(payload))
	}
	return out, err
}

// MaxPayload bounds a ping's size: the engine's.
func (e *benchEcho) MaxPayload() int { return e.n.MaxPayload() }
