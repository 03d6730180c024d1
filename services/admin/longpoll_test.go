package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/admin/admintest"
)

// waitingPoll starts the long poll path and returns once it waits on the
// server (the source counts it), with its result channel.
func waitingPoll(t *testing.T, ctx context.Context, e *env, path string) <-chan error {
	t.Helper()
	cl := admin.NewClient(strings.TrimPrefix(e.base, "http://"), "")
	t.Cleanup(cl.Close)
	done := make(chan error, 1)
	go func() {
		var v json.RawMessage
		done <- cl.Get(ctx, path, &v)
	}()
	for e.src.Waiting() == 0 {
		select {
		case err := <-done:
			t.Fatalf("%s returned before a change: %v", path, err)
		case <-time.After(time.Millisecond): // a condition polled, not a duration asserted
		}
	}
	return done
}

// TestLongPollAtOnce: an after below the view's sequence (or above it: a
// restarted node's) answers at once with the current view; no after at
// all is the plain GET, which carries the sequence too.
func TestLongPollAtOnce(t *testing.T) {
	e := start(t, admin.Config{})
	var st admin.Status
	e.getJSON(t, "/v1/status", &st)
	if st.Seq == 0 {
		t.Fatalf("no seq in %+v", st)
	}
	if err := e.src.Join(1); err != nil {
		t.Fatal(err)
	}
	var after admin.Status
	e.getJSON(t, fmt.Sprintf("/v1/status?after=%d&wait=60s", st.Seq), &after)
	if after.Seq <= st.Seq || after.State != "UP" {
		t.Fatalf("after a change: seq %d (was %d), state %s", after.Seq, st.Seq, after.State)
	}
	var restarted admin.Status
	e.getJSON(t, fmt.Sprintf("/v1/status?after=%d&wait=60s", after.Seq+100), &restarted)
	if restarted.Seq != after.Seq {
		t.Fatalf("after above seq: seq %d, want %d", restarted.Seq, after.Seq)
	}
}

