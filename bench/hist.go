package bench

import (
	"fmt"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds. Values are recorded in nanoseconds with a lowest
// discernible value of 1ns rather than 1µs: hdrhistogram rounds the lowest
// value down to a power of two and uses it as the bucket width, so a 1µs
// floor would measure a 20µs loopback call in 512ns steps. With 1ns the
// three significant digits hold over the whole 1µs..10s range we track.
const (
	histLowest  = 1                       // ns
	histHighest = int64(10 * time.Second) // slower calls are clamped and counted in Saturated
	histDigits  = 3
)

// Hist records call latencies. It is not safe for concurrent use: give each
// caller its own and Merge them, as the runner does.
type Hist struct {
	h         *hdrhistogram.Histogram
	saturated int64
}

// NewHist returns an empty histogram tracking 1µs..10s at 3 significant digits.
func NewHist() *Hist {
	return &Hist{h: hdrhistogram.New(histLowest, histHighest, histDigits)}
}

// Record adds one latency. Values above 10s are recorded as 10s and counted
// in Saturated, so a stall shows up instead of being dropped.
func (h *Hist) Record(d time.Duration) {
	v := int64(d)
	if v < histLowest {
		v = histLowest
	}
	if v > histHighest {
		v = histHighest
		h.saturated++
	}
	_ = h.h.RecordValue(v) // cannot fail: v is clamped into range
}

// MaxHistBuckets bounds HistFromBuckets' input: more than the non-empty
// buckets a histogram of 1 ns..10 s at 3 digits can have with calls of
// 1 µs and up (2048 per power of two, 24 powers of two).
const MaxHistBuckets = 1 << 16

// HistFromBuckets rebuilds a histogram from [value ns, count] pairs, one
// per non-empty bucket in ascending order, as a node's POST /v1/ping
// returns them (services/admin PingLatency.Histogram): the pairs come
// from the network and are checked before anything is recorded.
func HistFromBuckets(buckets [][2]int64) (*Hist, error) {
	if len(buckets) > MaxHistBuckets {
		return nil, fmt.Errorf("bench: histogram of %d buckets, at most %d", len(buckets), MaxHistBuckets)
	}
	h := NewHist()
	var total int64
	for i, b := range buckets {
		v, n := b[0], b[1]
		switch {
		case v < histLowest || v > histHighest:
			return nil, fmt.Errorf("bench: histogram bucket %d: %d ns out of 1..%d", i, v, histHighest)
		case i > 0 && v <= buckets[i-1][0]:
			return nil, fmt.Errorf("bench: histogram bucket %d: %d ns after %d: not ascending", i, v, buckets[i-1][0])
		case n < 1 || n > 1<<40 || total+n > 1<<40:
			return nil, fmt.Errorf("bench: histogram bucket %d: count %d out of 1..2^40 (or the total is)", i, n)
		}
		total += n
		_ = h.h.RecordValues(v, n) // cannot fail: v is in range
	}
	return h, nil
}

// Merge adds every value of o to h.
func (h *Hist) Merge(o *Hist) {
	h.h.Merge(o.h)
	h.saturated += o.saturated
}

// Count is the number of recorded values.
func (h *Hist) Count() int64 { return h.h.TotalCount() }

// Quantile returns the latency at q (0..100, as hdrhistogram counts it).
func (h *Hist) Quantile(q float64) time.Duration {
	return time.Duration(h.h.ValueAtQuantile(q))
}

// CountAbove is the number of recorded values above d, to the histogram's
// resolution (3 significant digits).
func (h *Hist) CountAbove(d time.Duration) int64 {
	var n int64
	for _, b := range h.h.Distribution() {
		if b.From > int64(d) {
			n += b.Count
		}
	}
	return n
}

// Summary condenses h into the numbers reports print.
func (h *Hist) Summary() Summary {
	return Summary{
		Count:     h.Count(),
		Mean:      time.Duration(h.h.Mean()),
		P50:       h.Quantile(50),
		P90:       h.Quantile(90),
		P99:       h.Quantile(99),
		P999:      h.Quantile(99.9),
		Max:       time.Duration(h.h.Max()),
		Saturated: h.saturated,
	}
}

// Summary is a histogram's percentiles. Durations marshal to JSON as
// integer nanoseconds.
type Summary struct {
	Count     int64         `json:"count"`
	Mean      time.Duration `json:"mean_ns"`
	P50       time.Duration `json:"p50_ns"`
	P90       time.Duration `json:"p90_ns"`
	P99       time.Duration `json:"p99_ns"`
	P999      time.Duration `json:"p999_ns"`
	Max       time.Duration `json:"max_ns"`
	Saturated int64         `json:"saturated,omitempty"` // calls slower than 10s
}

func (s Summary) String() string {
	return fmt.Sprintf("n=%d p50=%s p90=%s p99=%s p99.9=%s max=%s mean=%s",
		s.Count, us(s.P50), us(s.P90), us(s.P99), us(s.P999), us(s.Max), us(s.Mean))
}

// us formats d in microseconds with one decimal, the scale loopback RPCs
// live at, and stalls of a millisecond or more in milliseconds.
func us(d time.Duration) string {
	if d >= time.Millisecond {
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
}
