package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/services/admin"
)

// procState is the state letter of /proc/PID/stat (R, S, T...), "" when
// there is no such process.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// supervisor restarts every node of a spawned cluster that exits, as
// deploy/cinode.service does (on any exit but 0 and 2), until stopped:
// target mode's tests need a cluster whose victims come back without
// cibench's help.
type supervisor struct {
	c    *cinodeCluster
	mu   sync.Mutex // guards c.procs and c.dead against the test's close
	done chan struct{}
	wg   sync.WaitGroup
	errs chan error
}

func supervise(c *cinodeCluster) *supervisor {
	s := &supervisor{c: c, done: make(chan struct{}), errs: make(chan error, len(c.nodes()))}
	for _, n := range c.nodes() {
		s.wg.Add(1)
		go s.routineWatch(n)
	}
	return s
}

// routineWatch restarts node n each time it exits; it ends on stop, or on
// an exit a supervisor would not restart.
func (s *supervisor) routineWatch(n int) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		p := s.c.procs[n]
		s.mu.Unlock()
		select {
		case <-s.done:
			return
		case <-p.exited:
		}
		if p.code == 0 || p.code == 2 {
			s.errs <- fmt.Errorf("node %d exited %d, which a supervisor does not restart", n, p.code)
			return
		}
		s.mu.Lock()
		err := s.c.start(n)
		s.mu.Unlock()
		if err != nil {
			s.errs <- err
			return
		}
	}
}

// stop ends the restarts and reports any that failed.
func (s *supervisor) stop(t *testing.T) {
	t.Helper()
	close(s.done)
	s.wg.Wait()
	close(s.errs)
	for err := range s.errs {
		t.Error("supervisor:", err)
	}
}

// startSupervised starts a 3-node cinode cluster (keyseq, lan-fast, every
// node killable through signal forwarding if allowKill) under a
// supervisor, with cinode on PATH for the cluster itself; cleanup stops
// both.
func startSupervised(t *testing.T, exe string, allowKill bool) (*cinodeCluster, *supervisor) {
	t.Helper()
	t.Setenv("PATH", filepath.Dir(exe)+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("TMPDIR", t.TempDir())
	c, err := newCinodeCluster(clusterSpec{nodes: 3, profile: "lan-fast", keyseq: true, allowFaultKill: allowKill})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cinodeUpTimeout)
	defer cancel()
	if err := c.startAll(ctx); err != nil {
		c.close()
		t.Fatal(err)
	}
	s := supervise(c)
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			s.stop(t)
		}
		if _, err := c.close(); err != nil {
			t.Error(err)
		}
	})
	return c, s
}

// checkTrials checks a target-mode failover section: n trials of fault,
// each with the phases that apply (new-master too when the victim, keyseq's
// owner, was also the master), in causal order.
func checkTrials(t *testing.T, f *bench.FailoverResult, endpoints []string, n int, fault string, phases ...string) {
	t.Helper()
	if f == nil || f.Mode != bench.ModeTarget || strings.Join(f.Endpoints, ",") != strings.Join(endpoints, ",") ||
		f.Nodes != 3 || f.Profile != "" || f.TargetP99 != 0 || len(f.Trials) != n || f.Observed != "push" {
		t.Fatalf("failover section %+v", f)
	}
	for _, tr := range f.Trials {
		m := phaseMap(tr)
		want := len(phases)
		if _, ok := m[bench.FailoverMaster]; ok && !slices.Contains(phases, bench.FailoverMaster) && tr.Victim == "key-service-owner" {
			want++
		}
		if tr.Fault != fault || len(m) != want {
			t.Errorf("trial %d: %s of the %s, phases %v, want %s with %v", tr.Trial, tr.Fault, tr.Victim, tr.Phases, fault, phases)
		}
		det := m[bench.FailoverDetected]
		for _, p := range phases {
			if at, ok := m[p]; !ok || at <= 0 {
				t.Errorf("trial %d: no phase %s: %v", tr.Trial, p, tr.Phases)
			}
		}
		// Every survivor applies the victim's GOINGDOWN after its commit,
		// and keyseq's new owner is chosen after the old one is down (a
		// new master may be elected before the commit).
		if det <= 0 || m[bench.FailoverNodeDown] < det || (m[bench.FailoverKeyReady] != 0 && m[bench.FailoverKeyReady] < det) {
			t.Errorf("trial %d: phases out of order: %v", tr.Trial, tr.Phases)
		}
	}
	for _, p := range f.Phases {
		if p.Trials < 1 || p.Trials > n || p.P50 > p.P99 || p.P99 > p.Max {
			t.Errorf("summary %+v", p)
		}
	}
}

