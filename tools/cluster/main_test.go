package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/admin/admintest"
)

// The admin package links the engine (signal forwarding's errors), whose
// gnet starts a process-wide worker pool at init.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// node is one admin endpoint of a 3-node cluster whose membership is a
// real in-memory log.
type node struct {
	src      *admintest.Source
	srv      *admin.Server
	shutdown chan string
}

func startNode(t *testing.T, self clms.NodeNum, cfg admin.Config) *node {
	t.Helper()
	src, err := admintest.New("test", self, []clms.NodeNum{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{src: src, shutdown: make(chan string, 1)}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	cfg.Shutdown = func(r string) { n.shutdown <- r }
	cfg.Nodes = []clms.NodeEntry{{Num: 1, Address: "127.0.0.1:7100"}, {Num: 2, Address: "127.0.0.2:7100"}, {Num: 3, Address: "127.0.0.3:7100"}}
	if n.srv, err = admin.New(cfg, src); err != nil {
		t.Fatal(err)
	}
	if err := n.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.srv.Close(context.Background()) })
	return n
}

// cluster runs the command in this process.
func cluster(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestMembers(t *testing.T) {
	n := startNode(t, 1, admin.Config{})
	ep := "--endpoint=" + n.srv.Addr()
	if err := n.src.Join(1, 2); err != nil {
		t.Fatal(err)
	}
	n.src.SetMaster(1)

	code, out, errs := cluster(t, ep)
	if code != exitUnhealthy || out != "1\n2\n" || errs != "cluster: unhealthy: node 3 is NEVERUP\n" {
		t.Fatalf("cluster: %d %q %q", code, out, errs)
	}
	if err := n.src.Join(3); err != nil {
		t.Fatal(err)
	}
	code, out, errs = cluster(t, ep, "-v")
	want := "NODE  STATE  ADDRESS         MASTER  INCARNATION       KEYSVC\n" +
		"1     UP     127.0.0.1:7100  yes     0000000100000001  -\n" +
		"2     UP     127.0.0.2:7100  no      0000000200000001  -\n" +
		"3     UP     127.0.0.3:7100  no      0000000300000001  -\n"
	if code != exitOK || out != want || errs != "" {
		t.Fatalf("cluster -v: %d\n%s\nwant\n%s%s", code, out, want, errs)
	}
	if err := n.src.Fail(2); err != nil {
		t.Fatal(err)
	}
	n.src.SetMaster(0)
	code, out, errs = cluster(t, ep, "-v", "--json")
	var got membersOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if code != exitUnhealthy || got.Schema != admin.SchemaVersion || got.Healthy || len(got.Members.Members) != 3 || got.Members.Members[1].State != "DOWN" ||
		strings.Join(got.Problems, "; ") != "node 2 is DOWN; no master (as node 1 sees it)" || !strings.Contains(errs, "node 2 is DOWN") {
		t.Fatalf("--json: %d %+v %q", code, got, errs)
	}
}

func TestNodeAndTransitions(t *testing.T) {
	n := startNode(t, 1, admin.Config{})
	ep := "-e" + n.srv.Addr()
	if err := n.src.Join(1, 2); err != nil {
		t.Fatal(err)
	}
	code, out, _ := cluster(t, ep, "node", "2")
	if code != 0 || !strings.Contains(out, "state:              UP\n") || !strings.Contains(out, "incarnation:        0000000200000001\n") {
		t.Fatalf("node 2: %d\n%s", code, out)
	}
	if code, _, errs := cluster(t, ep, "node", "7"); code != exitFailed || !strings.Contains(errs, "node 7 is not in the node table") {
		t.Fatalf("node 7: %d %s", code, errs)
	}
	code, out, _ = cluster(t, ep, "transitions", "--since", "1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[3], "4 ") ||
		!strings.HasSuffix(lines[3], "2     0000000200000001  COMINGUP  UP        nodeup-done") {
		t.Fatalf("transitions: %d\n%s", code, out)
	}
	code, out, _ = cluster(t, ep, "transitions", "--json", "--limit", "2")
	var ts admin.Transitions
	if err := json.Unmarshal([]byte(out), &ts); err != nil || code != 0 || len(ts.Transitions) != 2 || ts.Transitions[1].ID != 4 || ts.Last != 4 {
		t.Fatalf("transitions --json: %d %v %s", code, err, out)
	}
}

// TestWatch follows a node failing, and goes on through a second endpoint
// when the first one goes away.
func TestWatch(t *testing.T) {
	n1 := startNode(t, 1, admin.Config{Heartbeat: 50 * time.Millisecond})
	if err := n1.src.Join(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errs := cluster(t, "-e", n1.srv.Addr(), "watch", "--since", "6", "--count", "4", "--json")
		done <- result{code, out, errs}
	}()
	if err := n1.src.Fail(3); err != nil {
		t.Fatal(err)
	}
	r := <-done
	var ids []string
	for _, l := range strings.Split(strings.TrimSpace(r.out), "\n") {
		var tr admin.Transition
		if err := json.Unmarshal([]byte(l), &tr); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		ids = append(ids, fmt.Sprintf("%d:%d:%s", tr.ID, tr.Node, tr.To))
	}
	if got := strings.Join(ids, " "); r.code != 0 || got != "7:3:GOINGDOWN 8:3:KCLEANUP 9:3:UCLEANUP 10:3:DOWN" {
		t.Fatalf("watch: %d %q %s", r.code, got, r.err)
	}
}

// lines is a writer that hands each line written to a channel.
type lines struct {
	mu  sync.Mutex
	buf []byte
	ch  chan string
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.ch <- string(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
}

// TestWatchFailsOver: the watch gets #5 from node 1's endpoint, which then
// goes away; it goes on from node 2's, from #6, without repeating #5.
func TestWatchFailsOver(t *testing.T) {
	n1 := startNode(t, 1, admin.Config{Heartbeat: time.Hour})
	n2 := startNode(t, 2, admin.Config{Heartbeat: time.Hour})
	for _, n := range []*node{n1, n2} {
		if err := n.src.Join(1, 2); err != nil {
			t.Fatal(err)
		}
	}
	out := &lines{ch: make(chan string, 10)}
	var errs bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"-e", n1.srv.Addr(), "-e", n2.srv.Addr(), "watch", "--since", "4", "--count", "2"}, out, &errs)
	}()
	if err := n1.src.Move(2, clms.CauseCrash, clms.StateGoingDown); err != nil {
		t.Fatal(err)
	}
	if l := <-out.ch; !strings.HasSuffix(l, "#5 node 2 (inc 0000000200000001) UP -> GOINGDOWN (crash)") {
		t.Fatalf("first line %q", l)
	}
	n1.srv.Close(context.Background())
	if err := n2.src.Fail(2); err != nil {
		t.Fatal(err)
	}
	if l := <-out.ch; !strings.HasSuffix(l, "#6 node 2 (inc 0000000200000001) GOINGDOWN -> KCLEANUP (cleanup-done)") {
		t.Fatalf("second line %q", l)
	}
	if code := <-done; code != 0 || !strings.Contains(errs.String(), "trying the next endpoint") {
		t.Fatalf("%d %s", code, errs.String())
	}
}

