package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// bracketed sets r's raw TCP brackets, in microseconds, as Compare does.
func bracketed(r Round, before, after int) Round {
	r.BracketBeforeP50, r.BracketAfterP50 = time.Duration(before)*time.Microsecond, time.Duration(after)*time.Microsecond
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
	// Each round fast or slow throughout: the brackets agree with raw TCP.
	for i := range rounds {
		raw := rounds[i].Results[0].Latency.P50
		rounds[i].BracketBeforeP50, rounds[i].BracketAfterP50 = raw, raw
	}
	peers := summarize(rounds, 0, nil)
	if got := []string{rounds[0].Mode, rounds[1].Mode, rounds[4].Mode}; got[0] != ModeFast || got[1] != ModeSlow || got[2] != ModeSlow {
		t.Fatalf("modes %v", got)
	}
	if got := []string{rounds[0].RawMode, rounds[1].RawMode, rounds[4].RawMode}; got[0] != ModeFast || got[1] != ModeSlow || got[2] != ModeSlow {
		t.Fatalf("raw modes %v", got)
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
	if p := summarize(noRaw, 0, nil); noRaw[0].RawMode != "" || noRaw[0].Mode != "" || p[1].Fast != nil || p[1].Slow != nil ||
		p[1].P50Ratio != 2 || countModes(noRaw) != nil {
		t.Errorf("without raw: mode %q/%q, %+v", noRaw[0].Mode, noRaw[0].RawMode, p[1])
	}
}

// TestRoundMode: a round is fast or slow only when raw TCP was in that
// mode in the bracket before it, in its own run and in the bracket after
// it; any disagreement is mixed, and a missing measurement no mode.
func TestRoundMode(t *testing.T) {
	const fast, slow, edge = 18 * time.Microsecond, 45 * time.Microsecond, FastModeThreshold
	for _, c := range []struct {
		name               string
		before, raw, after time.Duration
		want               string
	}{
		{"fast/fast", fast, fast, fast, ModeFast},
		{"slow/slow", slow, slow, slow, ModeSlow},
		{"fast/slow: slowed down during the round", fast, fast, slow, ModeMixed},
		{"slow/fast: sped up during the round", slow, slow, fast, ModeMixed},
		{"fast brackets, raw TCP's run slow", fast, slow, fast, ModeMixed},
		{"slow brackets, raw TCP's run fast", slow, fast, slow, ModeMixed},
		{"the threshold itself is slow", edge, edge, edge, ModeSlow},
		{"just under the threshold is fast", edge - 1, edge - 1, edge - 1, ModeFast},
		{"no bracket before: raw TCP not among the targets", 0, fast, fast, ""},
		{"no bracket after", fast, fast, 0, ""},
		{"no raw TCP run", fast, 0, fast, ""},
	} {
		if got := RoundMode(c.before, c.raw, c.after); got != c.want {
			t.Errorf("%s: RoundMode(%v, %v, %v) = %q, want %q", c.name, c.before, c.raw, c.after, got, c.want)
		}
	}
}

// TestMixedRoundsExcluded replays the round of the report that prompted
// the brackets: raw TCP ran first at 17 µs, then the machine slowed down
// and ICS measured 68 µs (4x raw). Bracketed by 17 and 52 µs it is mixed:
// its ratio is in the round and in the all-rounds median, but in neither
// mode's figures, which hold only the rounds fast or slow throughout.
func TestMixedRoundsExcluded(t *testing.T) {
	names := []string{"raw", "raw-split", "ics"}
	rounds := []Round{
		bracketed(round(1, names, []int{20, 24, 24}, []int{60, 60, 60}, []int{90, 90, 90}), 19, 21),       // fast: ICS 1.2
		bracketed(round(2, names, []int{17, 27, 68}, []int{60, 60, 60}, []int{90, 90, 90}), 17, 52),       // fast, then slow: mixed
		bracketed(round(3, names, []int{50, 50, 55}, []int{120, 120, 120}, []int{200, 200, 200}), 52, 48), // slow: ICS 1.1
		bracketed(round(4, names, []int{50, 50, 40}, []int{120, 120, 120}, []int{200, 200, 200}), 20, 21), // fast brackets, raw slow: mixed
		bracketed(round(5, names, []int{25, 26, 25}, []int{60, 60, 60}, []int{90, 90, 90}), 21, 20),       // fast: ICS 1.0
	}
	peers := summarize(rounds, 0, nil)
	var modes []string
	for _, r := range rounds {
		modes = append(modes, r.Mode)
	}
	if want := []string{ModeFast, ModeMixed, ModeSlow, ModeMixed, ModeFast}; !slices.Equal(modes, want) {
		t.Fatalf("modes %v, want %v", modes, want)
	}
	if n := countModes(rounds); n == nil || *n != (ModeCounts{Fast: 2, Slow: 1, Mixed: 2}) {
		t.Errorf("mode counts %+v, want 2 fast, 1 slow, 2 mixed", n)
	}
	ics := peers[2]
	if r := rounds[1].Results[2].P50Ratio; !near(r, 4) {
		t.Errorf("the mixed round's ICS ratio %v, want 4 (reported, not dropped)", r)
	}
	// All rounds: 1.2, 4, 1.1, 0.8, 1.0 -> 1.1.
	if !near(ics.P50Ratio, 1.1) {
		t.Errorf("all-rounds ICS p50 ratio %v, want 1.1 (mixed rounds count there)", ics.P50Ratio)
	}
	if ics.Fast == nil || ics.Fast.Rounds != 2 || !near(ics.Fast.P50RatioMax, 1.2) || !near(ics.Fast.P50Ratio, 1.1) {
		t.Errorf("fast %+v, want rounds 1 and 5 only: median 1.1, worst 1.2 (not the mixed round's 4)", ics.Fast)
	}
	if ics.Slow == nil || ics.Slow.Rounds != 1 || !near(ics.Slow.P50Ratio, 1.1) || !near(ics.Slow.P50RatioMax, 1.1) {
		t.Errorf("slow %+v, want round 3 only: 1.1", ics.Slow)
	}

	// Every round mixed: neither mode has figures.
	allMixed := []Round{rounds[1], rounds[3]}
	if p := summarize(allMixed, 0, nil); p[2].Fast != nil || p[2].Slow != nil || *countModes(allMixed) != (ModeCounts{Mixed: 2}) {
		t.Errorf("all mixed: fast %+v slow %+v", p[2].Fast, p[2].Slow)
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

	current := fmt.Sprintf(`"version": %d`, SchemaVersion)
	for _, v := range []int{0, SchemaVersion + 1, 99} {
		wrong := strings.Replace(b.String(), current, fmt.Sprintf(`"version": %d`, v), 1)
		if _, err := ReadReport(strings.NewReader(wrong)); !errors.Is(err, ErrSchema) {
			t.Errorf("version %d: %v, want ErrSchema", v, err)
		}
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

// TestReportRoundTripV2: version 2's fields (throughput by size and
// concurrency, a profile per membership run) survive the round trip, and
// a version 1 file (one concurrency, one profile for every run) still
// reads, as the same thing.
func TestReportRoundTripV2(t *testing.T) {
	r := NewReport("all", []string{"cibench", "all"})
	tput := func(size, conc int, rate float64) *Comparison {
		return &Comparison{Rounds: 1, Duration: time.Second, Concurrency: conc, ReqSize: size, RespSize: size, Baseline: "raw",
			Peers: []PeerStats{{Peer: "raw", CallsPerSec: rate}, {Peer: "ics", CallsPerSec: 2 * rate}}}
	}
	// cibench all's order: every size at 256 callers, then the sweep.
	r.Throughput = []*Comparison{tput(64, 256, 90000), tput(4096, 256, 70000), tput(64, 1, 20000), tput(64, 16, 60000)}
	r.Membership = &MembershipResult{Profile: "lan-fast", Mode: ModeSpawned, Runs: []MembershipRun{
		{Nodes: 3, Profile: "lan-fast", Formation: time.Second}, {Nodes: 64, Profile: "default", Formation: 3 * time.Second}}}
	r.Finish()
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if back.Version != SchemaVersion || len(back.Throughput) != 4 {
		t.Fatalf("version %d, %d throughput entries", back.Version, len(back.Throughput))
	}
	for _, tc := range []struct{ size, conc int }{{64, 256}, {4096, 256}, {64, 1}, {64, 16}} {
		c := back.ThroughputAt(tc.size, tc.conc)
		if c == nil || c.ReqSize != tc.size || c.Concurrency != tc.conc || c.Peers[1].Peer != "ics" ||
			c.Peers[1].CallsPerSec != 2*c.Peers[0].CallsPerSec {
			t.Errorf("ThroughputAt(%d, %d) = %+v", tc.size, tc.conc, c)
		}
	}
	if c := back.ThroughputAt(4096, 16); c != nil {
		t.Errorf("ThroughputAt(4096, 16) = %+v, want nil: not measured", c)
	}
	m := back.Membership
	if len(m.Runs) != 2 || m.RunProfile(0) != "lan-fast" || m.RunProfile(1) != "default" || m.Runs[1].Nodes != 64 {
		t.Errorf("membership %+v", m)
	}

	// The same report as version 1 wrote it: no per-run profile.
	var doc map[string]any
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	doc["version"] = 1
	for _, run := range doc["membership"].(map[string]any)["runs"].([]any) {
		delete(run.(map[string]any), "profile")
	}
	v1, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	old, err := ReadReport(bytes.NewReader(v1))
	if err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if old.Version != 1 || old.Membership.Runs[0].Profile != "" || old.Membership.Runs[1].Profile != "" ||
		old.Membership.RunProfile(1) != "lan-fast" || old.ThroughputAt(64, 256) == nil {
		t.Errorf("version 1 read as %+v, membership %+v", old, old.Membership)
	}
}
