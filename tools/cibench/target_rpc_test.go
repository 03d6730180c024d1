package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/services/admin"
)

// startTargetCluster starts a real 2-node cinode cluster, built beside
// exe, for cibench to measure with --target, and stops it at the end.
func startTargetCluster(t *testing.T, exe string) *cinodeCluster {
	t.Helper()
	// findTool looks beside this (test) executable, then on PATH.
	t.Setenv("PATH", filepath.Dir(exe)+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("TMPDIR", t.TempDir())
	c, err := newCinodeCluster(clusterSpec{nodes: 2, profile: "lan-fast"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := c.close(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.startAll(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkLatencySummary: a latency summary of n calls (any number when n
// is 0) is positive and in order.
func checkLatencySummary(t *testing.T, what string, s bench.Summary, n int64) {
	t.Helper()
	if s.Count <= 0 || (n > 0 && s.Count != n) || s.P50 <= 0 || s.P50 > s.P99 || s.P99 > s.P999 || s.P999 > s.Max {
		t.Errorf("%s: %v (want %d calls)", what, s, n)
	}
}

// TestTarget runs compare, rpc and priority against a real 2-node cinode
// cluster through its admin endpoints, and checks that the ICS figures
// are there and sane and that the other peers are marked not measured,
// not zero. Correctness, not speed: tiny sizes.
func TestTarget(t *testing.T) {
	exe := buildWithCinode(t)
	c := startTargetCluster(t, exe)
	targets := "--target=" + c.admins[1] + "," + c.admins[2]

	t.Run("compare", func(t *testing.T) {
		stdout, stderr, code := runCibench(t, exe, nil, "compare", targets, "--rounds=2", "--calls=40", "--warmup=5", "--sizes=64,1024", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "compare")
		if tr := rep.Target; tr == nil || tr.From != 1 || tr.To != 2 || tr.Cluster != "cibench" || !slices.Equal(tr.Endpoints, []string{c.admins[1], c.admins[2]}) {
			t.Fatalf("target %+v", rep.Target)
		}
		if len(rep.Latency) != 2 {
			t.Fatalf("%d comparisons, want 2", len(rep.Latency))
		}
		for i, cmp := range rep.Latency {
			if cmp.ReqSize != []int{64, 1024}[i] || cmp.RespSize != cmp.ReqSize || len(cmp.Peers) != 1 || len(cmp.PerRound) != 2 ||
				!strings.Contains(cmp.Env.Servers, "node 2") {
				t.Fatalf("comparison %d: %+v", i, cmp)
			}
			p := cmp.Peers[0]
			checkLatencySummary(t, "ics, all rounds", p.All, 80)
			if p.Peer != "ics" || p.P50 <= 0 || p.P50 > p.P99 || p.P99 > p.Max || p.CallsPerSec <= 0 || len(p.CDF) == 0 {
				t.Errorf("size %d: %+v", cmp.ReqSize, p)
			}
			for _, r := range cmp.PerRound {
				checkLatencySummary(t, "a round", r.Results[0].Latency, 40)
			}
			var nm []string
			for _, n := range cmp.NotMeasured {
				nm = append(nm, n.What)
				if n.Reason == "" {
					t.Errorf("%s not measured without a reason", n.What)
				}
			}
			if !slices.Equal(nm, []string{"raw", "ics@1", "netrpc", "grpc"}) {
				t.Errorf("not measured: %v", nm)
			}
		}
		// The JSON says nothing of the other peers but that they were not
		// measured: no zero figures.
		if strings.Contains(stdout, `"peer": "raw"`) || strings.Contains(stdout, `"peer": "grpc"`) {
			t.Error("a peer that was not measured has figures")
		}
	})

	t.Run("rpc-one-endpoint", func(t *testing.T) {
		// One endpoint: node 2 calls the other member that is UP.
		stdout, stderr, code := runCibench(t, exe, nil, "rpc", "--target="+c.admins[2], "--rounds=1", "--duration=100ms",
			"--concurrency=4", "--warmup=8", "--peers=ics,grpc", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "rpc")
		if rep.Target == nil || rep.Target.From != 2 || rep.Target.To != 1 || len(rep.Throughput) != 1 {
			t.Fatalf("%+v", rep)
		}
		cmp := rep.Throughput[0]
		checkLatencySummary(t, "rpc", cmp.Peers[0].All, 0)
		if cmp.Concurrency != 4 || cmp.Peers[0].CallsPerSec <= 0 || len(cmp.NotMeasured) != 1 || cmp.NotMeasured[0].What != "grpc" {
			t.Errorf("%+v", cmp)
		}
	})

	t.Run("priority", func(t *testing.T) {
		stdout, stderr, code := runCibench(t, exe, nil, "priority", targets, "--rounds=1", "--duration=100ms", "--warmup=0",
			"--size=4096", "--senders=2", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "priority")
		pr := rep.Priority
		if rep.Target == nil || pr == nil || pr.TargetFlow == nil || pr.Flow != nil || pr.Deadlock != nil {
			t.Fatalf("%+v", rep)
		}
		f := pr.TargetFlow
		r := f.PerRound[0]
		checkLatencySummary(t, "idle", r.Idle, 0)
		checkLatencySummary(t, "loaded", r.Loaded, 0)
		if len(f.PerRound) != 1 || len(r.Order) != 3 || r.Bulk.MBPerSec <= 0 || r.LoadedBulk.MBPerSec <= 0 || r.Bulk.Calls <= 0 ||
			f.P99Ratio <= 0 || f.ProbePriority != 1 || f.Size != 4096 || f.Senders != 2 || len(f.NotMeasured) != 3 {
			t.Errorf("%+v", f)
		}
	})

	t.Run("all", func(t *testing.T) {
		stdout, stderr, code := runCibench(t, exe, nil, "all", "--quick", targets, "--sizes=64", "--rounds=1", "--calls=20",
			"--duration=100ms", "--out=-")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "all")
		// Throughput: 256 callers, then --quick's sweep at 1 and 16.
		if rep.Target == nil || rep.Target.To != 2 || len(rep.Latency) != 1 || len(rep.Throughput) != 3 || rep.Priority == nil ||
			rep.Priority.TargetFlow == nil || rep.Allocs != nil || rep.Failover != nil ||
			rep.Membership == nil || rep.Membership.Mode != bench.ModeTarget {
			t.Fatalf("%+v", rep)
		}
		checkLatencySummary(t, "all: latency", rep.Latency[0].Peers[0].All, 20)
		for i, want := range []int{256, 1, 16} {
			if c := rep.Throughput[i]; c.Concurrency != want || c.ReqSize != 64 || c.Peers[0].Peer != "ics" || c.Peers[0].CallsPerSec <= 0 {
				t.Errorf("all: throughput %d: %+v, want 64 B with %d callers", i, c, want)
			}
		}
	})

	t.Run("text", func(t *testing.T) {
		stdout, stderr, code := runCibench(t, exe, nil, "compare", targets, "--rounds=1", "--calls=10", "--warmup=0", "--peers=ics,raw")
		if code != 0 || !strings.Contains(stdout, "not measured: raw (") || !strings.Contains(stdout, "called by node 1") {
			t.Errorf("exit %d\n%s\n%s", code, stdout, stderr)
		}
	})

	t.Run("help", func(t *testing.T) {
		for _, cmd := range []string{"compare", "rpc", "flow", "priority", "all"} {
			stdout, _, code := runCibench(t, exe, nil, cmd, "--help")
			if code != 0 || !strings.Contains(stdout, "cibench "+cmd+" --target=127.0.0.1:7180,127.0.0.2:7180") {
				t.Errorf("%s --help: exit %d, no --target example\n%s", cmd, code, stdout)
			}
		}
	})

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"compare", "--target=nohost"},
			{"compare", targets, "--pin"},
			{"compare", targets, "--peers=raw"},
			{"compare", targets, "--response-size=8"},
			{"compare", "--from=1"},
			{"rpc", targets, "--duration=2m"},
			{"compare", targets, "--from=2", "--to=2"},
			{"flow", targets, "--control"},
			{"flow", targets, "--window=65536"},
		} {
			if _, stderr, code := runCibench(t, exe, nil, args...); code != exitBadUsage || strings.Count(strings.TrimSpace(stderr), "\n") > 1 {
				t.Errorf("%v: exit %d, want %d with a one-line reason\n%s", args, code, exitBadUsage, stderr)
			}
		}
	})
}

// Every flow phase against a target is a node's /v1/ping run, the warm-up
// too, and a node refuses one over its bounds only once the run is under
// way, with a message about a request the user never wrote ("duration
// 1m0.2s"). So the flags that become a run's duration or callers are
// checked against those bounds before anything runs, naming the flag.
func TestFlowTargetBounds(t *testing.T) {
	base := func() flowFlags {
		return flowFlags{Rounds: 1, Duration: time.Second, Warmup: 500 * time.Millisecond, Size: 64 << 10, Senders: 4, ProbeSize: 64,
			rpcTargetFlags: rpcTargetFlags{targetFlags: targetFlags{Target: []string{"127.0.0.1:7180"}}}}
	}
	if err := func() error { c := base(); return c.Validate() }(); err != nil {
		t.Fatalf("flags within the bounds: %v", err)
	}
	for name, change := range map[string]func(*flowFlags){
		"--warmup":  func(c *flowFlags) { c.Warmup = admin.MaxPingDuration },
		"--senders": func(c *flowFlags) { c.Senders, c.Size = admin.MaxPingConcurrency+1, 64 },
	} {
		c := base()
		change(&c)
		err := c.Validate()
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s over a node's /v1/ping bound: %v, want a usage error naming it", name, err)
		}
	}
}

// compare and rpc against a target: the node refuses a run whose callers
// x size is over MaxPingInFlight, so that is a usage error naming both
// flags before any size is measured (else the run fails at the first size
// over it, after the smaller ones took their time).
func TestRPCTargetInFlight(t *testing.T) {
	target := rpcTargetFlags{targetFlags: targetFlags{Target: []string{"127.0.0.1:7180"}}}
	for _, tc := range []struct {
		sizes       []int
		concurrency []int
		ok          bool
	}{
		{[]int{64, 65536}, []int{1024}, true}, // 64 MiB: the bound itself
		{[]int{64, 1 << 20}, []int{256}, false},
		{[]int{64, 1 << 20}, []int{1, 16, 256}, false}, // the largest of a list counts
		{[]int{64, 65536}, []int{1, 1024}, true},
	} {
		p, err := newPlan("rpc", []string{"ics"}, tc.sizes, tc.concurrency, -1, 1, bench.RunConfig{Duration: time.Second}, outputFlags{})
		if err != nil {
			t.Fatal(err)
		}
		err = p.withTarget(target)
		var ue usageError
		switch {
		case tc.ok && err != nil:
			t.Errorf("sizes %v x %d callers: %v", tc.sizes, tc.concurrency, err)
		case !tc.ok && (!errors.As(err, &ue) || !strings.Contains(err.Error(), "--concurrency") || !strings.Contains(err.Error(), "--sizes")):
			t.Errorf("sizes %v x %d callers: %v, want a usage error naming --concurrency and --sizes", tc.sizes, tc.concurrency, err)
		}
	}
}
