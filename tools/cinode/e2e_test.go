package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/metricstest"
	"github.com/clusterinfra/ci/services/admin"
)

func TestMain(m *testing.M) {
	if err := buildBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(bins.dir)
	os.Exit(code)
}

// secureCluster writes keys for nodes 1 and 2 and a cluster.toml in
// encrypt mode: a valid base that each bad-configuration case breaks.
func secureCluster(t *testing.T) (dir string, toml string) {
	t.Helper()
	dir = t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ck, err := engine.GenerateClusterKey()
	must(err)
	must(engine.WriteClusterKeyFile(filepath.Join(dir, "cluster.key"), ck))
	for i := 1; i <= 2; i++ {
		nk, err := engine.GenerateNodeKey()
		must(err)
		must(engine.WriteNodeKeyFile(filepath.Join(dir, fmt.Sprintf("node%d.key", i)), nk))
		must(engine.WritePublicKeyFile(filepath.Join(dir, fmt.Sprintf("node%d.pub", i)), nk.Public))
	}
	toml = `name = "bad"
[security]
mode = "encrypt"
cluster_key_files = ["cluster.key"]
node_key_file = "node{node}.key"
public_key_file = "node{node}.pub"
[[nodes]]
number = 1
address = "127.0.0.1:7100"
master_eligible = true
[[nodes]]
number = 2
address = "127.0.0.2:7100"
`
	return dir, toml
}

