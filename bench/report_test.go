package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// round builds a Round from p50s, p99s and p99.9s in microseconds per peer,
// in the order of names.
func round(n int, names []string, p50, p99, p999 []int) Round {
	r := Round{Round: n, Order: names}
	for i, name := range names {
		r.Results = append(r.Results, RoundResult{Result: Result{Peer: name, CallsPerSec: float64(1000 * (i + 1)),
			Latency: Summary{P50: time.Duration(p50[i]) * time.Microsecond, P99: time.Duration(p99[i]) * time.Microsecond,
				P999: time.Duration(p999[i]) * time.Microsecond}}})
	}
	return r
}

// TestModeSplit: two fast rounds of five, where ICS is 1.6x raw, cannot
// hide behind the slow rounds' 0.8x: the median over all rounds is 0.8,
// the fast-mode median 1.6 and its worst round 1.7.
func TestModeSplit(t *testing.T) {
	names := []string{"raw", "ics"}
	rounds := []Round{
		round(1, names, []int{20, 32}, []int{100, 200}, []int{200, 400}), // fast: 1.6
		round(2, names, []int{50, 40}, []int{150, 150}, []int{300, 600}), // slow: 0.8
		round(3, names, []int{20, 34}, []int{100, 300}, []int{200, 200}), // fast: 1.7
		round(4, names, []int{50, 40}, []int{150, 150}, []int{300, 300}), // slow: 0.8
		round(5, names, []int{30, 24}, []int{150, 150}, []int{300, 300}), // slow (30 µs is not under 30): 0.8
	}
	peers := summarize(rounds, 0, nil)
	if got := []string{rounds[0].RawMode, rounds[1].RawMode, rounds[4].RawMode}; got[0] != ModeFast || got[1] != ModeSlow || got[2] != ModeSlow {
		t.Fatalf("modes %v", got)
	}
	ics := peers[1]
	if ics.P50Ratio != 0.8 {
		t.Errorf("p50 ratio over all rounds %v, want 0.8", ics.P50Ratio)
	}
	if ics.Fast == nil || ics.Fast.Rounds != 2 || !near(ics.Fast.P50Ratio, 1.65) || !near(ics.Fast.P50RatioMax, 1.7) ||
		!near(ics.Fast.P99Ratio, 2.5) || !near(ics.Fast.P999Ratio, 1.5) {
		t.Errorf("fast %+v, want 2 rounds, p50 1.65 (worst 1.7), p99 2.5, p99.9 1.5", ics.Fast)
	}
	if ics.Slow == nil || ics.Slow.Rounds != 3 || !near(ics.Slow.P50Ratio, 0.8) || !near(ics.Slow.P999Ratio, 1) {
		t.Errorf("slow %+v, want 3 rounds, p50 0.8, p99.9 1", ics.Slow)
	}
	if raw := peers[0]; raw.Fast.P50RatioMax != 1 || raw.P999 != 300*time.Microsecond {
		t.Errorf("raw %+v", raw)
	}
	if ics.RateRatio != 2 || ics.P999 != 300*time.Microsecond {
		t.Errorf("ics rate ratio %v p99.9 %v", ics.RateRatio, ics.P999)
	}

	// Without raw TCP there are no modes.
	noRaw := []Round{round(1, []string{"ics", "grpc"}, []int{20, 40}, []int{1, 1}, []int{1, 1})}
	if p := summarize(noRaw, 0, nil); noRaw[0].RawMode != "" || p[1].Fast != nil || p[1].Slow != nil || p[1].P50Ratio != 2 {
		t.Errorf("without raw: mode %q, %+v", noRaw[0].RawMode, p[1])
	}
}

