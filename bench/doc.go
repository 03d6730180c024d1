// Package bench measures ICS against the RPC systems a user would otherwise
// reach for: raw TCP ping-pong (the floor), net/rpc and grpc-go.
//
// Every peer serves the same echo protocol (see NewRequest and Reply), so
// they all do the same work per call. A Peer serves and dials; Run puts a
// load on a Client and returns an HDR histogram and the rate; Compare runs
// several peers in interleaved rounds and reports per-round ratios to the
// raw peer, whose medians are the numbers worth quoting on a noisy machine.
//
// Loopback latency on a small VM is bimodal (raw TCP p50 about 20 µs or
// 40-60 µs) and changes mode from minute to minute, sometimes within a
// round. So Compare also runs raw TCP in short brackets (BracketCalls
// calls) before the first round and after every round, and RoundMode
// calls a round fast or slow only when raw TCP was in that mode in the
// bracket before it, in its own run and in the bracket after it; otherwise
// the round is mixed. PeerStats.Fast and .Slow hold the ratios of the fast
// and the slow rounds, and mixed rounds are in neither. The brackets only
// classify: ratios divide by raw TCP's run in the round, and no bracket is
// in a merged histogram.
//
// In one process:
//
//	var targets []bench.Target
//	for _, name := range []string{"raw", "ics", "grpc"} {
//		p, _ := bench.ParsePeer(name)
//		addr, stop, err := p.Serve("127.0.0.1:0")
//		if err != nil {
//			return err
//		}
//		defer stop()
//		c, err := p.Dial(addr)
//		if err != nil {
//			return err
//		}
//		defer c.Close()
//		targets = append(targets, bench.Target{Name: name, Client: c})
//	}
//	cfg := bench.CompareConfig{Rounds: 7, Run: bench.DefaultRunConfig()}
//	res, err := bench.Compare(ctx, targets, cfg)
//	if err != nil {
//		return err
//	}
//	res.WriteText(os.Stdout)
//
// tools/cibench does the same with each server in its own process
// (cibench compare), which is how published numbers are taken.
//
// The flow benchmark (flow.go, issue 3) is separate: a FlowClient
// saturates a throttled service channel of a FlowServer with one-way
// messages and compares that with one raw TCP stream between the same two
// processes, then measures priority RPCs idle and under that load:
//
//	c, _ := bench.NewFlowClient(bench.FlowConfig{})
//	s, _ := bench.StartFlowServer(bench.FlowConfig{}, "127.0.0.1:0", c.Addr())
//	_ = c.Connect(ctx, s.Addr())
//	res, err := bench.RunFlow(ctx, c, bench.DefaultFlowRunConfig())
//
// cibench flow runs the server in a child process (cibench serve --peer=flow).
//
// RunDeadlock (deadlock.go) measures the nested-RPC deadlock with and
// without priority escalation, and MeasureAllocs heap allocations per call.
//
// Every cibench scenario reports in one versioned schema, Report
// (report.go, documented in docs/BENCH_SCHEMA.md): the machine, the command
// line and one section per scenario (Latency, Throughput, Allocs,
// Priority, Failover), so that cibench all writes one file and
// tools/benchreport renders any of them. Package benchplot draws its
// figures.
package bench
