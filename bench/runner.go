package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// RunConfig says how much load a run puts on a client.
type RunConfig struct {
	Calls       int           // timed calls in all; ignored when Duration is set
	Duration    time.Duration // if set, run for this long instead of Calls
	Concurrency int           // callers at once; 1 measures latency, hundreds throughput
	ReqSize     int           // request bytes, at least 4 (the echo header)
	RespSize    int           // response bytes
	Warmup      int           // calls made first and discarded: connections, pools, caches

	// Progress, if set, is called now and then with the number of timed
	// calls finished since the last call. It must be safe for concurrent use.
	Progress func(calls int)
}

// DefaultRunConfig is a latency run: one caller, 64-byte messages.
func DefaultRunConfig() RunConfig {
	return RunConfig{
		Calls:       20000, // enough for a stable p99 (200 samples above it)
		Concurrency: 1,     // one caller: latency, not throughput
		ReqSize:     64,    // a small RPC, where per-call overhead dominates
		RespSize:    64,
		Warmup:      1000, // connects, grows buffers and pools, lets the CPU clock up
	}
}

func (c *RunConfig) validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("bench: concurrency %d, need at least 1", c.Concurrency)
	case c.Duration <= 0 && c.Calls < 1:
		return fmt.Errorf("bench: need Calls > 0 or a Duration")
	case c.Warmup < 0:
		return fmt.Errorf("bench: negative warm-up %d", c.Warmup)
	}
	_, err := NewRequest(c.ReqSize, c.RespSize)
	return err
}

// Result is one run's outcome.
type Result struct {
	Peer        string        `json:"peer"`
	Calls       int64         `json:"calls"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	CallsPerSec float64       `json:"calls_per_sec"`
	Latency     Summary       `json:"latency"`
	Hist        *Hist         `json:"-"`
}

// progressEvery is how many calls a caller makes between Progress reports:
// often enough for a smooth bar, rarely enough to cost nothing.
const progressEvery = 256

// maxShards bounds the histograms a run records into. A histogram is 200KB
// (1ns resolution up to 10s), too much to give each of hundreds of callers
// one; with up to 16 callers each has its own and its lock is never
// contended, beyond that a few callers share one.
const maxShards = 16

// lockedHist is one shard.
type lockedHist struct {
	mu sync.Mutex // guards h
	h  *Hist
}

func (l *lockedHist) record(d time.Duration) {
	l.mu.Lock()
	l.h.Record(d)
	l.mu.Unlock()
}

// Run puts the load cfg describes on c and returns the latency histogram
// and the rate. The first failing call ends the run with its error: a run
// with failures measures something else.
func Run(ctx context.Context, c Client, cfg RunConfig) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	if cfg.Warmup > 0 {
		warm := cfg
		warm.Calls, warm.Duration, warm.Progress = cfg.Warmup, 0, nil
		if _, err := load(ctx, c, warm); err != nil {
			return Result{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	return load(ctx, c, cfg)
}

// load runs the callers and merges what they recorded.
func load(ctx context.Context, c Client, cfg RunConfig) (Result, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var (
		next     atomic.Int64 // calls handed out, when counting calls
		deadline time.Time
		wg       sync.WaitGroup
		shards   = make([]lockedHist, min(cfg.Concurrency, maxShards))
	)
	start := time.Now()
	if cfg.Duration > 0 {
		deadline = start.Add(cfg.Duration)
	}
	for i := range shards {
		shards[i].h = NewHist()
	}
	for i := range cfg.Concurrency {
		wg.Go(func() {
			if err := caller(ctx, c, cfg, &shards[i%len(shards)], &next, deadline); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return Result{}, err
	}
	h := shards[0].h
	for i := 1; i < len(shards); i++ {
		h.Merge(shards[i].h)
	}
	n := h.Count()
	return Result{
		Calls:       n,
		Elapsed:     elapsed,
		CallsPerSec: float64(n) / elapsed.Seconds(),
		Latency:     h.Summary(),
		Hist:        h,
	}, nil
}

// caller makes calls until the work is handed out or the deadline passes.
func caller(ctx context.Context, c Client, cfg RunConfig, h *lockedHist, next *atomic.Int64, deadline time.Time) error {
	req, err := NewRequest(cfg.ReqSize, cfg.RespSize)
	if err != nil {
		return err
	}
	resp := make([]byte, 0, cfg.RespSize)
	unreported := 0
	defer func() {
		if cfg.Progress != nil && unreported > 0 {
			cfg.Progress(unreported)
		}
	}()
	for ctx.Err() == nil {
		if deadline.IsZero() && next.Add(1) > int64(cfg.Calls) {
			return nil
		}
		t0 := time.Now()
		resp, err = c.Call(req, resp[:0])
		t1 := time.Now()
		if err != nil {
			return err
		}
		// A length check per call is cheap; content is checked by the tests.
		if len(resp) != cfg.RespSize {
			return fmt.Errorf("%w: %d bytes, want %d", ErrBadReply, len(resp), cfg.RespSize)
		}
		h.record(t1.Sub(t0))
		if unreported++; unreported == progressEvery && cfg.Progress != nil {
			cfg.Progress(unreported)
			unreported = 0
		}
		if !deadline.IsZero() && !t1.Before(deadline) {
			return nil
		}
	}
	return context.Cause(ctx)
}
