package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/node/netnstest"
)

// bins holds the cinode and cluster binaries TestMain builds.
var bins struct {
	dir     string
	cinode  string
	cluster string
}

func buildBinaries() error {
	dir, err := os.MkdirTemp("", "cinode-e2e-")
	if err != nil {
		return err
	}
	bins.dir = dir
	bins.cinode = filepath.Join(dir, "cinode")
	bins.cluster = filepath.Join(dir, "cluster")
	for out, pkg := range map[string]string{bins.cinode: ".", bins.cluster: "../cluster"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	return nil
}

// cleanEnv is the test's environment without CI_* variables, which the
// binaries would read as flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CI_") {
			env = append(env, kv)
		}
	}
	return env
}

// syncBuf is a buffer a child process writes while the test reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a child process, killed and reaped when the test ends.
type proc struct {
	cmd    *exec.Cmd
	out    *syncBuf // stdout and stderr
	done   chan struct{}
	code   int
	waitMu sync.Mutex
}

func startProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(bin, args...))
}

// startCmd starts cmd as a proc (startProc for a command made elsewhere,
// as one run in a network namespace).
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, out: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = cleanEnv()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		if err != nil && p.code == -1 {
			p.code = -int(p.cmd.ProcessState.Sys().(syscall.WaitStatus).Signal())
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s:\n%s", strings.Join(cmd.Args, " "), p.out.String())
		}
	})
	return p
}

// wait returns the exit code, or fails the test after d.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		t.Fatalf("%s still running after %v:\n%s", p.cmd.Path, d, p.out.String())
		return 0
	}
}

// runCmd runs a binary to completion and returns its exit code, stdout
// and stderr.
func runCmd(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	return runCmdEnv(t, nil, bin, args...)
}

// runCmdEnv is runCmd with env added to the environment.
func runCmdEnv(t *testing.T, env []string, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v: timed out", bin, args)
	}
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// freePorts returns n ports free on ip right now, all different: each
// listener stays open until every port is chosen.
func freePorts(t *testing.T, ip string, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// testCluster is a cluster.toml for n nodes on 127.0.0.1..n, insecure,
// lan-fast, with free ICS and admin ports.
type testCluster struct {
	dir    string
	config string
	ics    []string
	admins []string
}

func newTestCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	c := &testCluster{dir: t.TempDir()}
	var b strings.Builder
	b.WriteString("name = \"e2e\"\n[security]\nmode = \"insecure\"\n[timing]\nprofile = \"lan-fast\"\n")
	for i := 1; i <= n; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		ports := freePorts(t, ip, 2)
		c.ics = append(c.ics, fmt.Sprintf("%s:%d", ip, ports[0]))
		c.admins = append(c.admins, fmt.Sprintf("%s:%d", ip, ports[1]))
		fmt.Fprintf(&b, "[[nodes]]\nnumber = %d\naddress = %q\nadmin = %q\nmaster_eligible = true\n", i, c.ics[i-1], c.admins[i-1])
	}
	c.config = filepath.Join(c.dir, "cluster.toml")
	if err := os.WriteFile(c.config, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *testCluster) start(t *testing.T, n int, args ...string) *proc {
	t.Helper()
	args = append([]string{"--config", c.config, "--node", fmt.Sprint(n), "--data-dir", filepath.Join(c.dir, fmt.Sprintf("node%d", n)),
		"--log-level", "debug"}, args...)
	return startProc(t, bins.cinode, args...)
}

func (c *testCluster) client(n int) *admin.Client { return admin.NewClient(c.admins[n-1], "") }

// eventually polls cond until it holds or d passes: for conditions of
// other processes, which the test cannot be told about.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	netnstest.Eventually(t, d, what, cond)
}

// readyz returns node n's /readyz status and body.
func (c *testCluster) readyz(n int) (int, string) {
	cl := c.client(n)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	code, body, err := cl.Text(ctx, "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	return code, body
}
