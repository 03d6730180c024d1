package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// The tests run cibench as child processes; this one imports the engine,
// whose gnet starts an ants pool at init.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// buildCibench builds the command into a temporary directory: compare
// re-executes its own binary as the servers, which a test binary cannot be.
func buildCibench(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	exe := filepath.Join(t.TempDir(), "cibench")
	// go test puts $GOROOT/bin first on PATH, so this is the same toolchain.
	out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// buildWithCinode builds cibench, cinode and cluster into one temporary
// directory, as make build does into bin/: the scenarios that spawn a
// cinode cluster find the other two beside cibench.
func buildWithCinode(t *testing.T) string {
	t.Helper()
	exe := buildCibench(t)
	dir := filepath.Dir(exe)
	for _, tool := range []string{"cinode", "cluster"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, tool), "../"+tool).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", tool, err, out)
		}
	}
	return exe
}

// runCibench runs the binary with args and extra environment and returns
// stdout, stderr and the exit code.
func runCibench(t *testing.T, exe string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
		return "", "", -1
	}
}

// readReport parses a --json output as the shared result schema and
// checks the fields every scenario fills.
func readReport(t *testing.T, stdout, scenario string) *bench.Report {
	t.Helper()
	rep, err := bench.ReadReport(strings.NewReader(stdout))
	if err != nil {
		t.Fatalf("output is not a result: %v\n%s", err, stdout)
	}
	m := rep.Machine
	if rep.Scenario != scenario || len(rep.Command) < 2 || rep.Command[1] != scenario || rep.Started.IsZero() ||
		rep.Finished.Before(rep.Started) || m.GoVersion == "" || m.Cores < 1 || m.GOMAXPROCS < 1 {
		t.Errorf("report header: scenario %q command %q started %v finished %v machine %+v",
			rep.Scenario, rep.Command, rep.Started, rep.Finished, m)
	}
	return rep
}

// checkComparisons checks one comparison per size, each with every peer
// and calls recorded (exactly calls of them when calls > 0).
func checkComparisons(t *testing.T, what string, cs []*bench.Comparison, peers []string, sizes []int, calls int64) {
	t.Helper()
	if len(cs) != len(sizes) {
		t.Fatalf("%s: %d comparisons, want one per size %v", what, len(cs), sizes)
	}
	for i, c := range cs {
		if c.ReqSize != sizes[i] || c.RespSize != sizes[i] || c.Env.Servers != "child processes" {
			t.Errorf("%s %d: sizes %d/%d env %+v", what, i, c.ReqSize, c.RespSize, c.Env)
		}
		var got []string
		for _, p := range c.Peers {
			got = append(got, p.Peer)
			if (calls > 0 && p.All.Count != calls) || p.All.Count == 0 || p.P999 == 0 || p.Max < p.P999 || len(p.CDF) == 0 {
				t.Errorf("%s %d, %s: %d calls (want %d), p99.9 %v max %v, %d CDF points", what, sizes[i], p.Peer,
					p.All.Count, calls, p.P999, p.Max, len(p.CDF))
			}
			// A mode's figures exactly when a round was in it; mixed
			// rounds (raw TCP changed mode during one) are in neither.
			if n := c.Modes; n == nil || (p.Fast != nil) != (n.Fast > 0) || (p.Slow != nil) != (n.Slow > 0) {
				t.Errorf("%s %d, %s: mode split fast %+v slow %+v, rounds by mode %+v", what, sizes[i], p.Peer, p.Fast, p.Slow, n)
			}
		}
		if !slices.Equal(got, peers) {
			t.Errorf("%s %d: peers %v, want %v", what, sizes[i], got, peers)
		}
		if r := c.PerRound[0]; !slices.Contains([]string{bench.ModeFast, bench.ModeSlow, bench.ModeMixed}, r.Mode) ||
			r.BracketBeforeP50 <= 0 || r.BracketAfterP50 <= 0 || c.BracketCalls < 1 {
			t.Errorf("%s %d: round mode %q, brackets %v and %v of %d calls", what, sizes[i], r.Mode, r.BracketBeforeP50,
				r.BracketAfterP50, c.BracketCalls)
		}
		if n := c.Modes; n != nil && n.Fast+n.Slow+n.Mixed != c.Rounds {
			t.Errorf("%s %d: rounds by mode %+v, %d rounds", what, sizes[i], n, c.Rounds)
		}
	}
}