// TestLongPollWaitsForChange: a long poll at the current sequence waits,
// and returns the new view once the master changes (status) or a key
// service does (keysvc).
func TestLongPollWaitsForChange(t *testing.T) {
	keys := &admintest.Keys{}
	keys.Set(admin.KeyService{Name: "demo", Owner: 1, Epoch: 1, Ready: true})
	e := start(t, admin.Config{MaxWatchers: 1, KeyServices: keys})
	var st admin.Status
	e.getJSON(t, "/v1/status", &st)
	done := waitingPoll(t, context.Background(), e, fmt.Sprintf("/v1/status?after=%d&wait=60s", st.Seq))
	e.src.SetMaster(2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var now admin.Status
	e.getJSON(t, fmt.Sprintf("/v1/status?after=%d&wait=60s", st.Seq), &now)
	if now.Master != 2 || now.Seq <= st.Seq {
		t.Fatalf("status after the change: master %d seq %d (was %d)", now.Master, now.Seq, st.Seq)
	}

	cl := admin.NewClient(strings.TrimPrefix(e.base, "http://"), "")
	defer cl.Close()
	ks, err := cl.WaitKeyServices(context.Background(), 0, time.Minute)
	if err != nil || ks.Seq != now.Seq || len(ks.Services) != 1 || ks.Services[0].Owner != 1 {
		t.Fatalf("keysvc: %+v %v", ks, err)
	}
	got := make(chan admin.KeyServices, 1)
	go func() {
		ks, err := cl.WaitKeyServices(context.Background(), now.Seq, time.Minute)
		if err != nil {
			t.Error(err)
		}
		got <- ks
	}()
	for e.src.Waiting() == 0 { // the long poll waits on the server
		select {
		case ks := <-got:
			t.Fatalf("keysvc returned before a change: %+v", ks)
		case <-time.After(time.Millisecond):
		}
	}
	// One slot (MaxWatchers 1), held: another long poll is refused.
	if code, body := e.do(t, "GET", fmt.Sprintf("/v1/status?after=%d&wait=1s", now.Seq), "", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, `"busy"`) {
		t.Fatalf("a second long poll: %d %s", code, body)
	}
	keys.Set(admin.KeyService{Name: "demo", Owner: 3, Epoch: 2, Ready: true})
	e.src.Touch()
	if ks := <-got; ks.Seq <= now.Seq || len(ks.Services) != 1 || ks.Services[0].Owner != 3 || ks.Services[0].Epoch != 2 {
		t.Fatalf("keysvc after the change: %+v", ks)
	}
}

// TestLongPollTimesOut: with no change, the long poll answers at the end
// of wait with the unchanged view and sequence.
func TestLongPollTimesOut(t *testing.T) {
	e := start(t, admin.Config{})
	var st, again admin.Status
	e.getJSON(t, "/v1/status", &st)
	e.getJSON(t, fmt.Sprintf("/v1/status?after=%d&wait=20ms", st.Seq), &again)
	if again.Seq != st.Seq || again.Master != st.Master || again.State != st.State {
		t.Fatalf("unchanged view: %+v, was %+v", again, st)
	}
	var ks admin.KeyServices
	e.getJSON(t, fmt.Sprintf("/v1/keysvc?after=%d&wait=20ms", st.Seq), &ks)
	if ks.Seq != st.Seq || ks.Available {
		t.Fatalf("keysvc: %+v", ks)
	}
}

// TestLongPollBadParams: a bad after or wait is a 400 naming it; a wait
// on a source without a change sequence is a 501.
func TestLongPollBadParams(t *testing.T) {
	e := start(t, admin.Config{MaxWait: 30 * time.Second})
	for _, c := range []struct{ query, want string }{
		{"after=x", `after=\"x\"`}, {"after=-1", `after=\"-1\"`}, {"after=1&wait=soon", `wait=\"soon\"`},
		{"wait=0s", `wait=\"0s\"`}, {"wait=-1s", `wait=\"-1s\"`}, {"wait=31s", "at most 30s"}, {"wait=100", `wait=\"100\"`},
	} {
		for _, path := range []string{"/v1/status", "/v1/keysvc"} {
			code, body := e.do(t, "GET", path+"?"+c.query, "", "")
			if code != 400 || !strings.Contains(body, `"bad_request"`) || !strings.Contains(body, c.want) {
				t.Errorf("%s?%s: %d %s", path, c.query, code, body)
			}
		}
	}
	src, err := admintest.New("test", 1, []clms.NodeNum{1})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{}, struct{ admin.Source }{src}) // no ViewWaiter
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/status?after=1&wait=1s", nil))
	if rec.Code != 501 || !strings.Contains(rec.Body.String(), "no change sequence") {
		t.Fatalf("no ViewWaiter: %d %s", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/status", nil))
	if rec.Code != 200 || strings.Contains(rec.Body.String(), `"seq"`) {
		t.Fatalf("no ViewWaiter, plain GET: %d %s", rec.Code, rec.Body.String())
	}
}

// TestLongPollEnds: a client that goes away frees the long poll's slot
// (its handler returned), and Close ends one that waits.
func TestLongPollEnds(t *testing.T) {
	e := start(t, admin.Config{MaxWatchers: 1})
	var st admin.Status
	e.getJSON(t, "/v1/status", &st)
	path := fmt.Sprintf("/v1/status?after=%d&wait=60s", st.Seq)
	ctx, cancel := context.WithCancel(context.Background())
	done := waitingPoll(t, ctx, e, path)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled long poll: %v", err)
	}
	for { // the handler returns and gives its slot back (MaxWatchers 1)
		code, body := e.do(t, "GET", fmt.Sprintf("/v1/status?after=%d&wait=1ms", st.Seq), "", "")
		if code == http.StatusOK {
			break
		}
		if code != http.StatusServiceUnavailable {
			t.Fatalf("long poll after a cancelled one: %d %s", code, body)
		}
		time.Sleep(time.Millisecond)
	}
	for e.src.Waiting() != 0 {
		time.Sleep(time.Millisecond)
	}
	done = waitingPoll(t, context.Background(), e, path)
	ctx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := e.srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("a long poll Close ended answered as if the view changed")
	}
}
