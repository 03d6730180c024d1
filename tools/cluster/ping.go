package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
)

// pingCmd is cluster ping: ICS round trips between two members, made by
// one node's admin endpoint (POST /v1/ping) to the other's echo.
type pingCmd struct {
	N           uint32        `arg:"" help:"The node whose ICS echo answers."`
	From        uint32        `placeholder:"M" help:"The node that makes the calls (default: the first endpoint that answers and is not N)."`
	Calls       int           `default:"10" help:"Calls to make (0 with --duration: as many as fit)."`
	Duration    time.Duration `help:"Stop after this long, if --calls are not made first (at most 60s)."`
	Size        int           `default:"64" help:"Payload bytes each way."`
	Concurrency int           `default:"1" help:"Callers at once."`
	Priority    int           `default:"0" help:"ICS priority 0..4: 0 travels on the echo's own service channel, 1..4 on the never-throttled priority channels (1 beside CLMS's heartbeats)."`
	Warmup      int           `help:"Untimed calls first."`
}

func (*pingCmd) Help() string {
	return `Node --from calls node N's ICS echo (cinode's ci.bench.echo, on a service
channel of its own) and reports the round trips: p50/p90/p99/p99.9/max
latency, calls/s and errors by ICS status. The nodes do the calls; this
command only asks node --from's admin endpoint (POST /v1/ping,
docs/ADMIN.md), so it works from outside the cluster. Priorities 1..4
travel on the priority channels, 1 beside CLMS's heartbeats, and every run
shares the nodes' CPUs with CLMS: keep large or long runs for quiet times.

Examples:
  cluster ping 2                                 10 round trips to node 2 from the first other node
  cluster ping 2 --from 1 --calls 10000 --warmup 1000
  cluster ping 3 --from 1 --priority 1           on the never-throttled priority channel
  cluster ping 2 --duration 5s --concurrency 64 --size 4096 --calls 0
  cluster -c /etc/ci/cluster.toml ping 4 --from 2 --json`
}

func (c *pingCmd) Run(g *globals) error {
	switch {
	case c.N == 0:
		return usagef("node numbers start at 1")
	case c.From == c.N:
		return usagef("--from %d is node %d itself: a ping needs two nodes", c.From, c.N)
	case c.Calls < 0 || (c.Calls == 0 && c.Duration <= 0):
		return usagef("--calls %d: want at least 1, or 0 with a --duration", c.Calls)
	case c.Duration < 0 || c.Duration > admin.MaxPingDuration:
		return usagef("--duration %v: want 0..%v", c.Duration, admin.MaxPingDuration)
	}
	req := admin.PingRequest{Node: c.N, Calls: c.Calls, Size: c.Size, Concurrency: c.Concurrency, Priority: c.Priority, Warmup: c.Warmup}
	if c.Duration > 0 {
		req.Duration = c.Duration.String()
	}
	cl, from, err := c.caller(g)
	if err != nil {
		return err
	}
	// No --timeout: the run takes as long as it was asked to, and the
	// node stops it if this command goes away (Ctrl-C).
	var res admin.PingResult
	if err := cl.Post(g.ctx, "/v1/ping", req, &res); err != nil {
		var re *admin.RemoteError
		if errors.As(err, &re) && re.Code == "bad_request" {
			return usageError{err} // a bound: the node names the field
		}
		return err
	}
	if g.JSON {
		return g.printJSON(res)
	}
	l := res.Latency
	fmt.Fprintf(g.stdout, "node %d -> node %d: %d calls of %d B at priority %d, %d at once, in %s (%.0f calls/s, %.1f MB/s each way)\n",
		from, c.N, res.Calls, res.Size, res.Priority, res.Concurrency, res.Elapsed.Round(time.Microsecond), res.CallsPerSec, res.BytesPerSec/1e6)
	if res.Calls > 0 {
		fmt.Fprintf(g.stdout, "rtt p50/p90/p99/p99.9/max = %s/%s/%s/%s/%s\n", us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max))
	}
	if res.Errors == 0 {
		return nil
	}
	var codes []string
	for code, n := range res.ErrorCodes {
		codes = append(codes, fmt.Sprintf("%s %d", code, n))
	}
	fmt.Fprintf(g.stdout, "errors: %d (%s); the last: %s\n", res.Errors, strings.Join(codes, ", "), res.LastError)
	return fmt.Errorf("%d of the calls from node %d to node %d failed", res.Errors, from, c.N)
}

// caller finds the endpoint of the node that makes the calls: --from's,
// or the first that answers and is not node N.
func (c *pingCmd) caller(g *globals) (*admin.Client, clms.NodeNum, error) {
	if err := g.resolve(); err != nil {
		return nil, 0, err
	}
	cls := g.clients
	if c.From != 0 {
		var err error
		if cls, err = g.forNode(clms.NodeNum(c.From)); err != nil {
			return nil, 0, err
		}
	}
	var errs []string
	for _, cl := range cls {
		ctx, cancel := context.WithTimeout(g.ctx, g.Timeout)
		var st admin.Status
		err := cl.Get(ctx, "/v1/status", &st)
		cancel()
		switch {
		case err != nil:
			errs = append(errs, err.Error())
		case c.From != 0 && st.Node == c.From, c.From == 0 && st.Node != c.N:
			return cl, clms.NodeNum(st.Node), nil
		}
	}
	who := fmt.Sprintf("a node other than %d", c.N)
	if c.From != 0 {
		who = fmt.Sprintf("node %d", c.From)
	}
	if len(errs) == 0 {
		return nil, 0, fmt.Errorf("none of the endpoints is %s's: give it with --endpoint or --config", who)
	}
	return nil, 0, fmt.Errorf("no endpoint of %s answered:\n  %s", who, strings.Join(errs, "\n  "))
}

// us formats a round trip in microseconds, or milliseconds from 1 ms.
func us(d time.Duration) string {
	if d >= time.Millisecond {
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
}