func TestCountAbove(t *testing.T) {
	h := NewHist()
	for _, d := range []time.Duration{20 * time.Microsecond, 4900 * time.Microsecond, 5 * time.Millisecond,
		5100 * time.Microsecond, 12 * time.Millisecond, 20 * time.Second} {
		h.Record(d)
	}
	// 5.1 ms, 12 ms and the 20 s clamped to 10 s are above 5 ms; 5 ms itself is not.
	if got := h.CountAbove(SlowCallThreshold); got != 3 {
		t.Errorf("CountAbove(5ms) = %d, want 3", got)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// TestReportRoundTrip: a report survives JSON with its schema, machine and
// sections, and the JSON has the documented field names.
func TestReportRoundTrip(t *testing.T) {
	r := NewReport("all", []string{"cibench", "all", "--quick"})
	r.Quick = true
	h := NewHist()
	h.Record(20 * time.Microsecond)
	r.Latency = []*Comparison{{Rounds: 1, ReqSize: 64, RespSize: 64, Baseline: "raw",
		Peers: []PeerStats{{Peer: "raw", P50: 20 * time.Microsecond, CDF: h.CDF(), Fast: &ModeStats{Rounds: 1, P50Ratio: 1}}}}}
	r.Allocs = []AllocResult{{Peer: "ics", Calls: 10, AllocsPerCall: 0}}
	r.Priority = &PriorityResult{Deadlock: &DeadlockResult{Trials: 1, Escalated: DeadlockCase{Escalation: true, Completed: 1,
		Times: []time.Duration{time.Millisecond}}}}
	r.Failover = &FailoverResult{Nodes: 3, Trials: []FailoverTrial{{Trial: 1, Phases: []FailoverPhase{{Name: FailoverDetected, At: time.Second}}}}}
	r.Finish()
	if r.Machine.GoVersion == "" || r.Machine.Cores < 1 || r.Machine.CPUsUsable < 1 || r.Machine.GOMAXPROCS < 1 {
		t.Errorf("machine %+v", r.Machine)
	}
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b.Bytes(), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"schema", "version", "scenario", "quick", "command", "started", "finished", "machine",
		"latency", "allocs", "priority", "failover"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	if _, ok := fields["throughput"]; ok {
		t.Error("a section that did not run is in the JSON")
	}
	machine := fields["machine"].(map[string]any)
	for _, k := range []string{"cpu_model", "cores", "cpus_usable", "kernel", "go_version", "gomaxprocs", "pinned",
		"loadavg_start", "loadavg_end"} {
		if _, ok := machine[k]; !ok {
			t.Errorf("machine lacks %q", k)
		}
	}
	peer := fields["latency"].([]any)[0].(map[string]any)["peers"].([]any)[0].(map[string]any)
	for _, k := range []string{"p50_ns", "p99_ns", "p999_ns", "max_ns", "p999_ratio", "cdf", "fast_mode"} {
		if _, ok := peer[k]; !ok {
			t.Errorf("peer stats lack %q", k)
		}
	}

	back, err := ReadReport(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if back.Scenario != "all" || !back.Quick || back.Latency[0].Peers[0].P50 != 20*time.Microsecond ||
		back.Latency[0].Peers[0].CDF[7].Latency != h.Quantile(50) || back.Priority.Deadlock.Escalated.Times[0] != time.Millisecond ||
		back.Failover.Trials[0].Phases[0].At != time.Second || !back.Finished.Equal(r.Finished) {
		t.Errorf("round trip lost something: %+v", back)
	}

	wrong := strings.Replace(b.String(), `"version": 1`, `"version": 99`, 1)
	if _, err := ReadReport(strings.NewReader(wrong)); !errors.Is(err, ErrSchema) {
		t.Errorf("version 99: %v, want ErrSchema", err)
	}
	if _, err := ReadReport(strings.NewReader(`{"rounds": 3}`)); !errors.Is(err, ErrSchema) {
		t.Errorf("a bare comparison: %v, want ErrSchema", err)
	}
}

// TestDeadlock runs the scenario once per case with a short deadline: with
// escalation the call completes at priority 1, without it is stuck until
// the deadline.
func TestDeadlock(t *testing.T) {
	cfg := DeadlockConfig{Trials: 1, Deadline: time.Second, Window: 4096}
	res, err := RunDeadlock(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if e := res.Escalated; e.Outcome() != OutcomeCompleted || e.NestedPriority != 1 || e.Max >= cfg.Deadline {
		t.Errorf("escalated %+v", e)
	}
	if u := res.Unescalated; u.Outcome() != OutcomeStuck || u.Stuck != 1 || u.P50 < cfg.Deadline {
		t.Errorf("unescalated %+v", u)
	}
	if _, err := RunDeadlock(t.Context(), DeadlockConfig{}); !errors.Is(err, ErrDeadlockSetup) {
		t.Errorf("zero config: %v", err)
	}
}
