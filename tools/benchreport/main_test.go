package main

import (
	"bytes"
	"flag"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// bench imports the engine, whose gnet starts an ants pool at init.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

var update = flag.Bool("update", false, "rewrite testdata/BENCHMARKS.golden.md from the generator's output")

// testdata/result.json is a real "cibench all --quick" run on the team's
// 2-CPU VM (2026-12-01), with its failover, failover_hang and membership
// sections from real runs of cibench failover (3 kills of keyseq's owner;
// 2 stops of a member) and cibench membership (3 and 16 nodes, lan-fast)
// on the same VM, merged in by hand (the --quick run predates them). For
// schema version 2, the 64 B sweep at 1 and 16 callers of a later --quick
// run (its raw-split peer dropped) and a 64-node run with the default
// profile (cibench membership --nodes=64:default, 22:40 UTC) were merged
// in the same way.
func readFixture(t *testing.T) *bench.Report {
	t.Helper()
	f, err := os.Open("testdata/result.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := bench.ReadReport(f)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestGolden: the fixed report renders as the golden file, and every plot
// it links is a PNG.
func TestGolden(t *testing.T) {
	rep := readFixture(t)
	dir := t.TempDir()
	md, err := Generate(rep, "", dir, "docs/bench")
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/BENCHMARKS.golden.md"
	if *update {
		if err := os.WriteFile(golden, []byte(md), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if md != string(want) {
		t.Errorf("output differs from %s (go test -run TestGolden -update to accept, after reading the diff):\n%s", golden, firstDiff(md, string(want)))
	}
	for _, name := range []string{"latency-64.png", "latency-4096.png", "throughput.png", "throughput-concurrency.png", "failover.png"} {
		if !strings.Contains(md, "(docs/bench/"+name+")") {
			t.Errorf("the report does not link %s", name)
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(b)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// hasLines fails t for every line of want that md lacks.
func hasLines(t *testing.T, md string, want []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(md, w) {
			t.Errorf("no line\n%s\nin\n%s", w, md)
		}
	}
}

// firstDiff shows the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n got: " + gl + "\nwant: " + wl
		}
	}
	return ""
}

// TestHeadlineRows checks the headline's verdicts against the fixture's
// numbers, computed here independently of the golden file.
func TestHeadlineRows(t *testing.T) {
	rep := readFixture(t)
	md, err := Generate(rep, "", t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	hasLines(t, md, []string{
		// ICS's per-round p50 ratios to raw are 1.83 and 1.95: median 1.89, 45% over 1.3.
		"| ICS p50 ≤ 1.3× raw TCP | 43.3 µs against 22.9 µs | 1.89× | ≤ 1.3× | **missed** by 45% |",
		// Both rounds were fast-mode rounds (raw p50 under 30 µs); the worst
		// was 1.95, 50% over. The fixture predates the brackets, and says so.
		"| … in every fast-mode round (raw p50 < 30.0 µs in its own run, no brackets: a mode change mid-round is not caught; worst of 2) | median 1.89× | 1.95× | ≤ 1.3× | **missed** by 50% |",
		// 2 rounds x 500 calls, none over 5 ms, but far fewer than 100,000.
		"| no ICS call slower than 5.00 ms in 100,000 | 0 of 1000 calls | – | 0 | met (only 1000 calls: not conclusive) |",
		"| 0 allocations per RPC in steady state | 0 per call | – | 0 | met |",
		// Failover, 3 kills: detected at 25.89, 107.17 and 109.70 ms (the
		// owner was also the master twice: a raft election first), so the
		// nearest-rank p99 is the worst trial, 109.70 ms, over 100 ms.
		"| crash detection p99 < 100.00 ms (lan-fast, SIGKILL) | p99 109.70 ms (p50 107.17 ms) over 3 trials | 1.10× | ≤ 1.0× | **missed** by 10% |",
		// 2 stops: detected at 336.78 and 343.77 ms.
		"| hang detection p99 < 500.00 ms (lan-fast, SIGSTOP) | p99 343.77 ms (p50 336.78 ms) over 2 trials | 0.69× | ≤ 1.0× | met (31% below) |",
		"| key-service failover p99 < 150.00 ms (lan-fast) | p99 129.99 ms (p50 126.22 ms) over 3 trials | 0.87× | ≤ 1.0× | met (13% below) |",
		// 129.99 / 109.70 = 1.18.
		"| key-service failover p99 ≤ 1.5× crash detection p99 | 129.99 ms against 109.70 ms | 1.18× | ≤ 1.5× | met (21% below) |",
		"| 16 | lan-fast | ", // the membership table's larger cluster
		"| 64 | default | 2.52 s | ",
		"64 nodes ran with the default profile (3 s lease) rather than lan-fast (300 ms)",
		"> **Quick run**",
		// The headline and the per-size table stay on 256 callers though the
		// sweep's 1- and 16-caller runs are in the same list.
		"## Throughput, 256 concurrent callers",
		"| calls/s, 256 callers | " + rates(t, rep, 64, 256) + " |",
		// The sweep: 1 and 16 callers, then the 256-caller run, in order.
		"## Throughput by concurrency, 64 B",
		"| 1 | 1 × 300ms | " + rates(t, rep, 64, 1) + " | ",
		"| 16 | 1 × 300ms | " + rates(t, rep, 64, 16) + " | ",
		"| 256 | 2 × 300ms | " + rates(t, rep, 64, 256) + " | ",
	})
	if strings.Count(md, "| 64 B | ICS |") != 1 {
		t.Error("the 256-caller table has more than one 64 B ICS row: the sweep leaked into it")
	}
}

// rates is the fixture's calls/s of raw TCP, ICS, net/rpc and gRPC-go at
// size and concurrency, as the tables print them.
func rates(t *testing.T, rep *bench.Report, size, concurrency int) string {
	t.Helper()
	c := rep.ThroughputAt(size, concurrency)
	if c == nil {
		t.Fatalf("the fixture has no %d B run with %d callers", size, concurrency)
	}
	var cells []string
	for _, p := range []string{"raw", "ics", "netrpc", "grpc"} {
		cells = append(cells, fmt.Sprintf("%.0f", peerStats(c, p).CallsPerSec))
	}
	return strings.Join(cells, " | ")
}

// TestVersion1 renders a version 1 report, as bench/results/latest.json was
// committed: one concurrency, no profile per membership run. The runs take
// the section's profile, and there is no sweep section nor a word about
// the default profile.
func TestVersion1(t *testing.T) {
	rep := readFixture(t)
	rep.Version = 1
	rep.Throughput = atConcurrency(rep.Throughput, 256)
	m := rep.Membership
	m.Runs = m.Runs[:2]
	for i := range m.Runs {
		m.Runs[i].Profile = ""
	}
	md, err := Generate(rep, "", t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	hasLines(t, md, []string{"| 3 | lan-fast | ", "| 16 | lan-fast | ", "## Throughput, 256 concurrent callers", "schema cibench-result version 1"})
	for _, not := range []string{"Throughput by concurrency", "default profile", "throughput-concurrency.png"} {
		if strings.Contains(md, not) {
			t.Errorf("a version 1 report renders %q", not)
		}
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		ratio, target float64
		atLeast       bool
		want          string
	}{
		{1.0, 1.3, false, "met (23% below)"},
		{1.3, 1.3, false, "met (0% below)"},
		{2.6, 1.3, false, "**missed** by 100%"},
		{3.3, 3, true, "met (10% above)"},
		{1.5, 3, true, "**missed** by 50%"},
	} {
		if got := verdict(c.ratio, c.target, c.atLeast); got != c.want {
			t.Errorf("verdict(%v, %v, %v) = %q, want %q", c.ratio, c.target, c.atLeast, got, c.want)
		}
	}
}

// TestIntro: the hand-written introduction survives regeneration, the old
// generated part does not, and a file without one gets the default.
func TestIntro(t *testing.T) {
	rep := readFixture(t)
	old := "stray\n" + introStart + "\n# Mine\nhand-written\n" + introEnd + "\n## Headline\nold numbers\n"
	md, err := Generate(rep, old, t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(md, introStart+"\n# Mine\nhand-written\n"+introEnd+"\n") || strings.Contains(md, "old numbers") ||
		strings.Contains(md, "stray") {
		t.Errorf("intro not kept alone:\n%.300s", md)
	}
	if got := extractIntro("no markers"); got != defaultIntro {
		t.Errorf("default intro: %q", got)
	}
}

// TestRun drives the command: a good run writes the file and the plots,
// bad input fails with the right exit code and leaves the old file.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "BENCHMARKS.md")
	var stdout, stderr bytes.Buffer
	args := []string{"--in=testdata/result.json", "--out=" + out, "--plots=" + filepath.Join(dir, "docs", "bench")}
	if code := run(args, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("](docs/bench/throughput.png)")) {
		t.Errorf("plots not linked relative to the report:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "docs", "bench", "throughput.png")); err != nil {
		t.Error(err)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"rounds": 3}`), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := run([]string{"--in=" + bad, "--out=" + out}, &stdout, &stderr); code != exitFailed ||
		!strings.Contains(stderr.String(), "not a readable cibench result") {
		t.Errorf("not a result: exit %d, %s", code, stderr.String())
	}
	if after, _ := os.ReadFile(out); !bytes.Equal(after, b) {
		t.Error("a failed run changed the report")
	}
	if code := run([]string{"--out=" + out}, &stdout, &stderr); code != exitBadUsage {
		t.Errorf("no --in: exit %d, want %d", code, exitBadUsage)
	}
}

// TestMixedRounds renders a report classified with raw TCP's brackets:
// the fixture's 64 B comparison with round 1 fast throughout (brackets of
// 21 and 22 µs around raw TCP's 22.6) and round 2 mixed (the machine
// slowed down before its closing bracket, 48 µs). The fast-mode verdict is
// judged on round 1 alone and says that one round was left out.
func TestMixedRounds(t *testing.T) {
	rep := readFixture(t)
	c := comparison(rep.Latency, 64)
	c.BracketCalls = 500
	c.Modes = &bench.ModeCounts{Fast: 1, Mixed: 1}
	c.PerRound[0].BracketBeforeP50, c.PerRound[0].BracketAfterP50, c.PerRound[0].Mode = 21*time.Microsecond, 22*time.Microsecond, bench.ModeFast
	c.PerRound[1].BracketBeforeP50, c.PerRound[1].BracketAfterP50, c.PerRound[1].Mode = 22*time.Microsecond, 48*time.Microsecond, bench.ModeMixed
	for i := range c.Peers {
		r := c.PerRound[0].Results[i].P50Ratio // round 1's ratio is the fast mode's only one
		c.Peers[i].Fast = &bench.ModeStats{Rounds: 1, P50Ratio: r, P50RatioMax: r, P99Ratio: 1, P999Ratio: 1}
	}
	md, err := Generate(rep, "", t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	hasLines(t, md, []string{
		// Round 1: ICS 41.3 µs against raw 22.6 µs, 1.83×, 41% over 1.3.
		"| … in every fast-mode round (raw p50 < 30.0 µs before, in and after the round; worst of 1; 1 mixed round left out) | median 1.83× | 1.83× | ≤ 1.3× | **missed** by 41% |",
		"A round is fast when raw TCP's p50 was under 30.0 µs in a 500-call bracket just before it, in its own run and in a bracket just after it, slow when it was over at all three, and mixed otherwise: 1 fast, 0 slow and 1 mixed rounds here; mixed rounds are in neither column",
		"| ICS | 43.3 µs |", // the all-rounds median still holds both rounds
	})

	// Every round mixed: no fast-mode verdict, and the row says why.
	c.Modes = &bench.ModeCounts{Mixed: 2}
	c.PerRound[0].Mode = bench.ModeMixed
	for i := range c.Peers {
		c.Peers[i].Fast = nil
	}
	if md, err = Generate(rep, "", t.TempDir(), "p"); err != nil {
		t.Fatal(err)
	}
	hasLines(t, md, []string{"| … in every fast-mode round (raw p50 < 30.0 µs before, in and after the round; 2 mixed rounds left out) | no round was in raw TCP's fast mode | – | ≤ 1.3× | – |"})
}
