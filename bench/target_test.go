package bench

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestHistFromBuckets: a histogram rebuilt from its non-empty buckets has
// the same count and percentiles; malformed bucket lists are refused.
func TestHistFromBuckets(t *testing.T) {
	h := NewHist()
	for i := range 1000 {
		h.Record(time.Duration(20_000 + i*37))
	}
	h.Record(3 * time.Millisecond)
	var buckets [][2]int64
	for _, b := range h.h.Distribution() {
		if b.Count > 0 {
			buckets = append(buckets, [2]int64{b.From, b.Count})
		}
	}
	got, err := HistFromBuckets(buckets)
	if err != nil {
		t.Fatal(err)
	}
	if got.Summary() != h.Summary() || got.CountAbove(SlowCallThreshold/2) != 1 {
		t.Fatalf("rebuilt %v, want %v", got.Summary(), h.Summary())
	}
	for name, bad := range map[string][][2]int64{
		"zero ns":       {{0, 1}},
		"over 10 s":     {{int64(11 * time.Second), 1}},
		"zero count":    {{5, 0}},
		"descending":    {{10, 1}, {9, 1}},
		"repeated":      {{10, 1}, {10, 1}},
		"huge count":    {{10, 1 << 41}},
		"huge total":    {{10, 1 << 40}, {11, 1}},
		"too many rows": make([][2]int64, MaxHistBuckets+1),
	} {
		if _, err := HistFromBuckets(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzHistFromBuckets: a node's /v1/ping histogram, as JSON from the
// network, never panics HistFromBuckets, and what it accepts counts every
// call. Seeds: a valid list, an empty one, out-of-range and unordered
// values, a count past the bound.
func FuzzHistFromBuckets(f *testing.F) {
	for _, s := range []string{`[[20000,3],[20500,1]]`, `[]`, `[[0,1]]`, `[[10,1],[9,1]]`, `[[10,1099511627777]]`,
		`[[10000000001,1]]`, `[[-1,-1]]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var buckets [][2]int64
		if json.Unmarshal([]byte(s), &buckets) != nil {
			return
		}
		h, err := HistFromBuckets(buckets)
		if err != nil {
			return
		}
		var n int64
		for _, b := range buckets {
			n += b[1]
		}
		if h.Count() != n {
			t.Fatalf("%s: %d calls recorded, want %d", s, h.Count(), n)
		}
	})
}

// TestTargetFlowSummarize: medians, per-round ratios and the verdict come
// from the rounds; the text says what was not measured.
func TestTargetFlowSummarize(t *testing.T) {
	us := func(n int) time.Duration { return time.Duration(n) * time.Microsecond }
	r := &TargetFlowResult{Rounds: 3, Duration: time.Second, Size: 65536, Senders: 4, ProbeSize: 64, ProbePriority: 1,
		NotMeasured: []NotMeasured{{What: "raw bulk", Reason: "needs a spawned process"}}}
	for i, x := range []struct{ idle, loaded int }{{10, 30}, {20, 20}, {10, 15}} {
		r.PerRound = append(r.PerRound, TargetFlowRound{Round: i + 1, Bulk: TargetBulk{MBPerSec: float64(100 * (i + 1))},
			Idle: Summary{P50: us(x.idle), P99: us(x.idle)}, Loaded: Summary{P50: us(x.loaded), P99: us(x.loaded)}})
	}
	idle, loaded := NewHist(), NewHist()
	idle.Record(us(10))
	loaded.Record(us(20))
	r.Summarize(idle, loaded)
	if r.P99Ratio != 1.5 || r.PerRound[0].P99Ratio != 3 || r.BulkMBPerSec != 200 || r.IdleP99 != us(10) ||
		!r.PriorityMet || r.P99Target != FlowP99Target || r.IdleAll.Count != 1 {
		t.Fatalf("%+v", r)
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "not measured: raw bulk (needs a spawned process)") {
		t.Fatalf("text:\n%s", b.String())
	}
}