// TestFaultTarget runs failover and membership against a running cluster that
// cibench did not spawn: kills of keyseq's owner found from one endpoint,
// a hang of a member on this machine, a kill of the master forwarded by a
// survivor's signal forwarding, membership with --allow-faults, and last,
// with the supervisor stopped, a victim that never comes back.
// Correctness, not speed.
func TestFaultTarget(t *testing.T) {
	exe := buildWithCinode(t)
	c, sup := startSupervised(t, exe, true)
	one := []string{c.admins[1]}
	all := []string{c.admins[1], c.admins[2], c.admins[3]}
	run := func(args ...string) *bench.Report {
		t.Helper()
		return runScenarioJSON(t, exe, append(args, "--json")...)
	}

	t.Run("kill-owner", func(t *testing.T) {
		// One endpoint: the others come from the node table.
		rep := run("failover", "--target="+one[0], "--trials=2")
		checkTrials(t, rep.Failover, one, 2, "sigkill", bench.FailoverDetected, bench.FailoverNodeDown, bench.FailoverKeyReady)
		for _, tr := range rep.Failover.Trials {
			if tr.Victim != "key-service-owner" {
				t.Errorf("trial %d: victim %s", tr.Trial, tr.Victim)
			}
		}
	})
	t.Run("stop-member", func(t *testing.T) {
		rep := run("failover", "--target="+strings.Join(all, ","), "--trials=1", "--fault=stop", "--victim=member")
		checkTrials(t, rep.Failover, all, 1, "sigstop", bench.FailoverDetected, bench.FailoverNodeDown)
	})
	t.Run("interrupted-while-stopped", func(t *testing.T) {
		// Ctrl-C while the victim is stopped: cibench continues it on
		// the way out.
		cmd := exec.Command(exe, "failover", "--target="+one[0], "--trials=1", "--fault=stop", "--victim=member")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }() // ends when cibench exits
		stopped := 0
		for stopped == 0 {
			sup.mu.Lock()
			for _, p := range c.procs {
				if procState(p.pid) == "T" {
					stopped = p.pid
				}
			}
			sup.mu.Unlock()
			select {
			case err := <-exited:
				t.Fatalf("cibench exited (%v) before a node was seen stopped:\n%s", err, stderr.String())
			case <-time.After(pollEvery):
			}
		}
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		err := <-exited
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitFailed {
			t.Errorf("interrupted: %v, want exit %d\n%s", err, exitFailed, stderr.String())
		}
		if st := procState(stopped); st == "T" {
			t.Errorf("node process %d left stopped\n%s", stopped, stderr.String())
		}
	})
	t.Run("kill-master-forwarded", func(t *testing.T) {
		// Repeated flags; every kill through a survivor's /v1/signal.
		rep := run("failover", "--target="+all[0], "--target="+all[2], "--trials=1", "--victim=master", "--kill-via=cluster")
		f := rep.Failover
		ph := []string{bench.FailoverDetected, bench.FailoverNodeDown, bench.FailoverMaster}
		if len(f.Trials) == 1 && f.Trials[0].Victim == "key-service-owner" { // the master owned keyseq too
			ph = append(ph, bench.FailoverKeyReady)
		}
		checkTrials(t, f, []string{all[0], all[2]}, 1, "sigkill", ph...)
		// The survivor that forwarded it logged the admin request.
		logs := ""
		for _, n := range c.nodes() {
			b, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("node%d.log", n)))
			logs += string(b)
		}
		if !strings.Contains(logs, "signal forwarded on an admin request") || !strings.Contains(logs, "signal=KILL") {
			t.Errorf("no survivor logged forwarding SIGKILL:\n%s", logs)
		}
	})
	t.Run("membership", func(t *testing.T) {
		rep := run("membership", "--target="+one[0], "--allow-faults", "--steady=200ms")
		m := rep.Membership
		if m == nil || m.Mode != bench.ModeTarget || len(m.Runs) != 1 {
			t.Fatalf("membership %+v", m)
		}
		r := m.Runs[0]
		if r.Nodes != 3 || r.Formation != 0 || r.FormationNotMeasured == "" || r.PropagationBy != "kill-rejoin" || r.PropagationNotMeasured != "" {
			t.Errorf("run %+v", r)
		}
		if r.PropagationFirst <= 0 || r.PropagationAll < r.PropagationFirst || r.PropagationUpFirst <= 0 || r.PropagationUpAll < r.PropagationUpFirst ||
			r.MasterBytesPerSec <= 0 || r.FDsMaster < 3 || r.FDsMember < 3 || r.MasterCPU < 0 || r.MemberCPU < 0 {
			t.Errorf("figures %+v", r)
		}
	})
	t.Run("membership-no-faults", func(t *testing.T) {
		stdout, stderr, code := runCibench(t, exe, nil, "membership", "--target="+one[0], "--steady=100ms")
		if code != 0 || !strings.Contains(stdout, "not measured") || !strings.Contains(stdout, "--allow-faults") {
			t.Errorf("exit %d\n%s\n%s", code, stdout, stderr)
		}
	})
	t.Run("all", func(t *testing.T) {
		// Only failover and membership are checked here (the RPC
		// scenarios' target mode has its own test, TestTarget).
		stdout, stderr, code := runCibench(t, exe, nil, "all", "--quick", "--out=-", "--peers=ics", "--sizes=64", "--rounds=1",
			"--calls=100", "--duration=100ms", "--trials=1", "--target="+one[0], "--allow-faults")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "all")
		checkTrials(t, rep.Failover, one, 2, "sigkill", bench.FailoverDetected, bench.FailoverNodeDown, bench.FailoverKeyReady)
		checkTrials(t, rep.FailoverHang, one, 1, "sigstop", bench.FailoverDetected, bench.FailoverNodeDown)
		if m := rep.Membership; m == nil || m.Mode != bench.ModeTarget || len(m.Runs) != 1 || m.Runs[0].PropagationBy != "kill-rejoin" {
			t.Errorf("membership %+v", m)
		}
	})
	t.Run("never-back", func(t *testing.T) {
		sup.stop(t)
		_, stderr, code := runCibench(t, exe, nil, "failover", "--target="+one[0], "--trials=1", "--victim=member", "--rejoin-timeout=1s")
		if code != exitFailed || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
			!strings.Contains(stderr, "did not come back") || !strings.Contains(stderr, "supervisor") {
			t.Errorf("exit %d, want %d with one line about the supervisor:\n%s", code, exitFailed, stderr)
		}
	})
}

