package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/engine/metricstest"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/admin/admintest"
	"github.com/clusterinfra/ci/services/clusterapi"
	"github.com/clusterinfra/ci/services/sigfwd"
)

func TestMain(m *testing.M) {
	// cinode turns metadata on for the whole process, as a host may.
	metrics.ExposeMetadata(true)
	goleak.VerifyTestMain(m, enginetest.LeakOptions()...)
}

var table = []clms.NodeEntry{
	{Num: 1, Address: "127.0.0.1:7100", Admin: "127.0.0.1:7180", MasterEligible: true},
	{Num: 2, Address: "127.0.0.2:7100", MasterEligible: true},
	{Num: 3, Address: "127.0.0.3:7100", Admin: "unix:/run/ci/3.sock"},
}

// env is an admin server for node 1 of a 3-node cluster over a real
// in-memory membership.
type env struct {
	src  *admintest.Source
	srv  *admin.Server
	base string
	hc   *http.Client
}

func start(t *testing.T, cfg admin.Config) *env {
	t.Helper()
	src, err := admintest.New("test", 1, []clms.NodeNum{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	return startWith(t, cfg, src)
}

func startWith(t *testing.T, cfg admin.Config, src *admintest.Source) *env {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	cfg.Nodes = table
	srv, err := admin.New(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	e := &env{src: src, srv: srv, hc: &http.Client{Transport: &http.Transport{}}}
	addr := srv.Addr()
	if path, ok := strings.CutPrefix(addr, admin.UnixPrefix); ok {
		e.hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}
		e.base = "http://unix"
	} else {
		e.base = "http://" + strings.Replace(addr, "[::]", "127.0.0.1", 1)
	}
	t.Cleanup(func() {
		e.hc.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

func (e *env) do(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (e *env) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	code, body := e.do(t, "GET", path, "", "")
	if code != 200 {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

func TestStatusMembersNode(t *testing.T) {
	e := start(t, admin.Config{})
	e.src.SetMaster(2)
	if err := e.src.Join(1, 2); err != nil {
		t.Fatal(err)
	}
	var st admin.Status
	e.getJSON(t, "/v1/status", &st)
	if st.Schema != admin.SchemaVersion || st.Node != 1 || st.Cluster != "test" || st.State != "UP" || st.Master != 2 ||
		st.IsMaster || !st.Ready || !st.LeaseValid || st.LastTransition != 4 || st.MembersUp != 2 || st.Nodes != 3 || st.Incarnation != "0000000100000001" {
		t.Fatalf("status %+v", st)
	}
	var ms admin.Members
	e.getJSON(t, "/v1/members", &ms)
	if ms.Schema != admin.SchemaVersion || ms.From != 1 || ms.Master != 2 || ms.LastTransition != 4 || len(ms.Members) != 3 {
		t.Fatalf("members %+v", ms)
	}
	want := []struct {
		state, addr, admin string
		master, eligible   bool
		last               uint64
	}{
		{"UP", "127.0.0.1:7100", "127.0.0.1:7180", false, true, 2},
		{"UP", "127.0.0.2:7100", "", true, true, 4},
		{"NEVERUP", "127.0.0.3:7100", "unix:/run/ci/3.sock", false, false, 0},
	}
	for i, w := range want {
		m := ms.Members[i]
		if m.Node != uint32(i+1) || m.State != w.state || m.Address != w.addr || m.Admin != w.admin || m.Master != w.master ||
			m.MasterEligible != w.eligible || m.LastChange != w.last || m.KeyServices == nil || len(m.KeyServices) != 0 {
			t.Fatalf("member %d: %+v, want %+v", i+1, m, w)
		}
	}
	var n admin.Member
	e.getJSON(t, "/v1/node/2", &n)
	if n.Schema != admin.SchemaVersion || n.Node != 2 || n.State != "UP" || !n.Master || n.Incarnation != "0000000200000001" {
		t.Fatalf("node 2: %+v", n)
	}
	for path, want := range map[string]int{"/v1/node/9": 404, "/v1/node/x": 400, "/v1/node/0": 400, "/v1/nothing": 404} {
		code, body := e.do(t, "GET", path, "", "")
		var er admin.Error
		if code != want || json.Unmarshal([]byte(body), &er) != nil || er.Schema != admin.SchemaVersion || er.Error == "" {
			t.Errorf("%s: %d %s, want %d and an Error", path, code, body, want)
		}
	}
}

func TestReadyzFlips(t *testing.T) {
	e := start(t, admin.Config{})
	if code, body := e.do(t, "GET", "/readyz", "", ""); code != 503 || body != "not ready: node 1 is NEVERUP, not UP\n" {
		t.Fatalf("before joining: %d %q", code, body)
	}
	if code, body := e.do(t, "GET", "/healthz", "", ""); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	if err := e.src.Join(1); err != nil {
		t.Fatal(err)
	}
	if code, body := e.do(t, "GET", "/readyz", "", ""); code != 200 || body != "ready\n" {
		t.Fatalf("after joining: %d %q", code, body)
	}
	if err := e.src.Shutdown(1); err != nil {
		t.Fatal(err)
	}
	if code, body := e.do(t, "GET", "/readyz", "", ""); code != 503 || body != "not ready: node 1 is DOWN, not UP\n" {
		t.Fatalf("after shutdown: %d %q", code, body)
	}
}

func TestTransitions(t *testing.T) {
	e := start(t, admin.Config{})
	if err := e.src.Join(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	if err := e.src.Fail(3); err != nil {
		t.Fatal(err)
	}
	var ts admin.Transitions
	e.getJSON(t, "/v1/transitions?since=4", &ts)
	if ts.Since != 4 || ts.Last != 10 || ts.Compacted || ts.More || len(ts.Transitions) != 6 {
		t.Fatalf("%+v", ts)
	}
	wantTo := []string{"COMINGUP", "UP", "GOINGDOWN", "KCLEANUP", "UCLEANUP", "DOWN"}
	for i, tr := range ts.Transitions {
		if tr.ID != uint64(5+i) || tr.To != wantTo[i] || tr.Time.IsZero() {
			t.Fatalf("transition %d: %+v", i, tr)
		}
	}
	if g := ts.Transitions[2]; g.Node != 3 || g.From != "UP" || g.Cause != "crash" || g.Incarnation != "0000000300000001" {
		t.Fatalf("GOINGDOWN: %+v", g)
	}
	e.getJSON(t, "/v1/transitions?since=2&limit=3", &ts)
	if len(ts.Transitions) != 3 || ts.Transitions[0].ID != 3 || !ts.More {
		t.Fatalf("limit: %+v", ts)
	}
	for _, q := range []string{"since=-1", "since=x", "limit=0"} {
		if code, _ := e.do(t, "GET", "/v1/transitions?"+q, "", ""); code != 400 {
			t.Errorf("%s: %d", q, code)
		}
	}
}

func TestTransitionsCompacted(t *testing.T) {
	b, err := clusterapi.NewMemBackend([]clms.NodeNum{1, 2, 3}, clusterapi.MemConfig{MaxRetained: 2})
	if err != nil {
		t.Fatal(err)
	}
	e := startWith(t, admin.Config{}, admintest.NewWith("test", 1, b))
	if err := e.src.Join(1, 2); err != nil {
		t.Fatal(err)
	}
	var ts admin.Transitions
	e.getJSON(t, "/v1/transitions", &ts)
	if !ts.Compacted || len(ts.Transitions) != 2 || ts.Transitions[0].ID != 3 {
		t.Fatalf("%+v", ts)
	}
	lines := readWatch(t, e, "since=0", 2)
	if lines[1].Event != "error" || lines[1].Code != "compacted" {
		t.Fatalf("watch from a compacted id: %+v", lines[1])
	}
}

// readWatch reads n lines of /v1/watch?query.
func readWatch(t *testing.T, e *env, query string, n int) []admin.WatchEvent {
	t.Helper()
	resp, err := e.hc.Get(e.base + "/v1/watch?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var out []admin.WatchEvent
	for len(out) < n && sc.Scan() {
		var ev admin.WatchEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	if len(out) < n {
		t.Fatalf("stream ended after %d lines: %v", len(out), sc.Err())
	}
	return out
}

// TestWatchMissesNothing follows the log while another goroutine commits
// transitions as fast as it can: the stream must carry every id once, in
// order, from since+1.
func TestWatchMissesNothing(t *testing.T) {
	e := start(t, admin.Config{Heartbeat: time.Hour})
	if err := e.src.Join(1); err != nil {
		t.Fatal(err)
	}
	const rounds = 50 // each: node 2 and 3 join and fail, 12 transitions
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range rounds {
			for _, n := range []clms.NodeNum{2, 3} {
				if err := e.src.Join(n); err != nil {
					errc <- err
					return
				}
				if err := e.src.Fail(n); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	total := 2 + rounds*12
	lines := readWatch(t, e, "since=1", 1+total-1)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	if lines[0].Event != "hello" || lines[0].Schema != admin.SchemaVersion || lines[0].Node != 1 {
		t.Fatalf("hello: %+v", lines[0])
	}
	for i, ev := range lines[1:] {
		if ev.Event != "transition" || ev.Transition == nil || ev.Transition.ID != uint64(i+2) {
			t.Fatalf("line %d: %+v, want transition %d", i+1, ev, i+2)
		}
	}
}

func TestWatchHeartbeat(t *testing.T) {
	e := start(t, admin.Config{Heartbeat: 20 * time.Millisecond})
	if err := e.src.Join(1); err != nil {
		t.Fatal(err)
	}
	lines := readWatch(t, e, "since=2", 2)
	if lines[1].Event != "heartbeat" || lines[1].Last != 2 {
		t.Fatalf("%+v", lines[1])
	}
}

// TestWatchBounded: one stream over MaxWatchers is refused, and Close ends
// the open ones.
func TestWatchBounded(t *testing.T) {
	e := start(t, admin.Config{MaxWatchers: 1, Heartbeat: time.Hour})
	resp, err := e.hc.Get(e.base + "/v1/watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := bufio.NewReader(resp.Body).ReadBytes('\n'); err != nil { // hello: the slot is taken
		t.Fatal(err)
	}
	if code, body := e.do(t, "GET", "/v1/watch", "", ""); code != 503 || !strings.Contains(body, `"busy"`) {
		t.Fatalf("second watch: %d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("stream after Close: %v", err)
	}
}

func TestKeyServicesAbsent(t *testing.T) {
	e := start(t, admin.Config{})
	var ks admin.KeyServices
	e.getJSON(t, "/v1/keysvc", &ks)
	if ks.Available || ks.Services == nil || len(ks.Services) != 0 || !strings.Contains(ks.Reason, "no key services") {
		t.Fatalf("%+v", ks)
	}
	code, body := e.do(t, "POST", "/v1/move", "", `{"key_service":"demo","node":2}`)
	if code != 501 || !strings.Contains(body, `"not_implemented"`) || !strings.Contains(body, "no key services yet") {
		t.Fatalf("move: %d %s", code, body)
	}
	if code, _ := e.do(t, "GET", "/v1/move", "", ""); code != 405 {
		t.Fatalf("GET on a mutating call: %d", code)
	}
}

func TestShutdown(t *testing.T) {
	asked := make(chan string, 1)
	e := start(t, admin.Config{Shutdown: func(reason string) { asked <- reason }})
	if code, body := e.do(t, "POST", "/v1/shutdown", "", `{"node":2}`); code != 409 || !strings.Contains(body, "node 1's admin endpoint, not node 2's") {
		t.Fatalf("wrong node: %d %s", code, body)
	}
	if code, body := e.do(t, "POST", "/v1/shutdown", "", `{"bogus":1}`); code != 400 {
		t.Fatalf("unknown field: %d %s", code, body)
	}
	if len(asked) != 0 {
		t.Fatal("shutdown called on a refused request")
	}
	if code, body := e.do(t, "POST", "/v1/shutdown", "", `{"node":1,"reason":"maintenance"}`); code != 202 {
		t.Fatalf("%d %s", code, body)
	}
	if r := <-asked; r != "maintenance" {
		t.Fatalf("reason %q", r)
	}
	if code, _ := e.do(t, "POST", "/v1/shutdown", "", ""); code != 202 {
		t.Fatalf("empty body: %d", code)
	}
	if r := <-asked; r != "admin request" {
		t.Fatalf("reason %q", r)
	}
}

// TestSignal forwards through a real sigfwd.Forwarder on a real engine
// node, to a handler on the same node.
func TestSignal(t *testing.T) {
	nodes := enginetest.StartCluster(t, 1, nil)
	fwd, err := sigfwd.New(nodes[0], sigfwd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	if err := fwd.RegisterHandler("reload", func(_ context.Context, from engine.NodeNum, sig string, arg []byte) error {
		got <- fmt.Sprintf("%d %s %s", from, sig, arg)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e := start(t, admin.Config{Signaller: fwd})
	if code, body := e.do(t, "POST", "/v1/signal", "", `{"node":1,"handler":"reload","signal":"HUP","arg":"eA=="}`); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if g := <-got; g != "1 HUP x" {
		t.Fatalf("handler got %q", g)
	}
	for body, want := range map[string]int{
		`{"node":1,"handler":"nope","signal":"HUP"}`:      404, // no such handler
		`{"node":1,"pid":1,"signal":"TERM"}`:              403, // policy: processes off
		`{"node":1,"pid":1,"signal":"SIGNOPE"}`:           400,
		`{"node":1,"signal":"HUP"}`:                       400, // neither handler nor pid
		`{"node":1,"handler":"x","pid":2,"signal":"HUP"}`: 400,
	} {
		if code, b := e.do(t, "POST", "/v1/signal", "", body); code != want {
			t.Errorf("%s: %d %s, want %d", body, code, b, want)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"TERM": 15, "SIGTERM": 15, "hup": 1, "9": 9} {
		if s, err := admin.ParseSignal(in); err != nil || int(s) != want {
			t.Errorf("%s: %v %v", in, s, err)
		}
	}
	for _, in := range []string{"", "FOO", "0", "99"} {
		if _, err := admin.ParseSignal(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestMetrics(t *testing.T) {
	set := metrics.NewSet()
	enginetest.StartCluster(t, 1, func(c *engine.Config) { c.Metrics = set })
	e := start(t, admin.Config{Metrics: set})
	code, body := e.do(t, "GET", "/metrics", "", "")
	if code != 200 {
		t.Fatal(code)
	}
	// Every family has HELP and TYPE, the engine's and the runtime's
	// alike, with the library's metadata switch on (TestMain) as off.
	fams := metricstest.Lint(t, body)
	metricstest.Promtool(t, body)
	for name, typ := range map[string]dto.MetricType{
		"go_goroutines":                  dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total":  dto.MetricType_COUNTER,
		"process_cpu_seconds_total":      dto.MetricType_COUNTER,
		"process_resident_memory_bytes":  dto.MetricType_GAUGE,
		"ci_ics_handles":                 dto.MetricType_GAUGE,
		"ci_ics_handshake_rejects_total": dto.MetricType_COUNTER,
	} {
		f, ok := fams[name]
		if !ok {
			t.Errorf("no family %s", name)
			continue
		}
		if f.GetType() != typ || f.GetHelp() == "" {
			t.Errorf("%s: type %v, help %q", name, f.GetType(), f.GetHelp())
		}
	}
}
