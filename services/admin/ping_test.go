package admin_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/services/admin"
)

// fakePinger answers every ping with fn; its MaxPayload is 1 MiB.
type fakePinger struct {
	fn func(ctx context.Context, payload, reply []byte) ([]byte, error)
}

func (f *fakePinger) Ping(ctx context.Context, _ engine.NodeNum, payload, reply []byte) ([]byte, error) {
	return f.fn(ctx, payload, reply)
}

func (f *fakePinger) MaxPayload() int { return 1 << 20 }

func (e *env) ping(t *testing.T, body string) admin.PingResult {
	t.Helper()
	code, b := e.do(t, "POST", "/v1/ping", "", body)
	if code != 200 {
		t.Fatalf("%s: %d %s", body, code, b)
	}
	var res admin.PingResult
	if err := json.Unmarshal([]byte(b), &res); err != nil {
		t.Fatalf("%s: %v in %s", body, err, b)
	}
	return res
}

// checkLatency: the figures of a run that made calls are positive and in
// order.
func checkLatency(t *testing.T, what string, res admin.PingResult) {
	t.Helper()
	l := res.Latency
	if res.Calls <= 0 || res.CallsPerSec <= 0 || res.Elapsed <= 0 || l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 ||
		l.P99 > l.P999 || l.P999 > l.Max || l.Mean <= 0 || len(l.CDF) == 0 || l.CDF[len(l.CDF)-1].Latency != l.Max {
		t.Errorf("%s: figures %+v", what, res)
	}
}

// TestPing: node 1's endpoint drives real ICS echoes to node 2, counted
// or timed, at priority 0 and 1, with warm-up and several callers.
func TestPing(t *testing.T) {
	nodes := enginetest.StartCluster(t, 2, nil)
	e := start(t, admin.Config{Pinger: nodes[0]})

	res := e.ping(t, `{"node":2,"calls":50,"size":100,"concurrency":3,"priority":1,"warmup":5}`)
	checkLatency(t, "counted", res)
	if res.Schema != admin.SchemaVersion || res.From != 1 || res.Node != 2 || res.Calls != 50 || res.Size != 100 ||
		res.Concurrency != 3 || res.Priority != 1 || res.Warmup != 5 || res.Errors != 0 || len(res.ErrorCodes) != 0 ||
		res.Stopped != "" || res.BytesPerSec != res.CallsPerSec*100 {
		t.Errorf("counted run: %+v", res)
	}
	if res.Latency.Histogram != nil {
		t.Error("a histogram nobody asked for")
	}
	res = e.ping(t, `{"node":2,"calls":20,"histogram":true}`)
	var n int64
	for i, b := range res.Latency.Histogram {
		if b[0] <= 0 || b[1] <= 0 || (i > 0 && b[0] <= res.Latency.Histogram[i-1][0]) {
			t.Fatalf("histogram bucket %d: %v", i, b)
		}
		n += b[1]
	}
	if n != 20 || res.Calls != 20 {
		t.Errorf("histogram counts %d calls, the run %d, want 20", n, res.Calls)
	}
	res = e.ping(t, `{"node":2,"duration":"30ms"}`)
	checkLatency(t, "timed", res)
	if res.Size != admin.DefaultPingSize || res.Concurrency != 1 || res.Priority != 0 || res.Errors != 0 {
		t.Errorf("timed run: %+v", res)
	}
	res = e.ping(t, `{"node":2,"size":0,"calls":3}`)
	if res.Calls != 3 || res.Size != admin.DefaultPingSize {
		t.Errorf("size 0 is the default: %+v", res)
	}
}