// TestFaultTargetKillRefused: a node whose cinode runs without
// --allow-fault-kill refuses a forwarded SIGKILL; cibench says so and how
// to allow it, and no node died.
func TestFaultTargetKillRefused(t *testing.T) {
	exe := buildWithCinode(t)
	c, sup := startSupervised(t, exe, false)
	pidsNow := func() []int {
		sup.mu.Lock()
		defer sup.mu.Unlock()
		return c.pids()
	}
	pids := pidsNow()
	_, stderr, code := runCibench(t, exe, nil, "failover", "--target="+c.admins[1], "--trials=1", "--victim=member", "--kill-via=cluster")
	if code != exitFailed || !strings.Contains(stderr, "refused") || !strings.Contains(stderr, "--allow-fault-kill") {
		t.Errorf("exit %d, want %d with the refusal and the flag that allows it:\n%s", code, exitFailed, stderr)
	}
	if now := pidsNow(); !slices.Equal(now, pids) {
		t.Errorf("node processes %v, then %v: a refused kill killed", pids, now)
	}
}

// TestFaultTargetUsage: bad --target input is one line and exit 2, before
// anything runs.
func TestFaultTargetUsage(t *testing.T) {
	exe := buildCibench(t)
	dead, err := freePort("127.0.0.1") // nothing listens there once freed
	if err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"failover", "--target=" + dead}, "does not answer"},
		{[]string{"membership", "--target=unix:rel.sock"}, "absolute path"},
		{[]string{"failover", "--target=127.0.0.1:7180", "--token-file=" + tok}, "chmod 600"},
		{[]string{"failover", "--token-file=" + tok}, "give --target"},
		{[]string{"membership", "--allow-faults"}, "--allow-faults is for --target"},
		{[]string{"all", "--allow-faults"}, "--allow-faults is for --target"},
		{[]string{"all", "--target=nohost"}, "host:port"},
		{[]string{"failover", "--target=127.0.0.1:7180", "--rejoin-timeout=0s"}, "--rejoin-timeout"},
	} {
		_, stderr, code := runCibench(t, exe, nil, tc.args...)
		if code != exitBadUsage || !strings.Contains(strings.SplitN(stderr, "\n", 2)[0], tc.want) {
			t.Errorf("%v: exit %d, want %d and a first line with %q:\n%s", tc.args, code, exitBadUsage, tc.want, stderr)
		}
	}
}

