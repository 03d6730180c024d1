package admin_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/admin/admintest"
)

// FuzzMutatingBodies feeds any body to the POST endpoints: the server
// decodes it (a network input) and must answer with a status it
// documents, never a panic or a 500. Seeds: the valid bodies, an empty
// one, unknown fields, wrong types, a truncated object, pings at and over
// every bound. The pinger fails every call at once, so that a valid ping
// ends after MaxPingErrors calls instead of running for its duration.
func FuzzMutatingBodies(f *testing.F) {
	for _, s := range []string{
		`{"node":1,"reason":"x"}`, ``, `{"bogus":1}`, `{"node":"1"}`, `{"node":1`,
		`{"key_service":"demo","node":2}`, `{"node":1,"handler":"h","signal":"HUP","arg":"eA=="}`,
		`{"node":1,"pid":1,"signal":"TERM"}`, `{"node":1,"arg":"not base64"}`, `[]`, `null`,
		`{"node":2,"calls":10,"size":64,"concurrency":2,"priority":1,"duration":"1s","warmup":1}`,
		`{"node":2,"calls":10000001}`, `{"node":2,"size":1048577}`, `{"node":2,"concurrency":1025}`, `{"node":2,"priority":5}`,
		`{"node":2,"duration":"61s"}`, `{"node":2,"duration":"-1s"}`, `{"node":2,"concurrency":1024,"size":1048576}`,
		`{"node":2,"calls":1e3}`, `{"node":4294967296}`,
	} {
		f.Add(s)
	}
	src, err := admintest.New("fuzz", 1, []clms.NodeNum{1, 2})
	if err != nil {
		f.Fatal(err)
	}
	down := &fakePinger{fn: func(_ context.Context, _, r []byte) ([]byte, error) { return r, engine.ErrNodeDown }}
	srv, err := admin.New(admin.Config{Shutdown: func(string) {}, Pinger: down}, src)
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	documented := map[int]bool{200: true, 202: true, 400: true, 403: true, 404: true, 409: true, 429: true, 501: true, 503: true}
	f.Fuzz(func(t *testing.T, body string) {
		for _, path := range []string{"/v1/shutdown", "/v1/move", "/v1/signal", "/v1/ping"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
			if !documented[rec.Code] || !strings.Contains(rec.Body.String(), admin.SchemaVersion) {
				t.Fatalf("%s %q: %d %s", path, body, rec.Code, rec.Body.String())
			}
		}
	})
}

// FuzzWatchClient feeds any stream to Client.Watch: it must yield events
// or an error, and end, never panic. Seeds: a hello and a transition, an
// error line, a line that is not JSON, nothing.
func FuzzWatchClient(f *testing.F) {
	for _, s := range []string{
		"{\"schema\":\"ci.admin/v1\",\"event\":\"hello\",\"node\":1}\n{\"event\":\"transition\",\"transition\":{\"id\":1}}\n",
		"{\"event\":\"error\",\"code\":\"compacted\",\"error\":\"x\"}\n", "not json\n", "", "{\"event\":\"transition\"}\n",
	} {
		f.Add(s)
	}
	// One server for the run: a worker runs its inputs one at a time.
	var current atomic.Pointer[string]
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, *current.Load()) }))
	defer hs.Close()
	c := admin.NewClient(strings.TrimPrefix(hs.URL, "http://"), "")
	defer c.Close()
	f.Fuzz(func(t *testing.T, stream string) {
		current.Store(&stream)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n := 0
		for _, err := range c.Watch(ctx, 0, 5*time.Second) {
			n++
			if err != nil {
				break
			}
		}
		if n == 0 {
			t.Fatal("Watch ended without an event or an error")
		}
	})
}

// FuzzLongPollQuery feeds any query string to the long polls of
// /v1/status and /v1/keysvc (after and wait are network input): the reply
// is 200 with the view or 400 naming the parameter, never a panic, a 500,
// or a wait past MaxWait (5 ms here, so that a valid wait ends quickly).
// Seeds: no parameters, valid ones, each bound, non-numbers, repeated and
// escaped parameters, overflow.
func FuzzLongPollQuery(f *testing.F) {
	for _, s := range []string{
		``, `after=1&wait=1ms`, `after=0&wait=5ms`, `wait=6ms`, `wait=0s`, `wait=-1s`, `wait=1e9`, `wait=soon`,
		`after=x`, `after=-1`, `after=18446744073709551616`, `after=18446744073709551615&wait=1ms`,
		`after=1&after=2&wait=1ms`, `wait=%31ms`, `wait=1ms;after=2`, `%zz`, `wait=9223372036854775807ns`,
	} {
		f.Add(s)
	}
	src, err := admintest.New("fuzz", 1, []clms.NodeNum{1, 2})
	if err != nil {
		f.Fatal(err)
	}
	srv, err := admin.New(admin.Config{MaxWait: 5 * time.Millisecond, KeyServices: &admintest.Keys{}}, src)
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, query string) {
		for _, path := range []string{"/v1/status", "/v1/keysvc"} {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.URL.RawQuery = query
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if (rec.Code != 200 && rec.Code != 400) || !strings.Contains(rec.Body.String(), admin.SchemaVersion) {
				t.Fatalf("%s?%s: %d %s", path, query, rec.Code, rec.Body.String())
			}
		}
	})
}
