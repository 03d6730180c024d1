package bench

import (
	"errors"
	"fmt"
	"runtime"
)

// MeasureAllocs serves p in this process, dials it, makes calls echo calls
// of size bytes after a warm-up and returns the heap allocations per call:
// client and server together, as BenchmarkPingPong counts them. Other
// goroutines of this process allocating at the same time would count too,
// so run it with nothing else going on.
func MeasureAllocs(p Peer, calls, size int) (res AllocResult, err error) {
	if calls < 1 {
		return res, fmt.Errorf("bench: allocs: %d calls, need at least 1", calls)
	}
	req, err := NewRequest(size, size)
	if err != nil {
		return res, err
	}
	addr, stop, err := p.Serve("127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, stop()) }()
	c, err := p.Dial(addr)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	resp := make([]byte, 0, size)
	// Connections, buffers and pools grow during the first calls.
	for range min(calls, 1000) {
		if resp, err = c.Call(req, resp[:0]); err != nil {
			return res, err
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range calls {
		if resp, err = c.Call(req, resp[:0]); err != nil {
			return res, err
		}
	}
	runtime.ReadMemStats(&after)
	return AllocResult{
		Peer:          p.Name(),
		Calls:         calls,
		Size:          size,
		AllocsPerCall: float64(after.Mallocs-before.Mallocs) / float64(calls),
		BytesPerCall:  float64(after.TotalAlloc-before.TotalAlloc) / float64(calls),
	}, nil
}
