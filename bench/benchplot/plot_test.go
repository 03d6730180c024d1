package benchplot

import (
	"bytes"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// bench imports the engine, whose gnet starts an ants pool at init.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// syntheticComparison is a comparison as Compare would return it, built
// from recorded histograms without running anything.
func syntheticComparison(size int, scale time.Duration) *bench.Comparison {
	c := &bench.Comparison{ReqSize: size, RespSize: size, Concurrency: 1}
	for i, name := range []string{"raw", "ics", "netrpc", "grpc"} {
		h := bench.NewHist()
		base := scale * time.Duration(i+1)
		for k := range 1000 {
			h.Record(base + time.Duration(k)*scale/100)
		}
		h.Record(50 * scale) // a tail
		c.Peers = append(c.Peers, bench.PeerStats{Peer: name, CDF: h.CDF(), CallsPerSec: 1e6 / float64(base/time.Microsecond)})
	}
	return c
}

// checkPNG decodes path as a PNG of the plots' size.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", path, err)
	}
	// vg's default PNG resolution is 96 dpi.
	if got := img.Bounds().Dx(); got != 7*96 {
		t.Errorf("%s is %d pixels wide, want %d", path, got, 7*96)
	}
}

func TestLatencyCDF(t *testing.T) {
	dir := t.TempDir()
	png := filepath.Join(dir, "cdf.png")
	if err := LatencyCDF(syntheticComparison(64, 20*time.Microsecond), png); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, png)
	svg := filepath.Join(dir, "cdf.svg")
	if err := LatencyCDF(syntheticComparison(64, 20*time.Microsecond), svg); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("<svg")) || !bytes.Contains(b, []byte("netrpc")) {
		t.Errorf("SVG lacks the svg element or a peer's legend:\n%.300s", b)
	}
	if err := LatencyCDF(&bench.Comparison{}, filepath.Join(dir, "empty.png")); !errors.Is(err, ErrNoData) {
		t.Errorf("empty comparison: %v, want ErrNoData", err)
	}
}

func TestThroughput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tput.png")
	cs := []*bench.Comparison{syntheticComparison(65536, 300*time.Microsecond), syntheticComparison(64, 10*time.Microsecond),
		syntheticComparison(4096, 40*time.Microsecond)}
	if err := Throughput(cs, path); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, path)
	if err := Throughput(nil, path); !errors.Is(err, ErrNoData) {
		t.Errorf("no runs: %v, want ErrNoData", err)
	}
}

// TestThroughputByConcurrency: one curve per peer over the concurrencies,
// in any order given; a single concurrency is no curve.
func TestThroughputByConcurrency(t *testing.T) {
	path := filepath.Join(t.TempDir(), "conc.png")
	var cs []*bench.Comparison
	for i, n := range []int{256, 1, 64, 16} {
		c := syntheticComparison(64, time.Duration(10*(i+1))*time.Microsecond)
		c.Concurrency = n
		cs = append(cs, c)
	}
	if err := ThroughputByConcurrency(cs, path); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, path)
	if dst := os.Getenv("BENCHPLOT_KEEP"); dst != "" { // to look at the figure by hand
		b, _ := os.ReadFile(path)
		_ = os.WriteFile(filepath.Join(dst, "concurrency.png"), b, 0o644)
	}
	if err := ThroughputByConcurrency(cs[:1], path); !errors.Is(err, ErrNoData) {
		t.Errorf("one concurrency: %v, want ErrNoData", err)
	}
}

// TestSILabel: rate ticks read 750k, not 750000.00.
func TestSILabel(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{0, "0"}, {250, "250"}, {2500, "2.5k"}, {250000, "250k"}, {750000.0000001, "750k"}, {1.25e6, "1.25M"},
		{2e9, "2G"}, {123456, "123k"}, {-5000, "-5k"}} {
		if got := siLabel(c.v); got != c.want {
			t.Errorf("siLabel(%v) = %q, want %q", c.v, got, c.want)
		}
	}
	for _, tk := range (siTicks{}).Ticks(0, 750000) {
		if tk.Label != "" && (strings.Contains(tk.Label, ".00") || len(tk.Label) > 5) {
			t.Errorf("tick %v labelled %q", tk.Value, tk.Label)
		}
	}
}

// TestFailover plots synthetic trials: cibench failover does not exist yet
// (it needs CLMS), but its section of the schema does.
func TestFailover(t *testing.T) {
	var f bench.FailoverResult
	f.Nodes, f.Profile, f.TargetP99 = 5, "fast-lan", 150*time.Millisecond
	for i := range 20 {
		j := time.Duration(i) * time.Millisecond
		phases := []bench.FailoverPhase{
			{Name: bench.FailoverDetected, At: 30*time.Millisecond + j},
			{Name: bench.FailoverNodeDown, At: 45*time.Millisecond + j},
			{Name: bench.FailoverKeyReady, At: 90*time.Millisecond + 2*j},
		}
		if i%2 == 0 { // the master was the victim
			phases = append(phases, bench.FailoverPhase{Name: bench.FailoverMaster, At: 60*time.Millisecond + j})
		}
		f.Trials = append(f.Trials, bench.FailoverTrial{Trial: i + 1, Fault: "sigkill", Victim: "master", Phases: phases})
	}
	f.Phases = bench.SummarizeFailover(f.Trials)
	if len(f.Phases) != 4 || f.Phases[2].Name != bench.FailoverMaster || f.Phases[2].Trials != 10 {
		t.Fatalf("summary %+v", f.Phases)
	}
	if s := f.Phases[3]; s.P50 != 108*time.Millisecond || s.P99 != 128*time.Millisecond || s.Max != 128*time.Millisecond {
		t.Errorf("key-service-ready: %+v, want p50 108ms (10th of 20 by nearest rank), p99 and max 128ms", s)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "failover.png")
	if err := Failover(&f, path); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, path)
	if dst := os.Getenv("BENCHPLOT_KEEP"); dst != "" { // to look at the figures by hand
		for _, name := range []string{"failover.png"} {
			b, _ := os.ReadFile(filepath.Join(dir, name))
			_ = os.WriteFile(filepath.Join(dst, name), b, 0o644)
		}
	}
	if err := Failover(&bench.FailoverResult{}, path); err == nil || !strings.Contains(err.Error(), "no failover trials") {
		t.Errorf("no trials: %v", err)
	}
}

// TestNinesScale: each nine gets the same height, up to six.
func TestNinesScale(t *testing.T) {
	for _, c := range []struct{ f, want float64 }{{0, 0}, {0.9, 1.0 / 6}, {0.99, 2.0 / 6}, {0.999, 3.0 / 6}, {1, 1}} {
		got := ninesScale{}.Normalize(0, maxFraction, c.f)
		if d := got - c.want; d > 1e-9 || d < -1e-9 {
			t.Errorf("Normalize(%v) = %v, want %v", c.f, got, c.want)
		}
	}
}
