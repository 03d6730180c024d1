package bench

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// startFlow starts a flow client and server in this process, in the order
// two processes use: client node first, server told its address, then the
// client told the server's.
func startFlow(t *testing.T, cfg FlowConfig) *FlowClient {
	t.Helper()
	c, err := NewFlowClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartFlowServer(cfg, "127.0.0.1:0", c.Addr())
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("client close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("server close: %v", err)
		}
	})
	if err := c.Connect(context.Background(), s.Addr()); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRunFlow runs the whole scenario small and checks that every phase
// moved bytes, that the server counted exactly what was sent (the syncs
// fail the run otherwise) and that the report holds together. No timing
// is asserted: this is a test, not a benchmark.
func TestRunFlow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		window  int
		size    int
		control bool
	}{
		{"messages under window", 16 << 10, 4 << 10, true},
		// A message larger than the whole window must still get through.
		{"message over window", 8 << 10, 20 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startFlow(t, FlowConfig{Window: tc.window, Pair: Pair{EventLoops: 1}})
			cfg := DefaultFlowRunConfig()
			cfg.Rounds, cfg.Duration, cfg.Warmup = 2, 30*time.Millisecond, 5*time.Millisecond
			cfg.Size, cfg.Senders, cfg.Control = tc.size, 3, tc.control
			var phases []string
			cfg.Progress = func(round int, phase string) { phases = append(phases, phase) }
			res, err := RunFlow(context.Background(), c, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.PerRound) != 2 || len(phases) != 2*len(cfg.phases()) || res.Window != tc.window {
				t.Fatalf("rounds %d, phases %v, window %d", len(res.PerRound), phases, res.Window)
			}
			for _, r := range res.PerRound {
				for name, b := range map[string]BulkResult{"raw": r.Raw, "ics": r.ICS, "loaded": r.LoadedBulk} {
					if b.Bytes <= 0 || b.Bytes != b.Messages*int64(tc.size) || b.MBPerSec <= 0 {
						t.Errorf("round %d %s: %+v", r.Round, name, b)
					}
				}
				if r.Idle.Count == 0 || r.Loaded.Count == 0 || r.BulkRatio <= 0 || r.P99Ratio <= 0 {
					t.Errorf("round %d: %+v", r.Round, r)
				}
				if tc.control != (r.RawLoaded != nil) || tc.control && (r.RawLoaded.Count == 0 || r.RawLoadedBulk.Bytes <= 0) {
					t.Errorf("round %d control phase: %+v %+v", r.Round, r.RawLoaded, r.RawLoadedBulk)
				}
			}
			// The order rotates: round 2 starts where round 1's second phase was.
			if o := res.PerRound; o[1].Order[0] != o[0].Order[1] {
				t.Errorf("orders %v then %v", o[0].Order, o[1].Order)
			}
			if want := res.PerRound[0].Idle.Count + res.PerRound[1].Idle.Count; res.IdleAll.Count != want {
				t.Errorf("idle probes merged %d, want %d", res.IdleAll.Count, want)
			}

			js, err := json.Marshal(res)
			if err != nil {
				t.Fatal(err)
			}
			var back FlowResult
			if err := json.Unmarshal(js, &back); err != nil || back.ICSMBPerSec != res.ICSMBPerSec || back.LoadedP99 != res.LoadedP99 {
				t.Errorf("JSON round trip: %v %+v", err, back)
			}
			var text strings.Builder
			if err := res.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"raw MB/s", "ICS/raw", "p99 ratio", "per round"} {
				if !strings.Contains(text.String(), want) {
					t.Errorf("text lacks %q:\n%s", want, text.String())
				}
			}
		})
	}
}

// TestFlowSyncCounts checks that a sync reports exactly what was sent, and
// that a count that can never be reached is an error, not a hang.
func TestFlowSyncCounts(t *testing.T) {
	c := startFlow(t, FlowConfig{Pair: Pair{EventLoops: 1}})
	ctx := context.Background()
	st := bulkStop{}
	st.stop.Store(true) // no messages: the syncs alone
	if _, err := c.icsBulk(ctx, 100, 1, &st, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.rawBulk(100, &st, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.n.Send(ctx, c.server, flowSinkMethod, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	c.sent.Add(1000)
	got, err := c.icsSync(ctx)
	if err != nil || got.bytes != 1000 {
		t.Fatalf("sync after 1000 bytes: %+v, %v", got, err)
	}

	// A client that claims more than it sent: the server must not wait
	// forever, and the caller's deadline bounds the call.
	c.sent.Add(1)
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.icsSync(tctx); err == nil {
		t.Fatal("sync for bytes never sent succeeded")
	}
	// The waiting handler holds the server until its own bound; closing the
	// server node (in Cleanup) cancels it.
	c.rawSent++
	if _, err := c.rawSync(); !errors.Is(err, ErrFlowCount) {
		t.Fatalf("raw sync with a wrong count: %v", err)
	}
}

func TestFlowRunConfigValidate(t *testing.T) {
	for _, mod := range []func(*FlowRunConfig){
		func(c *FlowRunConfig) { c.Rounds = 0 },
		func(c *FlowRunConfig) { c.Duration = 0 },
		func(c *FlowRunConfig) { c.Warmup = -1 },
		func(c *FlowRunConfig) { c.Size = 0 },
		func(c *FlowRunConfig) { c.Senders = 0 },
		func(c *FlowRunConfig) { c.ProbeSize = 3 },
		func(c *FlowRunConfig) { c.ProbePriority = 0 },
		func(c *FlowRunConfig) { c.ProbePriority = 5 },
	} {
		cfg := DefaultFlowRunConfig()
		mod(&cfg)
		if err := cfg.validate(); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	cfg := DefaultFlowRunConfig()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
}

// TestSeriesValue reads one series out of a scrape, not a prefix of it.
func TestSeriesValue(t *testing.T) {
	scrape := "# HELP x_total X.\n# TYPE x_total counter\n" +
		"x_total{node=\"1\",peer=\"22\"} 7\nx_total{node=\"1\",peer=\"2\"} 5\n"
	if v := seriesValue(scrape, `x_total{node="1",peer="2"}`); v != 5 {
		t.Fatalf("got %v, want 5", v)
	}
	if v := seriesValue(scrape, `x_total{node="1",peer="3"}`); v != 0 {
		t.Fatalf("absent series: got %v", v)
	}
}

// TestBulkStopCountsFromBegin: a phase's sending time starts when sending
// does, not when the phase was planned; the sync in between once took the
// whole of a short phase under the race detector, and TestRunFlow saw a
// bulk phase move 0 bytes.
func TestBulkStopCountsFromBegin(t *testing.T) {
	st := bulkStop{length: time.Hour}
	planned := time.Now()
	if st.done() {
		t.Fatal("done before begin with a length: it must wait for begin")
	}
	st.begin()
	if st.deadline.Before(planned.Add(time.Hour)) || st.done() {
		t.Fatalf("deadline %v, want an hour after begin", st.deadline)
	}
	st.stop.Store(true)
	if !st.done() {
		t.Fatal("stop ignored")
	}
}