func TestKeysvcMoveShutdownSignal(t *testing.T) {
	n := startNode(t, 2, admin.Config{})
	ep := "-e" + n.srv.Addr()
	if code, out, _ := cluster(t, ep, "keysvc"); code != 0 || !strings.HasPrefix(out, "no key services: this build has no key services yet") {
		t.Fatalf("keysvc: %d %q", code, out)
	}
	if code, _, errs := cluster(t, ep, "move", "demo", "3"); code != exitFailed || !strings.Contains(errs, "nothing to move") {
		t.Fatalf("move: %d %q", code, errs)
	}
	if code, _, errs := cluster(t, ep, "shutdown", "3"); code != exitFailed || !strings.Contains(errs, "none of the endpoints is node 3's") {
		t.Fatalf("shutdown 3 at node 2's endpoint: %d %q", code, errs)
	}
	if len(n.shutdown) != 0 {
		t.Fatal("node 2 shut down when asked for node 3")
	}
	if code, out, errs := cluster(t, ep, "shutdown", "2", "--reason", "disk swap"); code != 0 || out != "node 2: planned shutdown started: watch for the SHUTDOWN transition\n" {
		t.Fatalf("shutdown 2: %d %q %q", code, out, errs)
	}
	if r := <-n.shutdown; r != "disk swap" {
		t.Fatalf("reason %q", r)
	}
	if code, _, errs := cluster(t, ep, "signal", "1", "--handler", "x", "HUP"); code != exitFailed || !strings.Contains(errs, "does not forward signals") {
		t.Fatalf("signal: %d %q", code, errs)
	}
}

func TestUsageAndErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"}, {"node"}, {"node", "x"}, {"node", "0"}, {"frobnicate"}, {"signal", "1", "HUP"},
		{"signal", "1", "--pid", "3", "--handler", "x", "HUP"}, {"signal", "1", "--pid", "3", "NOPE"},
		{"--config", "/nonexistent/cluster.toml"}, {"-e", "nohostport"}, {"watch", "--count", "-1"},
		{"completion", "fish"},
	} {
		if code, _, errs := cluster(t, args...); code != exitBadUsage || errs == "" {
			t.Errorf("%q: %d %q, want 2", args, code, errs)
		}
	}
	if code, out, _ := cluster(t, "--help"); code != 0 || !strings.Contains(out, "Exit status: 0 ok") {
		t.Errorf("--help: %d", code)
	}
	if code, out, _ := cluster(t, "shutdown", "--help"); code != 0 || !strings.Contains(out, "Usage: cluster shutdown") {
		t.Errorf("shutdown --help: %d %s", code, out)
	}
	code, _, errs := cluster(t, "-e", "127.0.0.1:1", "-e", "unix:/nonexistent/admin.sock")
	if code != exitFailed || !strings.Contains(errs, "no admin endpoint answered") || !strings.Contains(errs, "127.0.0.1:1") ||
		!strings.Contains(errs, "/nonexistent/admin.sock") {
		t.Errorf("nothing answers: %d %q", code, errs)
	}
}