// TestBadConfiguration: every configuration problem stops cinode before it
// starts anything, with exit status 2 and exactly one line naming it.
func TestBadConfiguration(t *testing.T) {
	dir, good := secureCluster(t)
	data := t.TempDir()
	cfg := func(name, body string) string {
		p := filepath.Join(dir, name+".toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodFile := cfg("good", good)
	if code, out, errs := runCmd(t, bins.cinode, "-c", goodFile, "-n", "1", "--data-dir", data, "--check"); code != 0 || errs != "" ||
		!strings.Contains(out, `node 1 of cluster "bad": ok`) {
		t.Fatalf("the base is not good: %d %q %q", code, out, errs)
	}
	// Every flag from the environment too.
	env := []string{"CI_CONFIG=" + goodFile, "CI_NODE=2", "CI_DATA_DIR=" + data, "CI_CHECK=true"}
	if code, out, errs := runCmdEnv(t, env, bins.cinode); code != 0 || !strings.Contains(out, `node 2 of cluster "bad": ok (admin 127.0.0.2:7180)`) {
		t.Fatalf("from CI_* variables: %d %q %q", code, out, errs)
	}
	readable := filepath.Join(dir, "readable.key")
	b, _ := os.ReadFile(filepath.Join(dir, "cluster.key"))
	os.WriteFile(readable, b, 0o644)
	os.Chmod(readable, 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string // in the one line
	}{
		{"unknown field", []string{"-c", cfg("unknown", strings.Replace(good, "master_eligible = true", "master_eligble = true", 1)), "-n", "1"}, "master_eligble"},
		{"duplicate node number", []string{"-c", cfg("dup", strings.Replace(good, "number = 2", "number = 1", 1)), "-n", "1"}, "nodes[1].number"},
		{"bad address", []string{"-c", cfg("addr", strings.Replace(good, `"127.0.0.2:7100"`, `"127.0.0.2"`, 1)), "-n", "1"}, "nodes[1].address"},
		{"missing key file", []string{"-c", cfg("nokey", strings.Replace(good, "cluster.key", "missing.key", 1)), "-n", "1"}, "missing.key"},
		{"node not in the table", []string{"-c", goodFile, "-n", "7"}, "node 7 is not in the node table"},
		{"key readable by others", []string{"-c", cfg("readable", strings.Replace(good, `"cluster.key"`, `"readable.key"`, 1)), "-n", "1"}, "chmod 600"},
		{"syntax error", []string{"-c", cfg("syntax", good+"[[nodes]\n"), "-n", "1"}, "syntax.toml:"},
		{"no such file", []string{"-c", filepath.Join(dir, "nope.toml"), "-n", "1"}, "nope.toml"},
		{"no config", []string{"-n", "1"}, "no configuration"},
		{"no node", []string{"-c", goodFile}, "no node number"},
		{"admin off loopback without token", []string{"-c", goodFile, "-n", "1", "--admin", "0.0.0.0:7180"}, "give a token file"},
		{"admin token readable", []string{"-c", goodFile, "-n", "1", "--admin", "0.0.0.0:7180", "--admin-token-file", readable}, "chmod 600"},
		{"bad admin address", []string{"-c", goodFile, "-n", "1", "--admin", "nowhere"}, "want host:port"},
		{"data dir not writable", []string{"-c", goodFile, "-n", "1", "--data-dir", "/proc/cinode"}, "--data-dir"},
		{"unknown flag", []string{"--bogus"}, "unknown flag --bogus"},
		{"bad log format", []string{"--dev", "--log-format", "xml"}, "--log-format"},
		{"bad node number", []string{"-c", goodFile, "-n", "x"}, "--node"},
		{"dev with config", []string{"--dev", "-c", goodFile}, "drop --config or --dev"},
	} {
		args := c.args
		if !strings.Contains(strings.Join(args, " "), "--data-dir") {
			args = append(args, "--data-dir", data)
		}
		code, out, errs := runCmd(t, bins.cinode, args...)
		if code != exitBadUsage || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "cinode: ") || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 2 and one line with %q", c.name, code, out, errs, c.want)
		}
	}
	if ents, _ := os.ReadDir(data); len(ents) != 0 {
		t.Errorf("a refused start left %v in the data directory", ents)
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runCmd(t, bins.cinode, "--help")
	for _, want := range []string{"cinode --dev", "($CI_CONFIG)", "($CI_NODE)", "($CI_DATA_DIR)", "($CI_ADMIN)", "($CI_LOG_FORMAT)", "4 fenced"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if code != 0 {
		t.Errorf("--help: exit %d", code)
	}
}

var tableRow = regexp.MustCompile(`^(\d+)\s+(\S+)\s+(\S+)\s+(yes|no)\s+([0-9a-f]{16}|-)\s+(\S+)$`)

// TestThreeNodes runs a 3-node cluster of cinode processes from a
// cluster.toml and checks what an operator sees: /readyz flipping,
// cluster -v and --json, /metrics, a watch seeing a kill -9, and a clean
// SHUTDOWN on SIGTERM.
func TestThreeNodes(t *testing.T) {
	c := newTestCluster(t, 3)
	n1 := c.start(t, 1)
	// Alone, node 1 cannot form a raft quorum of the three: not ready.
	eventually(t, 30*time.Second, "node 1's admin endpoint up", func() (bool, string) {
		code, body := c.readyz(1)
		return code == 503, fmt.Sprint(code, body)
	})
	procs := []*proc{n1, c.start(t, 2), c.start(t, 3)}
	for i := 1; i <= 3; i++ {
		eventually(t, 60*time.Second, fmt.Sprintf("node %d ready", i), func() (bool, string) {
			code, body := c.readyz(i)
			return code == 200 && body == "ready\n", fmt.Sprint(code, body)
		})
	}
	// Every node UP with a master, as node 1's endpoint says.
	var out string
	eventually(t, 30*time.Second, "cluster -v healthy", func() (bool, string) {
		code, o, e := runCmd(t, bins.cluster, "-c", c.config, "-v")
		out = o
		return code == 0, fmt.Sprint(code, o, e)
	})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "NODE  STATE  ADDRESS") {
		t.Fatalf("cluster -v:\n%s", out)
	}
	masters := 0
	for i, l := range lines[1:] {
		m := tableRow.FindStringSubmatch(l)
		if m == nil || m[1] != fmt.Sprint(i+1) || m[2] != "UP" || m[3] != c.ics[i] || m[5] == "-" {
			t.Fatalf("row %q", l)
		}
		if m[4] == "yes" {
			masters++
		}
	}
	if masters != 1 {
		t.Fatalf("%d masters:\n%s", masters, out)
	}
	code, js, _ := runCmd(t, bins.cluster, "-c", c.config, "-v", "--json")
	var ms struct {
		admin.Members
		Healthy  bool     `json:"healthy"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(js), &ms); err != nil || code != 0 || !ms.Healthy || ms.Schema != admin.SchemaVersion ||
		len(ms.Members.Members) != 3 || ms.Master == 0 {
		t.Fatalf("--json: %d %v\n%s", code, err, js)
	}
	for _, m := range ms.Members.Members {
		if m.State != "UP" || m.Incarnation == "" || m.Address != c.ics[m.Node-1] || m.Admin != c.admins[m.Node-1] {
			t.Fatalf("member %+v", m)
		}
	}

	checkMetrics(t, c)

	// A watch through node 1 sees node 3 killed with SIGKILL go down.
	var st admin.Status
	cl := c.client(1)
	defer cl.Close()
	if err := cl.Get(context.Background(), "/v1/status", &st); err != nil {
		t.Fatal(err)
	}
	if st.Node != 1 || st.Cluster != "e2e" || st.State != "UP" || !st.Ready || !st.LeaseValid || st.RaftTerm == 0 || st.Master == 0 ||
		st.MembersUp != 3 || st.Incarnation != ms.Members.Members[0].Incarnation {
		t.Fatalf("node 1's /v1/status: %+v", st)
	}
	watch := startProc(t, bins.cluster, "-e", c.admins[0], "watch", "--json", "--since", fmt.Sprint(st.LastTransition))
	procs[2].cmd.Process.Signal(syscall.SIGKILL)
	eventually(t, 30*time.Second, "watch sees node 3 DOWN", func() (bool, string) {
		o := watch.out.String()
		return strings.Contains(o, `"node":3`) && strings.Contains(o, `"to":"DOWN"`), o
	})
	if o := watch.out.String(); !strings.Contains(o, `"from":"UP","to":"GOINGDOWN"`) {
		t.Fatalf("watch: %s", o)
	}
	code, _, errs := runCmd(t, bins.cluster, "-c", c.config)
	if code != 3 || !strings.Contains(errs, "cluster: unhealthy: node 3 is DOWN") {
		t.Fatalf("after kill: %d %q", code, errs)
	}
	// Node 3 back, so that the planned leave below keeps a raft quorum
	// (two of the three voters) after node 2 is gone.
	procs[2] = c.start(t, 3)
	eventually(t, 60*time.Second, "node 3 ready again", func() (bool, string) {
		code, body := c.readyz(3)
		return code == 200, fmt.Sprint(code, body)
	})

	// SIGTERM on node 2: a planned shutdown, exit 0, SHUTDOWN committed.
	procs[1].cmd.Process.Signal(syscall.SIGTERM)
	if code := procs[1].wait(t, 60*time.Second); code != 0 {
		t.Fatalf("node 2 after SIGTERM: exit %d\n%s", code, procs[1].out.String())
	}
	var ts admin.Transitions
	eventually(t, 30*time.Second, "node 2's SHUTDOWN committed", func() (bool, string) {
		if err := cl.Get(context.Background(), "/v1/transitions", &ts); err != nil {
			return false, err.Error()
		}
		for _, tr := range ts.Transitions {
			if tr.Node == 2 && tr.From == "UP" && tr.To == "SHUTDOWN" && tr.Cause == "shutdown" {
				return true, ""
			}
		}
		return false, fmt.Sprint(ts.Transitions)
	})
	for _, tr := range ts.Transitions {
		if tr.Node == 2 && tr.To == "GOINGDOWN" {
			t.Fatalf("node 2 went through GOINGDOWN, a failure, after SIGTERM: %+v", ts.Transitions)
		}
	}
	if out := procs[1].out.String(); !strings.Contains(out, "shutdown complete") {
		t.Fatalf("node 2's log:\n%s", out)
	}
}

// lintMetrics scrapes node n's /metrics, a whole cinode's (engine, CLMS,
// services, Go runtime, process), and fails t on anything Prometheus would
// refuse or promtool check metrics would report (metricstest.Lint, and
// promtool itself where it is installed). It returns the families.
func lintMetrics(t *testing.T, c *testCluster, n int) map[string]*dto.MetricFamily {
	t.Helper()
	cl := c.client(n)
	defer cl.Close()
	code, body, err := cl.Text(context.Background(), "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("node %d /metrics: %d %v", n, code, err)
	}
	fams := metricstest.Lint(t, body)
	metricstest.Promtool(t, body)
	return fams
}

// checkMetrics lints node 1's /metrics and checks the families and labels
// an operator's dashboards rely on.
func checkMetrics(t *testing.T, c *testCluster) {
	t.Helper()
	fams := lintMetrics(t, c, 1)
	want := map[string]struct {
		typ    dto.MetricType
		labels []string // every series has them
	}{
		"go_goroutines":                 {dto.MetricType_GAUGE, nil},
		"process_resident_memory_bytes": {dto.MetricType_GAUGE, nil},
		"process_cpu_seconds_total":     {dto.MetricType_COUNTER, nil},
		"ci_ics_frames_in_total":        {dto.MetricType_COUNTER, []string{"peer", "channel"}},
		"ci_ics_bytes_out_total":        {dto.MetricType_COUNTER, []string{"peer", "channel"}},
		"ci_ics_frames_out_total":       {dto.MetricType_COUNTER, []string{"peer", "channel"}},
		"ci_ics_handles":                {dto.MetricType_GAUGE, []string{"state"}},
		"ci_clms_members":               {dto.MetricType_GAUGE, []string{"node", "state"}},
		"ci_clms_is_master":             {dto.MetricType_GAUGE, []string{"node"}},
		"ci_clms_raft_term":             {dto.MetricType_GAUGE, []string{"node"}},
		"ci_clms_last_transition":       {dto.MetricType_GAUGE, []string{"node"}},
	}
	for name, w := range want {
		f, ok := fams[name]
		if !ok {
			t.Errorf("/metrics: no %s", name)
			continue
		}
		if f.GetType() != w.typ {
			t.Errorf("%s: type %v", name, f.GetType())
		}
		for _, m := range f.Metric {
			have := map[string]bool{}
			for _, l := range m.Label {
				have[l.GetName()] = true
			}
			for _, l := range w.labels {
				if !have[l] {
					t.Errorf("%s: a series without label %s: %v", name, l, m.Label)
				}
			}
		}
	}
	// The engine documents its families; CLMS's and the runtime's get TYPE
	// (checked above) from the metrics library, with an empty HELP.
	for name, f := range fams {
		if strings.HasPrefix(name, "ci_ics_") && f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
	up := -1.0
	for _, m := range fams["ci_clms_members"].GetMetric() {
		for _, l := range m.Label {
			if l.GetName() == "state" && l.GetValue() == "UP" {
				up = m.GetGauge().GetValue()
			}
		}
	}
	if up != 3 {
		t.Errorf(`ci_clms_members{state="UP"} = %v, want 3`, up)
	}
}

// TestDevAndToken: --dev starts a single-node cluster; its admin endpoint
// bound to every interface needs the token, refuses a shutdown without
// it, and shuts down with it.
func TestDevAndToken(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The admin endpoint binds every interface, where a port found free on
	// 127.0.0.1 may still be taken (other test binaries run at the same
	// time): a start that loses that race is retried on new ports.
	var n *proc
	var ep string
	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ics := fmt.Sprintf("127.0.0.1:%d", freePorts(t, "127.0.0.1", 1)[0])
		_ = l.Close()
		n = startProc(t, bins.cinode, "--dev", "--dev-addr", ics, "--admin", fmt.Sprintf(":%d", port), "--admin-token-file", tok, "--log-format", "json")
		ep = fmt.Sprintf("127.0.0.1:%d", port)
		lostRace := false
		eventually(t, 30*time.Second, "--dev node ready", func() (bool, string) {
			select {
			case <-n.done:
				lostRace = strings.Contains(n.out.String(), "address already in use")
				return lostRace && attempt < 5, "cinode exited: " + n.out.String()
			default:
			}
			code, out, errs := runCmd(t, bins.cluster, "-e", ep, "--token-file", tok, "-v")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			return code == 0 && len(lines) > 1 && tableRow.MatchString(lines[1]), fmt.Sprint(code, out, errs)
		})
		if !lostRace {
			break
		}
		t.Logf("attempt %d: the admin port was taken meanwhile; new ports", attempt)
	}
	code, _, errs := runCmd(t, bins.cluster, "-e", ep, "shutdown", "1")
	if code != 1 || !strings.Contains(errs, "send the token") {
		t.Fatalf("shutdown without the token: %d %q", code, errs)
	}
	cl := admin.NewClient(ep, "wrong")
	defer cl.Close()
	var a admin.Accepted
	if err := cl.Post(context.Background(), "/v1/shutdown", admin.ShutdownRequest{}, &a); err == nil || !strings.Contains(err.Error(), "wrong bearer token") {
		t.Fatalf("shutdown with a wrong token: %v", err)
	}
	select {
	case <-n.done:
		t.Fatalf("the node exited after refused shutdowns:\n%s", n.out.String())
	default:
	}
	if code, out, errs := runCmd(t, bins.cluster, "-e", ep, "--token-file", tok, "shutdown", "1"); code != 0 || !strings.Contains(out, "planned shutdown started") {
		t.Fatalf("shutdown with the token: %d %q %q", code, out, errs)
	}
	if code := n.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var sawJSON bool
	for _, l := range strings.Split(strings.TrimSpace(n.out.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line not JSON: %q", l)
		}
		if rec["msg"] == "shutdown complete" && rec["node"] == float64(1) {
			sawJSON = true
		}
	}
	if !sawJSON {
		t.Fatalf("no JSON 'shutdown complete' line:\n%s", n.out.String())
	}
}

// memberOf returns node n's row as node from sees it.
func (c *testCluster) memberOf(t *testing.T, from, n int) admin.Member {
	t.Helper()
	cl := c.client(from)
	defer cl.Close()
	var m admin.Member
	if err := cl.Get(context.Background(), fmt.Sprintf("/v1/node/%d", n), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestFencedExit: a node stopped (SIGSTOP) until the others declare it
// down fences itself when it runs again and exits 4; started again, it
// rejoins as a new incarnation.
func TestFencedExit(t *testing.T) {
	c := newTestCluster(t, 3)
	procs := []*proc{c.start(t, 1), c.start(t, 2), c.start(t, 3)}
	for i := 1; i <= 3; i++ {
		eventually(t, 60*time.Second, fmt.Sprintf("node %d ready", i), func() (bool, string) {
			code, body := c.readyz(i)
			return code == 200, fmt.Sprint(code, body)
		})
	}
	old := c.memberOf(t, 1, 3).Incarnation
	procs[2].cmd.Process.Signal(syscall.SIGSTOP)
	eventually(t, 30*time.Second, "node 3 declared down", func() (bool, string) {
		m := c.memberOf(t, 1, 3)
		return m.State == "DOWN", m.State
	})
	procs[2].cmd.Process.Signal(syscall.SIGCONT)
	if code := procs[2].wait(t, 30*time.Second); code != exitFenced {
		t.Fatalf("node 3 after SIGCONT: exit %d, want %d", code, exitFenced)
	}
	if out := procs[2].out.String(); !strings.Contains(out, "fenced: this incarnation is no longer a member") {
		t.Fatalf("node 3's log:\n%s", out)
	}
	c.start(t, 3)
	eventually(t, 60*time.Second, "node 3 back", func() (bool, string) {
		m := c.memberOf(t, 1, 3)
		return m.State == "UP" && m.Incarnation != old, fmt.Sprint(m.State, m.Incarnation)
	})
}

// TestDevUnixSocket: the admin endpoint on a Unix socket is created 0600,
// serves cluster, and is removed when SIGINT ends the node with exit 0.
func TestDevUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ics := fmt.Sprintf("127.0.0.1:%d", freePorts(t, "127.0.0.1", 1)[0])
	n := startProc(t, bins.cinode, "--dev", "--dev-addr", ics, "--admin", "unix:"+sock)
	eventually(t, 30*time.Second, "--dev node UP", func() (bool, string) {
		code, out, errs := runCmd(t, bins.cluster, "-e", "unix:"+sock)
		return code == 0 && out == "1\n", fmt.Sprint(code, out, errs)
	})
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", st.Mode(), err)
	}
	n.cmd.Process.Signal(syscall.SIGINT)
	if code := n.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	m := regexp.MustCompile(`data_dir=(\S+)`).FindStringSubmatch(n.out.String())
	if m == nil {
		t.Fatalf("no data_dir in the log:\n%s", n.out.String())
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Fatalf("--dev's data directory %s left behind: %v", m[1], err)
	}
}

// TestKeyseqMove: cinode runs keyseq when cluster.toml declares it; the
// admin endpoint lists it with its owner, and `cluster move` hands it to
// another node, which then owns it in the next epoch.
func TestKeyseqMove(t *testing.T) {
	c := newTestCluster(t, 3)
	b, err := os.ReadFile(c.config)
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(string(b), "[[nodes]]", "[[key_services]]\nname = \"keyseq\"\n[[nodes]]", 1)
	doc = strings.ReplaceAll(doc, "master_eligible = true\n", "master_eligible = true\nkey_services = [\"keyseq\"]\n")
	if err := os.WriteFile(c.config, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		c.start(t, i)
	}
	var ks struct{ admin.KeyServices }
	eventually(t, 60*time.Second, "keyseq ready", func() (bool, string) {
		code, js, e := runCmd(t, bins.cluster, "-c", c.config, "keysvc", "--json")
		ks.Services = nil
		err := json.Unmarshal([]byte(js), &ks)
		return code == 0 && err == nil && len(ks.Services) == 1 && ks.Services[0].Ready && ks.Services[0].Owner != 0, fmt.Sprint(code, js, e)
	})
	k := ks.Services[0]
	if k.Name != "keyseq" || k.Critical {
		t.Fatalf("keysvc: %+v", k)
	}
	to := k.Owner%3 + 1
	// A long poll of node 1's /v1/keysvc from its view now: the move
	// changes the view (the runner's sequence), so it answers with the
	// new owner without polling.
	cl := c.client(1)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before, err := cl.WaitKeyServices(ctx, 0, time.Second)
	if err != nil || before.Seq == 0 {
		t.Fatalf("keysvc before the move: seq %d, %v", before.Seq, err)
	}
	if code, out, e := runCmd(t, bins.cluster, "-c", c.config, "move", "keyseq", fmt.Sprint(to)); code != 0 {
		t.Fatalf("move: %d %s %s", code, out, e)
	}
	for after := before.Seq; ; {
		got, err := cl.WaitKeyServices(ctx, after, 30*time.Second)
		if err != nil || got.Seq <= after {
			t.Fatalf("long poll after %d: seq %d, %v", after, got.Seq, err)
		}
		if s := got.Services; len(s) == 1 && s[0].Owner == to && s[0].Ready {
			break
		}
		after = got.Seq
	}
	code, js, e := runCmd(t, bins.cluster, "-c", c.config, "keysvc", "--json")
	if err := json.Unmarshal([]byte(js), &ks); code != 0 || err != nil || len(ks.Services) != 1 {
		t.Fatalf("keysvc after the move: %d %v %s %s", code, err, js, e)
	}
	if got := ks.Services[0]; got.Owner != to || got.Epoch != k.Epoch+1 || !got.Ready {
		t.Fatalf("after moving to node %d: %+v (before: %+v)", to, got, k)
	}
	// The old and new owners have run key-service routines (hand-off,
	// failover data): their scrapes have every ci_clms_keysvc_* family
	// with series, and must still pass the linter.
	for _, n := range []uint32{k.Owner, to} {
		fams := lintMetrics(t, c, int(n))
		for _, name := range []string{"ci_clms_keysvc_owner", "ci_clms_keysvc_epoch", "ci_clms_keysvc_handovers_total", "ci_clms_keysvc_routine_seconds"} {
			if len(fams[name].GetMetric()) == 0 {
				t.Errorf("node %d: no %s series", n, name)
			}
		}
	}
}

// TestConfigMismatchExit: a node started with a cluster.toml whose timing
// differs from the running cluster's is refused at its join, exits 2 (so
// systemd does not restart it into the same refusal) and says why.
func TestConfigMismatchExit(t *testing.T) {
	c := newTestCluster(t, 3)
	c.start(t, 1)
	c.start(t, 2)
	for i := 1; i <= 2; i++ {
		eventually(t, 60*time.Second, fmt.Sprintf("node %d ready", i), func() (bool, string) {
			code, body := c.readyz(i)
			return code == 200, fmt.Sprint(code, body)
		})
	}
	body, err := os.ReadFile(c.config)
	if err != nil {
		t.Fatal(err)
	}
	odd := strings.Replace(string(body), "profile = \"lan-fast\"\n", "profile = \"lan-fast\"\ncallback_timeout = \"3s\"\n", 1)
	if odd == string(body) {
		t.Fatal("test setup: no [timing] profile line to extend")
	}
	oddConfig := filepath.Join(c.dir, "odd.toml")
	if err := os.WriteFile(oddConfig, []byte(odd), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, bins.cinode, "--config", oddConfig, "--node", "3", "--data-dir", filepath.Join(c.dir, "node3"))
	if code := p.wait(t, 60*time.Second); code != exitBadUsage {
		t.Fatalf("node 3 with another timing: exit %d, want %d; log:\n%s", code, exitBadUsage, p.out.String())
	}
	if out := p.out.String(); !strings.Contains(out, "differs from the master's") || !strings.Contains(out, "same cluster.toml") {
		t.Fatalf("node 3's log does not say why:\n%s", out)
	}
	if m := c.memberOf(t, 1, 3); m.State != "NEVERUP" {
		t.Fatalf("the refused node is %s in node 1's view, want NEVERUP", m.State)
	}
}
