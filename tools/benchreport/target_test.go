package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/bench"
)

// targetFixture turns the fixture into what a run against a running
// cluster writes: ICS only in every comparison, the other peers listed as
// not measured, no allocations, failover or membership, and the flow
// phases as target_flow.
func targetFixture(t *testing.T) *bench.Report {
	rep := readFixture(t)
	rep.Target = &bench.TargetRun{Endpoints: []string{"127.0.0.1:7180", "127.0.0.2:7180"}, Cluster: "prod", From: 1, To: 2}
	for _, c := range append(slices.Clone(rep.Latency), rep.Throughput...) {
		c.NotMeasured = nil
		for _, p := range c.Peers {
			if p.Peer != "ics" {
				c.NotMeasured = append(c.NotMeasured, bench.NotMeasured{What: p.Peer, Reason: "needs a server process cibench spawns"})
			}
		}
		c.Peers = slices.DeleteFunc(c.Peers, func(p bench.PeerStats) bool { return p.Peer != "ics" })
		for i := range c.PerRound {
			c.PerRound[i].Results = slices.DeleteFunc(c.PerRound[i].Results, func(r bench.RoundResult) bool { return r.Peer != "ics" })
			c.PerRound[i].RawMode = ""
		}
		c.Baseline = "ics"
	}
	rep.Allocs, rep.Failover, rep.FailoverHang, rep.Membership = nil, nil, nil, nil
	tf := &bench.TargetFlowResult{Rounds: 1, Duration: time.Second, Size: 65536, Senders: 4, ProbeSize: 64, ProbePriority: 1,
		PerRound: []bench.TargetFlowRound{{Round: 1, Bulk: bench.TargetBulk{MBPerSec: 300}, LoadedBulk: bench.TargetBulk{MBPerSec: 250},
			Idle: bench.Summary{P50: 40 * time.Microsecond, P99: 80 * time.Microsecond}, Loaded: bench.Summary{P50: 60 * time.Microsecond, P99: 120 * time.Microsecond}}},
		NotMeasured: []bench.NotMeasured{{What: "raw bulk", Reason: "needs processes cibench spawns"}, {What: "deadlock", Reason: "in-process"}}}
	tf.Summarize(bench.NewHist(), bench.NewHist())
	rep.Priority = &bench.PriorityResult{TargetFlow: tf}
	return rep
}

// TestTargetRun: a report of a run against a running cluster renders, says
// where it ran, and claims no verdict for a goal whose other side was not
// measured: those say "not measured".
func TestTargetRun(t *testing.T) {
	md, err := Generate(targetFixture(t), "", t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	hasLines(t, md, []string{
		"> **Against a running cluster** (`--target` 127.0.0.1:7180, 127.0.0.2:7180, cluster \"prod\"): node 1 called node 2's ICS echo",
		"| ICS p50 ≤ 1.3× raw TCP | not measured in this run |",
		"| ICS p50 ≤ 0.5× gRPC-go | not measured in this run |",
		"| 256-caller throughput ≥ 3× gRPC-go | not measured in this run |",
		"| bulk on a throttled channel ≥ 0.8× one raw TCP stream | not measured in this run |",
		"| priority p99 loaded/idle ≤ the raw-TCP control's | not measured in this run |",
		"| 0 allocations per RPC in steady state | not measured in this run |",
		"| raw TCP | not measured: needs a server process cibench spawns |",
		"| under ICS bulk (250 MB/s; 300 MB/s alone) | 60.0 µs | 120.0 µs | 1.50 | ≤ 2.0×: met (25% below) |",
		"| deadlock | not measured: in-process |",
	})
	// Every goal row that names another peer or the control says it was
	// not measured rather than met or missed.
	for line := range strings.SplitSeq(md, "\n") {
		others := strings.Contains(line, "raw TCP") || strings.Contains(line, "gRPC-go") || strings.Contains(line, "net/rpc")
		if others && (strings.Contains(line, "met (") || strings.Contains(line, "missed")) {
			t.Errorf("a verdict against a peer that was not measured: %s", line)
		}
	}
}