// TestPingBounds: every field out of its bounds is a 400 that names it;
// no pinger is a 501, GET a 405.
func TestPingBounds(t *testing.T) {
	called := false
	e := start(t, admin.Config{Pinger: &fakePinger{fn: func(_ context.Context, p, r []byte) ([]byte, error) {
		called = true
		return append(r, p...), nil
	}}})
	for body, want := range map[string]string{
		`{}`:                                           "node:",
		`{"node":1}`:                                   "node 1 is this node",
		`{"node":2,"calls":-1}`:                        "calls -1",
		`{"node":2,"calls":10000001}`:                  "calls 10000001",
		`{"node":2,"warmup":-1}`:                       "warmup -1",
		`{"node":2,"warmup":10000001}`:                 "warmup 10000001",
		`{"node":2,"size":-1}`:                         "size -1",
		`{"node":2,"size":1048577}`:                    "size 1048577: want 0..1048576",
		`{"node":2,"concurrency":-1}`:                  "concurrency -1",
		`{"node":2,"concurrency":1025}`:                "concurrency 1025",
		`{"node":2,"priority":5}`:                      "priority 5",
		`{"node":2,"priority":-1}`:                     "priority -1",
		`{"node":2,"duration":"61s"}`:                  `duration \"61s\"`,
		`{"node":2,"duration":"0s"}`:                   `duration \"0s\"`,
		`{"node":2,"duration":"soon"}`:                 `duration \"soon\"`,
		`{"node":2,"concurrency":1024,"size":1048576}`: "concurrency 1024 x size 1048576",
		`{"node":2,"bogus":1}`:                         "unknown field",
		`{"node":"2"}`:                                 "request body",
		``:                                             "request body",
	} {
		code, b := e.do(t, "POST", "/v1/ping", "", body)
		if code != 400 || !strings.Contains(b, want) || !strings.Contains(b, `"bad_request"`) {
			t.Errorf("%s: %d %s, want 400 naming %q", body, code, b, want)
		}
	}
	if called {
		t.Error("a refused request made a call")
	}
	if code, b := e.do(t, "GET", "/v1/ping", "", ""); code != 405 {
		t.Errorf("GET: %d %s", code, b)
	}
	bare := start(t, admin.Config{})
	if code, b := bare.do(t, "POST", "/v1/ping", "", `{"node":2}`); code != 501 || !strings.Contains(b, "not_implemented") {
		t.Errorf("no pinger: %d %s", code, b)
	}
}

// TestPingBusyAndCancelled: with MaxPings 1, a second run while one is in
// progress is a 429; the client of the first going away cancels its
// calls, and the slot is free again.
func TestPingBusyAndCancelled(t *testing.T) {
	entered := make(chan struct{}, 1)
	e := start(t, admin.Config{MaxPings: 1, Pinger: &fakePinger{fn: func(ctx context.Context, p, r []byte) ([]byte, error) {
		if len(p) == 7 { // the first run's calls: block until cancelled
			select {
			case entered <- struct{}{}:
			default:
			}
			<-ctx.Done()
			return r, ctx.Err()
		}
		return append(r, p...), nil
	}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, "POST", e.base+"/v1/ping", strings.NewReader(`{"node":2,"size":7,"calls":1}`))
		if err != nil {
			first <- err
			return
		}
		resp, err := e.hc.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		first <- err
	}()
	<-entered
	code, b := e.do(t, "POST", "/v1/ping", "", `{"node":2,"calls":1}`)
	if code != 429 || !strings.Contains(b, `"busy"`) {
		t.Fatalf("second run: %d %s, want 429 busy", code, b)
	}
	cancel()
	if err := <-first; err == nil {
		t.Fatal("the cancelled request got a reply")
	}
	// The slot is released once the cancelled run's handler returns.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		code, b := e.do(t, "POST", "/v1/ping", "", `{"node":2,"calls":1}`)
		if code == 200 {
			break
		}
		if code != 429 || time.Now().After(deadline) {
			t.Fatalf("a run after the cancelled one: %d %s", code, b)
		}
	}
}

// TestPingErrors: failed calls are counted by code, and a run stops after
// MaxPingErrors of them.
func TestPingErrors(t *testing.T) {
	e := start(t, admin.Config{Pinger: &fakePinger{fn: func(_ context.Context, _, r []byte) ([]byte, error) {
		return r, engine.ErrNodeDown
	}}})
	res := e.ping(t, `{"node":2,"calls":1000,"concurrency":4}`)
	code := engine.Code(engine.ErrNodeDown).String()
	if res.Calls != 0 || res.Errors < admin.MaxPingErrors || res.ErrorCodes[code] != res.Errors || res.Stopped != "errors" ||
		!strings.Contains(res.LastError, "down") || len(res.Latency.CDF) != 0 {
		t.Errorf("%+v", res)
	}
}