// TestConfigAndToken finds the endpoint in a cluster.toml and presents a
// token to an endpoint that is not on loopback.
func TestConfigAndToken(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, 1, admin.Config{Addr: ":0", TokenFile: tok})
	if err := n.src.Join(1); err != nil {
		t.Fatal(err)
	}
	port := n.srv.Addr()[strings.LastIndex(n.srv.Addr(), ":")+1:]
	cfg := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `name = "test"
[security]
mode = "insecure"
[[nodes]]
number = 1
address = "127.0.0.1:7100"
admin = "127.0.0.1:%s"
master_eligible = true
`, port), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := cluster(t, "-c", cfg); code != exitFailed || !strings.Contains(errs, "send the token") {
		t.Fatalf("without the token: %d %q", code, errs)
	}
	t.Setenv("CI_TOKEN_FILE", tok)
	if code, out, errs := cluster(t, "-c", cfg, "-v"); code != exitUnhealthy || !strings.Contains(out, "1     UP") || !strings.Contains(errs, "no master") {
		t.Fatalf("with the token: %d %q %q", code, out, errs)
	}
	if err := os.Chmod(tok, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := cluster(t, "-c", cfg); code != exitBadUsage || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("token readable by others: %d %q", code, errs)
	}
}

func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	_, script, _ := cluster(t, "completion", "bash")
	for line, want := range map[string]string{
		"COMP_WORDS=(cluster s); COMP_CWORD=1":                       "shutdown signal",
		"COMP_WORDS=(cluster watch --s); COMP_CWORD=2":               "--since --stall",
		"COMP_WORDS=(cluster completion ''); COMP_CWORD=2":           "bash zsh",
		"COMP_WORDS=(cluster -v --js); COMP_CWORD=2":                 "--json",
		"COMP_WORDS=(cluster --config /nonexistent/x); COMP_CWORD=2": "",
	} {
		cmd := exec.Command(bash, "--norc", "-c", script+"\n"+line+`; _cluster; echo "${COMPREPLY[*]}"`)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("%s: %q %v, want %q", line, out, err, want)
		}
	}
}

// TestKeysvcWatch: keysvc --watch prints the key services, waits on the
// long poll, and prints them again when the owner changes; a change of the
// node's view elsewhere (the master) prints nothing.
func TestKeysvcWatch(t *testing.T) {
	keys := &admintest.Keys{}
	keys.Set(admin.KeyService{Name: "keyseq", Owner: 1, Epoch: 1, Ready: true})
	n1 := startNode(t, 1, admin.Config{KeyServices: keys})
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errs := cluster(t, "-e", n1.srv.Addr(), "keysvc", "--watch", "--count", "2", "--json")
		done <- result{code, out, errs}
	}()
	waiting := func() { // the command's long poll waits on the node
		for n1.src.Waiting() == 0 {
			select {
			case r := <-done:
				t.Fatalf("keysvc --watch ended early: %+v", r)
			case <-time.After(time.Millisecond):
			}
		}
	}
	waiting()
	n1.src.SetMaster(2) // the view moves, the key services do not
	waiting()
	keys.Set(admin.KeyService{Name: "keyseq", Owner: 3, Epoch: 2, Ready: true})
	n1.src.Touch()
	r := <-done
	var owners []string
	for _, l := range strings.Split(strings.TrimSpace(r.out), "\n") {
		var ks admin.KeyServices
		if err := json.Unmarshal([]byte(l), &ks); err != nil || len(ks.Services) != 1 {
			t.Fatalf("%q: %v", l, err)
		}
		owners = append(owners, fmt.Sprintf("%d@%d", ks.Services[0].Owner, ks.Services[0].Epoch))
	}
	if got := strings.Join(owners, " "); r.code != 0 || got != "1@1 3@2" {
		t.Fatalf("keysvc --watch: %d %q %s", r.code, got, r.err)
	}
	if code, _, errs := cluster(t, "-e", n1.srv.Addr(), "keysvc", "--count", "2"); code != 2 || !strings.Contains(errs, "--count wants --watch") {
		t.Fatalf("--count without --watch: %d %s", code, errs)
	}
}