// fakeProc builds a /proc tree under a temporary directory: for each pid
// its comm and the socket inodes it holds as descriptors, and the
// listening sockets of this network namespace (net/tcp, net/tcp6,
// net/unix), as Linux writes them.
func fakeProc(t *testing.T, procs map[int]fakeProcess, tcp, tcp6, unix []string) string {
	t.Helper()
	proc := t.TempDir()
	write := func(path, body string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for pid, p := range procs {
		dir := filepath.Join(proc, fmt.Sprint(pid))
		write(filepath.Join(dir, "comm"), p.comm+"\n")
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		for i, ino := range p.sockets {
			if err := os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, "fd", fmt.Sprint(3+i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	const tcpHead = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	write(filepath.Join(proc, "net", "tcp"), tcpHead+strings.Join(tcp, "\n")+"\n")
	write(filepath.Join(proc, "net", "tcp6"), tcpHead+strings.Join(tcp6, "\n")+"\n")
	write(filepath.Join(proc, "net", "unix"), "Num       RefCount Protocol Flags    Type St Inode Path\n"+strings.Join(unix, "\n")+"\n")
	return proc
}

type fakeProcess struct {
	comm    string
	sockets []int // inodes
}

// A unix socket's path in /proc/net/unix is the one its listener bound;
// the endpoint may name it through a symlink (/var/run is /run on most
// systems): still the same socket.
func TestLocalCinodeUnixSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "run")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "varrun")); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(real, "admin.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil { // a stand-in: only its path is resolved
		t.Fatal(err)
	}
	proc := fakeProc(t, map[int]fakeProcess{100: {"cinode", []int{7777}}}, nil, nil, []string{
		"0000000000000000: 00000002 00000000 00010000 0001 01  7777 " + sock,
	})
	for _, addr := range []string{"unix:" + sock, "unix:" + filepath.Join(dir, "varrun", "admin.sock")} {
		if local, why := localCinode(proc, addr, 100); !local {
			t.Errorf("localCinode(%s) = false (%s), want true", addr, why)
		}
	}
}

// TestFaultRoute is the decision of how a fault reaches a victim: SIGSTOP
// only to a cinode of this machine, SIGKILL directly or forwarded. A
// process of this machine is the victim only if it holds the socket its
// admin endpoint listens on: the pid a status reports may name another
// process here (an endpoint forwarded from another machine or container,
// whose cinode is often pid 1 like the one beside cibench).
func TestFaultRoute(t *testing.T) {
	proc := fakeProc(t, map[int]fakeProcess{
		100: {"cinode", []int{5555}}, // listens on 127.0.0.2:7180
		101: {"cinode", []int{6666}}, // another cinode: its ICS socket
		102: {"cinode", []int{7777}}, // listens on unix:/run/ci/admin.sock
		103: {"cinode", []int{8888}}, // listens on 0.0.0.0:7181
		104: {"cinode", []int{9999}}, // listens on [::1]:7182
		105: {"ssh", []int{4444}},    // forwards 127.0.0.1:7183 to another machine
		1:   {"cinode", []int{1111}}, // this container's own node
		200: {"sleep", []int{5555}},
	}, []string{
		"   0: 0200007F:1C0C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 100 0 0 10 0",
		"   1: 0200007F:9C40 0300007F:1C0C 01 00000000:00000000 00:00000000 00000000  1000        0 6666 1 0000000000000000 20 4 30 10 -1",
		"   2: 00000000:1C0D 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 8888 1 0000000000000000 100 0 0 10 0",
		"   3: 0100007F:1C0F 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 100 0 0 10 0",
	}, []string{
		"   0: 00000000000000000000000001000000:1C0E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 9999 1 0000000000000000 100 0 0 10 0",
	}, []string{
		"0000000000000000: 00000002 00000000 00010000 0001 01  7777 /run/ci/admin.sock",
		"0000000000000000: 00000003 00000000 00000000 0001 03  1112 /run/ci/admin.sock",
	})
	for _, tc := range []struct {
		addr  string
		pid   int
		local bool
	}{
		{"127.0.0.2:7180", 100, true},
		{"unix:/run/ci/admin.sock", 102, true},
		{"127.0.0.1:7181", 103, true}, // a wildcard listener answers on loopback too
		{"localhost:7181", 103, true},
		{"[::1]:7182", 104, true},
		{"10.0.0.5:7180", 100, false},  // another machine that happens to reuse the pid
		{"127.0.0.2:7180", 101, false}, // a cinode, but not the one behind the endpoint
		{"unix:/run/ci/admin.sock", 100, false},
		{"127.0.0.1:7183", 1, false},   // a forwarded endpoint: its status's pid 1 is this container's cinode
		{"127.0.0.1:7183", 105, false}, // the forwarder itself is no cinode
		{"127.0.0.2:7180", 200, false},
		{"127.0.0.2:7180", 300, false},
		{"127.0.0.2:7180", 0, false},
		{"127.0.0.2:7199", 100, false}, // nothing listens there
	} {
		local, why := localCinode(proc, tc.addr, tc.pid)
		if local != tc.local || local == (why != "") {
			t.Errorf("localCinode(%s, %d) = %t %q, want %t", tc.addr, tc.pid, local, why, tc.local)
		}
	}
	for _, tc := range []struct {
		sig   syscall.Signal
		via   string
		local bool
		want  string // route, or "" for a refusal
	}{
		{syscall.SIGKILL, "auto", true, "local"},
		{syscall.SIGKILL, "auto", false, "cluster"},
		{syscall.SIGKILL, "cluster", true, "cluster"},
		{syscall.SIGKILL, "local", false, ""},
		{syscall.SIGSTOP, "auto", true, "local"},
		{syscall.SIGSTOP, "auto", false, ""},
		{syscall.SIGSTOP, "cluster", false, ""},
		{syscall.SIGTERM, "auto", false, ""},
	} {
		got, err := faultRoute(tc.sig, tc.via, 3, tc.local, "its admin endpoint 10.0.0.5:7180 is not on loopback")
		switch {
		case tc.want != "" && (err != nil || got != tc.want):
			t.Errorf("%v via %s, local %t: %q %v, want %q", tc.sig, tc.via, tc.local, got, err, tc.want)
		case tc.want == "" && (!errors.Is(err, errNotLocal) || !strings.Contains(err.Error(), "node 3")):
			t.Errorf("%v via %s, local %t: %q %v, want a refusal naming node 3", tc.sig, tc.via, tc.local, got, err)
		}
	}
	if _, err := faultRoute(syscall.SIGSTOP, "auto", 3, false, "x"); !strings.Contains(err.Error(), "--fault=kill") {
		t.Errorf("stop of a remote node: %v, want advice", err)
	}
}