func TestCibench(t *testing.T) {
	exe := buildWithCinode(t) // all spawns cinode clusters

	t.Run("compare", func(t *testing.T) {
		peers := []string{"raw", "netrpc", "ics"}
		// CI_CALLS stands in for --calls, to check the environment is read.
		stdout, stderr, code := runCibench(t, exe, []string{"CI_CALLS=200"},
			"compare", "--peers="+strings.Join(peers, ","), "--sizes=64,4096", "--rounds=1", "--warmup=20", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "compare")
		checkComparisons(t, "latency", rep.Latency, peers, []int{64, 4096}, 200)
		if rep.Throughput != nil || rep.Priority != nil || rep.Latency[0].Calls != 200 {
			t.Errorf("sections that did not run, or calls %d", rep.Latency[0].Calls)
		}
	})

	t.Run("compare text", func(t *testing.T) {
		// Both read modes, as their own peers, in one run.
		stdout, stderr, code := runCibench(t, exe, nil,
			"compare", "--peers=raw,ics-gnet,ics-netpoll", "--sizes=64", "--rounds=1", "--calls=100", "--warmup=10")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		for _, want := range []string{"p99.9/raw", "by raw TCP's mode", "raw bracket", "ics-gnet", "ics-netpoll"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("no %q in\n%s", want, stdout)
			}
		}
	})

	t.Run("rpc", func(t *testing.T) {
		peers := []string{"raw", "ics", "grpc"}
		stdout, stderr, code := runCibench(t, exe, nil, "rpc", "--peers="+strings.Join(peers, ","), "--sizes=64,65536",
			"--concurrency=8", "--duration=100ms", "--rounds=1", "--warmup=20", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "rpc")
		checkComparisons(t, "throughput", rep.Throughput, peers, []int{64, 65536}, 0)
		if rep.Latency != nil || rep.Throughput[0].Concurrency != 8 {
			t.Errorf("latency section present or concurrency %d", rep.Throughput[0].Concurrency)
		}
	})

	t.Run("rpc concurrency sweep", func(t *testing.T) {
		// Every size at every concurrency, sizes outermost: one
		// comparison per (size, callers), each with every peer.
		peers := []string{"raw", "ics"}
		stdout, stderr, code := runCibench(t, exe, []string{"CI_CONCURRENCY=1,4,16"}, "rpc", "--peers="+strings.Join(peers, ","),
			"--sizes=64,4096", "--duration=50ms", "--rounds=1", "--warmup=10", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "rpc")
		checkComparisons(t, "throughput", rep.Throughput, peers, []int{64, 64, 64, 4096, 4096, 4096}, 0)
		for i, c := range rep.Throughput {
			if want := []int{1, 4, 16}[i%3]; c.Concurrency != want || rep.ThroughputAt(c.ReqSize, want) != c {
				t.Errorf("comparison %d: %s with %d callers, want %d", i, bench.SizeString(c.ReqSize), c.Concurrency, want)
			}
			for _, p := range c.Peers {
				if p.CallsPerSec <= 0 {
					t.Errorf("%s, %d callers, %s: %.0f calls/s", bench.SizeString(c.ReqSize), c.Concurrency, p.Peer, p.CallsPerSec)
				}
			}
		}
		// The text form heads each comparison with its size and callers.
		stdout, stderr, code = runCibench(t, exe, nil, "rpc", "--peers=raw,ics", "--concurrency=1,4", "--duration=50ms",
			"--rounds=1", "--warmup=10")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		for _, want := range []string{"cibench rpc: raw, ics; 64 B, 1 caller\n", "cibench rpc: raw, ics; 64 B, 4 callers\n"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("no %q in\n%s", want, stdout)
			}
		}
	})

	t.Run("priority", func(t *testing.T) {
		stdout, stderr, code := runCibench(t, exe, nil, "priority", "--rounds=1", "--duration=100ms", "--warmup=0s",
			"--size=4096", "--trials=1", "--deadline=1s", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "priority")
		pr := rep.Priority
		if pr == nil || pr.Flow == nil || pr.Deadlock == nil {
			t.Fatalf("priority section %+v", pr)
		}
		if f := pr.Flow; f.IdleP99 == 0 || f.LoadedP99 == 0 || f.RawLoadedP99 == 0 || f.RawLoadedP99Ratio == 0 {
			t.Errorf("flow without the control: %+v", f)
		}
		d := pr.Deadlock
		if d.Escalated.Outcome() != bench.OutcomeCompleted || d.Unescalated.Outcome() != bench.OutcomeStuck ||
			d.Unescalated.P50 < time.Second {
			t.Errorf("deadlock %+v", d)
		}
	})

	t.Run("all", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "all.json")
		peers := []string{"raw", "ics", "ics@1"}
		_, stderr, code := runCibench(t, exe, nil, "all", "--quick", "--out="+out, "--peers="+strings.Join(peers, ","),
			"--sizes=64", "--rounds=1", "--calls=100", "--duration=100ms", "--trials=1")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		rep := readReport(t, string(b), "all")
		if !rep.Quick {
			t.Error("not marked quick")
		}
		checkComparisons(t, "latency", rep.Latency, peers, []int{64}, 100)
		// 256 callers at each size, then --quick's sweep at 64 B.
		checkComparisons(t, "throughput", rep.Throughput, []string{"raw", "ics"}, []int{64, 64, 64}, 0)
		for i, want := range []int{256, 1, 16} {
			if c := rep.Throughput[i]; c.Concurrency != want {
				t.Errorf("throughput %d with %d callers, want %d", i, c.Concurrency, want)
			}
		}
		if len(rep.Allocs) != 2 || rep.Allocs[0].Peer != "raw" || rep.Allocs[1].Peer != "ics" || rep.Allocs[1].Calls != 100 {
			t.Errorf("allocs %+v", rep.Allocs)
		}
		if rep.Priority == nil || rep.Priority.Flow == nil || rep.Priority.Flow.RawLoadedP99 == 0 || rep.Priority.Deadlock == nil {
			t.Errorf("priority %+v", rep.Priority)
		}
		// --quick: two kills of keyseq's owner, one hang of a member, one
		// 3-node membership run.
		if f := rep.Failover; f == nil || len(f.Trials) != 2 || f.Fault != "kill" || f.Victim != "keysvc-owner" || f.Mode != bench.ModeSpawned || f.Trials[0].Victim != "key-service-owner" {
			t.Errorf("failover %+v", f)
		}
		if f := rep.FailoverHang; f == nil || len(f.Trials) != 1 || f.Trials[0].Fault != "sigstop" || f.Trials[0].Victim != "member" {
			t.Errorf("failover_hang %+v", f)
		}
		if m := rep.Membership; m == nil || len(m.Runs) != 1 || m.Runs[0].Nodes != 3 || m.Runs[0].Profile != "lan-fast" || m.Runs[0].Formation <= 0 ||
			m.Runs[0].PropagationAll < m.Runs[0].PropagationFirst || m.Runs[0].FDsMaster == 0 {
			t.Errorf("membership %+v", m)
		}
	})

	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"--help"}, {"compare", "--help"}, {"rpc", "--help"}, {"serve", "--help"},
			{"priority", "--help"}, {"all", "--help"}, {"membership", "--help"}} {
			stdout, _, code := runCibench(t, exe, nil, args...)
			if code != 0 || !strings.Contains(stdout, "Usage: cibench") {
				t.Errorf("%v: exit %d\n%s", args, code, stdout)
			}
			if len(args) == 2 && !strings.Contains(stdout, "Examples:") {
				t.Errorf("%v: no examples\n%s", args, stdout)
			}
		}
	})

	t.Run("bad usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"nonsense"},
			{"compare", "--peers=raw,carrier-pigeon"},
			{"compare", "--peers=raw,raw"},
			{"compare", "--sizes=2"},
			{"compare", "--sizes=64,64"},
			{"rpc", "--sizes="},
			{"rpc", "--concurrency=0"},
			{"rpc", "--concurrency=16,1,16"},
			{"rpc", "--concurrency=1,x"},
			{"membership", "--nodes=3,64:fast"},
			{"membership", "--nodes=3,3:lan-fast"},
			{"priority", "--trials=0"},
			{"all", "--sizes=3"},
			{"compare", "--rounds=0"},
			{"serve", "--peer=ics"}, // no --client-addr
		} {
			if _, stderr, code := runCibench(t, exe, nil, args...); code != exitBadUsage {
				t.Errorf("%v: exit %d, want %d\n%s", args, code, exitBadUsage, stderr)
			}
		}
	})
}
