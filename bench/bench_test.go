package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// gnet (under the ICS engine) enrolls dialled sockets through a
		// process-wide ants pool, started at init, whose idle workers linger.
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
}

// basePeers are the peers that do not need the engine.
var basePeers = []string{"raw", "raw-split", "netrpc", "grpc"}

// startPeer serves and dials name in-process and stops both at test end.
func startPeer(t testing.TB, name string) Client {
	t.Helper()
	p, err := ParsePeer(name)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != name {
		t.Fatalf("ParsePeer(%q).Name() = %q", name, p.Name())
	}
	addr, stop, err := p.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatalf("%s: serve: %v", name, err)
	}
	c, err := p.Dial(addr)
	if err != nil {
		stop()
		t.Fatalf("%s: dial: %v", name, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("%s: client close: %v", name, err)
		}
		if err := stop(); err != nil {
			t.Errorf("%s: stop: %v", name, err)
		}
	})
	return c
}

// checkEcho makes calls of assorted sizes and checks every reply byte.
func checkEcho(t *testing.T, c Client) {
	t.Helper()
	sizes := []struct{ req, resp int }{
		{4, 0}, {4, 4}, {64, 64}, {5, 1000}, {1000, 5}, {64 << 10, 64 << 10}, {300 << 10, 17},
	}
	var buf []byte
	for _, s := range sizes {
		req, err := NewRequest(s.req, s.resp)
		if err != nil {
			t.Fatal(err)
		}
		buf, err = c.Call(req, buf[:0])
		if err != nil {
			t.Fatalf("call %d/%d: %v", s.req, s.resp, err)
		}
		if err := CheckReply(req, buf); err != nil {
			t.Fatalf("call %d/%d: %v", s.req, s.resp, err)
		}
	}
	// A reply appends to what resp already holds.
	req, _ := NewRequest(8, 8)
	out, err := c.Call(req, []byte("prefix"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, []byte("prefix")) || CheckReply(req, out[6:]) != nil {
		t.Fatalf("reply not appended to resp: %q", out)
	}
}

// checkConcurrent calls from several goroutines at once with distinct
// requests, so that a reply delivered to the wrong caller is caught.
func checkConcurrent(t *testing.T, c Client) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			req, _ := NewRequest(16+g, 32+g)
			var buf []byte
			for range 20 {
				var err error
				if buf, err = c.Call(req, buf[:0]); err == nil {
					err = CheckReply(req, buf)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPeers(t *testing.T) {
	for _, name := range basePeers {
		t.Run(name, func(t *testing.T) {
			c := startPeer(t, name)
			checkEcho(t, c)
			checkConcurrent(t, c)
		})
	}
}

func TestReply(t *testing.T) {
	req, err := NewRequest(6, 15)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Reply([]byte("x"), req)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("x"), append(append(append([]byte{}, req...), req...), req[:3]...)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("Reply = %x, want %x", got, want)
	}
	if _, err := Reply(nil, []byte{1, 2}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("short request: %v", err)
	}
	if _, err := Reply(nil, []byte{0xff, 0xff, 0xff, 0xff}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("oversized response: %v", err)
	}
	if _, err := NewRequest(3, 3); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("3-byte request: %v", err)
	}
}

func TestParsePeer(t *testing.T) {
	for _, bad := range []string{"", "tcp", "icsx", "ics-eventloop-handle", "raw2", "raw-splitx", "ics-netpoll-loops1", "ics-netpoll-gnet", "ics-gnet-handle"} {
		if _, err := ParsePeer(bad); !errors.Is(err, ErrUnknown) {
			t.Errorf("ParsePeer(%q) = %v, want ErrUnknown", bad, err)
		}
	}
	for _, name := range append(PeerNames(), "ics-loops2", "ics-handle-eventloop-loops1") {
		p, err := ParsePeer(name)
		if err != nil || p.Name() != name {
			t.Errorf("ParsePeer(%q) = %v, %v; want a peer of that name", name, p, err)
		}
	}
}

func TestHist(t *testing.T) {
	h, o := NewHist(), NewHist()
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	o.Record(time.Minute) // clamped to 10s and counted
	h.Merge(o)
	s := h.Summary()
	near := func(name string, got, want time.Duration) {
		t.Helper()
		if d := got - want; d < -want/500 || d > want/500 { // 3 significant digits
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if s.Count != 1001 || s.Saturated != 1 {
		t.Errorf("count %d saturated %d", s.Count, s.Saturated)
	}
	near("p50", s.P50, 501*time.Microsecond)
	near("p90", s.P90, 901*time.Microsecond)
	near("p99", s.P99, 991*time.Microsecond)
	near("max", s.Max, 10*time.Second)
	// Loopback latencies keep their precision (see histLowest).
	h2 := NewHist()
	h2.Record(20123 * time.Nanosecond)
	near("20µs", h2.Quantile(50), 20123*time.Nanosecond)
}

func TestRun(t *testing.T) {
	c := startPeer(t, "raw")
	cfg := DefaultRunConfig()
	cfg.Calls, cfg.Warmup, cfg.Concurrency = 300, 10, 4
	var progress atomic.Int64
	cfg.Progress = func(n int) { progress.Add(int64(n)) }
	res, err := Run(context.Background(), c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls != 300 || res.Latency.Count != 300 || res.CallsPerSec <= 0 {
		t.Fatalf("result %+v", res)
	}
	if got := progress.Load(); got != 300 {
		t.Fatalf("progress reported %d calls, want 300", got)
	}

	// A duration-bound run stops by itself.
	cfg.Duration, cfg.Progress = 20*time.Millisecond, nil
	if res, err = Run(context.Background(), c, cfg); err != nil || res.Calls == 0 {
		t.Fatalf("duration run: %+v, %v", res, err)
	}

	// A cancelled context ends the run with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, c, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
}

// failClient fails its nth call.
type failClient struct {
	Client
	mu sync.Mutex
	n  int
}

func (f *failClient) Call(req, resp []byte) ([]byte, error) {
	f.mu.Lock()
	f.n--
	fail := f.n == 0
	f.mu.Unlock()
	if fail {
		return resp, errors.New("injected")
	}
	return f.Client.Call(req, resp)
}

func TestRunFails(t *testing.T) {
	c := &failClient{Client: startPeer(t, "raw"), n: 50}
	cfg := DefaultRunConfig()
	cfg.Calls, cfg.Warmup, cfg.Concurrency = 200, 0, 3
	if _, err := Run(context.Background(), c, cfg); err == nil || err.Error() != "injected" {
		t.Fatalf("Run = %v, want the injected error", err)
	}
}

// countingClient counts the calls made through it.
type countingClient struct {
	Client
	n atomic.Int64
}

func (c *countingClient) Call(req, resp []byte) ([]byte, error) {
	c.n.Add(1)
	return c.Client.Call(req, resp)
}

func TestCompare(t *testing.T) {
	raw := &countingClient{Client: startPeer(t, "raw")}
	targets := []Target{
		{Name: "netrpc", Client: startPeer(t, "netrpc")},
		{Name: "raw", Client: raw},
	}
	cfg := CompareConfig{Rounds: 3, Run: DefaultRunConfig()}
	cfg.Run.Calls, cfg.Run.Warmup = 50, 5
	c, err := Compare(context.Background(), targets, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Baseline != "raw" || len(c.Peers) != 2 || len(c.PerRound) != 3 {
		t.Fatalf("comparison %+v", c)
	}
	for r, round := range c.PerRound {
		// The order rotates: netrpc leads round 1 and 3, raw round 2.
		if want := targets[r%2].Name; round.Order[0] != want {
			t.Errorf("round %d order %v, want %s first", r+1, round.Order, want)
		}
		if raw := round.Results[1]; raw.P50Ratio != 1 || raw.P99Ratio != 1 || raw.RateRatio != 1 {
			t.Errorf("round %d: baseline ratios %+v", r+1, raw)
		}
		// Each round is classified from its brackets and raw TCP's run,
		// and a round's closing bracket is the next one's opening.
		if round.BracketBeforeP50 <= 0 || round.BracketAfterP50 <= 0 ||
			round.Mode != RoundMode(round.BracketBeforeP50, round.Results[1].Latency.P50, round.BracketAfterP50) {
			t.Errorf("round %d: mode %q from brackets %v, %v and raw %v", r+1, round.Mode, round.BracketBeforeP50,
				round.BracketAfterP50, round.Results[1].Latency.P50)
		}
		if r > 0 && round.BracketBeforeP50 != c.PerRound[r-1].BracketAfterP50 {
			t.Errorf("round %d opens with bracket %v, round %d closed with %v", r+1, round.BracketBeforeP50, r, c.PerRound[r-1].BracketAfterP50)
		}
	}
	if n := c.Modes; c.BracketCalls != 50 || n == nil || n.Fast+n.Slow+n.Mixed != 3 {
		t.Errorf("%d calls per bracket (want the run's 50), mode counts %+v", c.BracketCalls, n)
	}
	// The four brackets (5 warm-up and 50 timed calls each) went to raw
	// TCP's client but are in none of its figures: its merged histogram
	// holds the three rounds' 50 calls each.
	if got, want := raw.n.Load(), int64(3*(5+50)+4*(5+50)); got != want {
		t.Errorf("raw TCP's client made %d calls, want %d: 3 runs and 4 brackets", got, want)
	}
	if p := c.Peers[1]; p.Peer != "raw" || p.P50Ratio != 1 || p.All.Count != 150 {
		t.Errorf("raw stats %+v", p)
	}
	if p := c.Peers[0]; p.All.Count != 150 {
		t.Errorf("netrpc stats %+v", p)
	}

	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back Comparison
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back.Peers[0].P50 != c.Peers[0].P50 || back.Peers[0].Peer != "netrpc" {
		t.Errorf("JSON round trip: %+v", back.Peers[0])
	}

	var text strings.Builder
	if err := c.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"netrpc", "raw", "p50/raw", "per round", "raw bracket", "by raw TCP's mode"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, text.String())
		}
	}

	if _, err := Compare(context.Background(), targets, CompareConfig{Rounds: 1, Baseline: "grpc", Run: cfg.Run}); err == nil {
		t.Error("unknown baseline accepted")
	}

	// Without raw TCP: no brackets, no modes.
	c, err = Compare(context.Background(), targets[:1], CompareConfig{Rounds: 1, Run: cfg.Run})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.PerRound[0]; c.BracketCalls != 0 || c.Modes != nil || r.Mode != "" || r.BracketBeforeP50 != 0 || r.BracketAfterP50 != 0 {
		t.Errorf("without raw TCP: %d bracket calls, modes %+v, round %+v", c.BracketCalls, c.Modes, r)
	}
}

func TestBracketConfig(t *testing.T) {
	for _, c := range []struct {
		name          string
		run           RunConfig
		calls, warmup int
	}{
		{"a default latency run", RunConfig{Calls: 20000, Concurrency: 1, Warmup: 1000}, BracketCalls, bracketWarmup},
		{"a run shorter than a bracket", RunConfig{Calls: 200, Concurrency: 1, Warmup: 20}, 200, 20},
		{"no warm-up asked for", RunConfig{Calls: 20000, Concurrency: 1}, BracketCalls, 0},
		{"a timed run with many callers: a few calls each", RunConfig{Duration: time.Second, Concurrency: 256, Warmup: 5000}, 1024, bracketWarmup},
	} {
		b := bracketConfig(c.run)
		if b.Calls != c.calls || b.Warmup != c.warmup || b.Duration != 0 || b.Progress != nil || b.Concurrency != c.run.Concurrency {
			t.Errorf("%s: bracket %+v, want %d calls after %d", c.name, b, c.calls, c.warmup)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