// TestForwardRefused: a forwarded kill that the victim's policy refuses
// says how to allow it; one that fails because the victim died on the
// way is no error.
func TestForwardRefused(t *testing.T) {
	refused := &admin.RemoteError{Status: http.StatusForbidden, Code: "refused", Msg: "admin endpoint x: sigfwd: refused: node 2 does not let other nodes signal its own process"}
	if err := forwardRefused(refused, 2, 1); err == nil || !strings.Contains(err.Error(), "--allow-fault-kill") || !strings.Contains(err.Error(), "node 2") {
		t.Errorf("refused: %v", err)
	}
	for _, code := range []string{"node_down", "timed_out"} {
		if err := forwardRefused(&admin.RemoteError{Code: code}, 2, 1); err != nil {
			t.Errorf("%s: %v, want nil", code, err)
		}
	}
	if err := forwardRefused(&admin.RemoteError{Code: "not_found", Msg: "no process"}, 2, 1); err == nil {
		t.Error("not_found: nil, want an error")
	}
	if err := forwardRefused(errors.New("connection reset"), 2, 1); err != nil {
		t.Errorf("transport error: %v, want nil", err)
	}
}

// TestMemberAdmin: a node no --target names is reached at the node
// table's admin address, or the default one on its loopback ICS host; any
// other node's endpoint is unknown, and the error says what to pass.
func TestMemberAdmin(t *testing.T) {
	for _, tc := range []struct {
		m    admin.Member
		want string // "" for an error
	}{
		{admin.Member{Node: 2, Address: "10.0.0.2:7100", Admin: "10.0.0.2:7180"}, "10.0.0.2:7180"},
		{admin.Member{Node: 2, Address: "10.0.0.2:7100", Admin: "unix:/run/ci/admin.sock"}, "unix:/run/ci/admin.sock"},
		{admin.Member{Node: 3, Address: "127.0.0.3:7100"}, "127.0.0.3:" + admin.DefaultPort},
		{admin.Member{Node: 4, Address: "10.0.0.4:7100"}, ""},
		{admin.Member{Node: 5, Address: "node5.example:7100"}, ""},
	} {
		got, err := memberAdmin(tc.m)
		switch {
		case tc.want != "" && (err != nil || got != tc.want):
			t.Errorf("%+v: %q %v, want %q", tc.m, got, err, tc.want)
		case tc.want == "" && (err == nil || !strings.Contains(err.Error(), fmt.Sprintf("node %d", tc.m.Node)) || !strings.Contains(err.Error(), "--target")):
			t.Errorf("%+v: %q %v, want an error naming the node and --target", tc.m, got, err)
		}
	}
}
