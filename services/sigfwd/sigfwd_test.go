package sigfwd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
	"github.com/clusterinfra/ci/engine/stub"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }

// logBuf is a concurrency-safe log sink.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// pair is two nodes, each with a Forwarder; node 2 logs into log.
type pair struct {
	nodes  []*engine.Node
	f1, f2 *Forwarder
	log    *logBuf
}

func startPair(t *testing.T, policy2 Policy) *pair {
	t.Helper()
	p := &pair{log: &logBuf{}, nodes: enginetest.StartCluster(t, 2, nil)}
	var err error
	if p.f1, err = New(p.nodes[0], Config{}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(p.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if p.f2, err = New(p.nodes[1], Config{Policy: policy2, Logger: logger}); err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sleeper is a child process to signal. It is always killed and reaped
// when the test ends, whatever happened to it.
type sleeper struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's, once done is closed
}

func startSleeper(t *testing.T) *sleeper {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sleeper{cmd: cmd, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
	})
	return s
}

func (s *sleeper) pid() int { return s.cmd.Process.Pid }

// diedOf waits for the process to end and checks the signal that ended it.
func (s *sleeper) diedOf(t *testing.T, sig syscall.Signal) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d still running after %v was forwarded", s.pid(), sig)
	}
	ws, ok := s.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != sig {
		t.Fatalf("pid %d ended with %v, want killed by %v", s.pid(), s.err, sig)
	}
}

// alive reports whether the process still runs: it was not signalled.
func (s *sleeper) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return syscall.Kill(s.pid(), 0) == nil
	}
}

func TestNamedSignalDelivered(t *testing.T) {
	p := startPair(t, Policy{})
	type got struct {
		from   engine.NodeNum
		signal string
		arg    string
	}
	ch := make(chan got, 1)
	err := p.f2.RegisterHandler("reload", func(_ context.Context, from engine.NodeNum, signal string, arg []byte) error {
		ch <- got{from, signal, string(arg)}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.f1.Signal(ctxFor(t), 2, "reload", "SIGHUP", []byte("config.toml")); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	if g := <-ch; g != (got{1, "SIGHUP", "config.toml"}) {
		t.Fatalf("handler got %+v", g)
	}
	if l := p.log.String(); !strings.Contains(l, "from=1") || !strings.Contains(l, "handler=reload") || !strings.Contains(l, "outcome=delivered") {
		t.Fatalf("delivery not logged with its sender:\n%s", l)
	}
}

func TestNamedSignalOutcomes(t *testing.T) {
	p := startPair(t, Policy{})
	if err := p.f2.RegisterHandler("fails", func(context.Context, engine.NodeNum, string, []byte) error {
		return errors.New("cannot reload now")
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.f2.RegisterHandler("fails", func(context.Context, engine.NodeNum, string, []byte) error { return nil }); err == nil {
		t.Fatal("a second handler under one name was accepted")
	}
	ctx := ctxFor(t)

	err := p.f1.Signal(ctx, 2, "nobody", "x", nil)
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrRefused) {
		t.Fatalf("unknown handler: %v, want ErrNotFound", err)
	}
	err = p.f1.Signal(ctx, 2, "fails", "x", nil)
	var re *engine.RemoteError
	if !errors.As(err, &re) || !errors.Is(err, engine.ErrFailed) || re.Message != "cannot reload now" || errors.Is(err, ErrNotFound) {
		t.Fatalf("failing handler: %v, want its message as an engine.ErrFailed", err)
	}
	p.f2.UnregisterHandler("fails")
	if err := p.f1.Signal(ctx, 2, "fails", "x", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after UnregisterHandler: %v", err)
	}
	if l := p.log.String(); !strings.Contains(l, "outcome=not_found") || !strings.Contains(l, "outcome=failed") {
		t.Fatalf("outcomes not logged:\n%s", l)
	}
}

func TestLocalSignal(t *testing.T) {
	p := startPair(t, Policy{})
	ch := make(chan engine.NodeNum, 1)
	if err := p.f1.RegisterHandler("local", func(_ context.Context, from engine.NodeNum, _ string, _ []byte) error {
		ch <- from
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.f1.Signal(ctxFor(t), 1, "local", "x", nil); err != nil {
		t.Fatal(err)
	}
	if from := <-ch; from != 1 {
		t.Fatalf("from %d", from)
	}
}

func TestProcessSignalByPID(t *testing.T) {
	s := startSleeper(t)
	p := startPair(t, Policy{AllowProcesses: true, PIDs: []int{s.pid()}})
	if err := p.f1.Kill(ctxFor(t), 2, s.pid(), syscall.SIGTERM); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	s.diedOf(t, syscall.SIGTERM)
	want := fmt.Sprintf("from=1 pid=%d signal=terminated outcome=delivered", s.pid())
	if l := p.log.String(); !strings.Contains(l, want) {
		t.Fatalf("log lacks %q:\n%s", want, l)
	}
}

func TestProcessSignalByUID(t *testing.T) {
	s := startSleeper(t)
	p := startPair(t, Policy{AllowProcesses: true, AllowUID: true, UID: uint32(os.Getuid())})
	if err := p.f1.Kill(ctxFor(t), 2, s.pid(), syscall.SIGKILL); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	s.diedOf(t, syscall.SIGKILL)
}

func TestProcessSignalRefused(t *testing.T) {
	s := startSleeper(t)
	other := startSleeper(t)
	p := startPair(t, Policy{}) // the default: OS signals off
	ctx := ctxFor(t)
	if err := p.f1.Kill(ctx, 2, s.pid(), syscall.SIGKILL); !errors.Is(err, ErrRefused) || !errors.Is(err, engine.ErrFailed) {
		t.Fatalf("with the default policy: %v, want ErrRefused", err)
	}
	// On, but for another PID and another user.
	if err := p.f2.SetPolicy(Policy{AllowProcesses: true, PIDs: []int{other.pid()}, AllowUID: true, UID: uint32(os.Getuid()) + 1}); err != nil {
		t.Fatal(err)
	}
	if err := p.f1.Kill(ctx, 2, s.pid(), syscall.SIGKILL); !errors.Is(err, ErrRefused) {
		t.Fatalf("pid and uid not allowed: %v, want ErrRefused", err)
	}
	// The node's own process (without AllowSelf) and init are never signalled.
	if err := p.f2.SetPolicy(Policy{AllowProcesses: true, PIDs: []int{os.Getpid(), 1}}); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{os.Getpid(), 1} {
		if err := p.f1.Kill(ctx, 2, pid, syscall.SIGTERM); !errors.Is(err, ErrRefused) {
			t.Fatalf("pid %d: %v, want ErrRefused", pid, err)
		}
	}
	if !s.alive() || !other.alive() {
		t.Fatal("a refused signal reached a process")
	}
	if l := p.log.String(); strings.Count(l, "outcome=refused") != 4 || !strings.Contains(l, "from=1") {
		t.Fatalf("refusals not logged:\n%s", l)
	}
}

// TestProcessSignalSelf: AllowSelf opens the node's own process, and only
// it, to other nodes, without AllowProcesses; init stays refused. A sleeper
// stands in for the node's process (this test's is the node's).
//
// Only SIGKILL: that is what --allow-fault-kill says, and the fault a
// supervisor repairs. Any other signal would let a member do more than
// kill: SIGSTOP leaves the node hung for good (its process never exits,
// so nothing restarts it), SIGQUIT makes a Go program exit 2, which
// deploy/cinode.service does not restart (a bad configuration), SIGTERM
// or SIGINT make it leave the cluster as if its operator had asked.
func TestProcessSignalSelf(t *testing.T) {
	self, other := startSleeper(t), startSleeper(t)
	p := startPair(t, Policy{AllowSelf: true})
	p.f2.self = self.pid()
	ctx := ctxFor(t)
	for _, sig := range []syscall.Signal{syscall.SIGSTOP, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGCONT} {
		if err := p.f1.Kill(ctx, 2, self.pid(), sig); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "SIGKILL") {
			t.Errorf("%v to the node's own process with AllowSelf: %v, want ErrRefused saying only SIGKILL", sig, err)
		}
	}
	if st := procState(self.pid()); st != "S" && st != "R" {
		t.Fatalf("the node's process after refused signals: state %q", st)
	}
	for _, pid := range []int{other.pid(), 1} {
		if err := p.f1.Kill(ctx, 2, pid, syscall.SIGKILL); !errors.Is(err, ErrRefused) {
			t.Fatalf("pid %d with only AllowSelf: %v, want ErrRefused", pid, err)
		}
	}
	if !other.alive() {
		t.Fatal("a refused signal reached a process")
	}
	if err := p.f1.Kill(ctx, 2, self.pid(), syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL to the node's own process with AllowSelf: %v", err)
	}
	self.diedOf(t, syscall.SIGKILL)
}

// procState is the state letter of /proc/PID/stat (S sleeping, T stopped).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 {
		return f[0]
	}
	return ""
}

func TestProcessSignalNotFoundAndInvalid(t *testing.T) {
	// A PID that was just freed: started, killed and reaped.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	pid := gone.Process.Pid
	p := startPair(t, Policy{AllowProcesses: true, PIDs: []int{pid}, AllowUID: true, UID: uint32(os.Getuid())})
	ctx := ctxFor(t)
	if err := p.f1.Kill(ctx, 2, pid, syscall.SIGTERM); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exited pid %d: %v, want ErrNotFound", pid, err)
	}
	// Checked by the caller, and again by the server for other callers.
	for _, c := range []struct {
		pid int
		sig syscall.Signal
	}{{0, syscall.SIGTERM}, {-1, syscall.SIGTERM}, {pid, 0}, {pid, 99}} {
		if err := p.f1.Kill(ctx, 2, c.pid, c.sig); !errors.Is(err, ErrInvalid) {
			t.Errorf("pid %d signal %d: %v, want ErrInvalid", c.pid, int(c.sig), err)
		}
		if err := NewForwardingClient(p.nodes[0]).Process(ctx, 2, int32(c.pid), int32(c.sig)); !errors.Is(err, ErrInvalid) {
			t.Errorf("raw pid %d signal %d: %v, want ErrInvalid", c.pid, int(c.sig), err)
		}
	}
}

func TestNodeDown(t *testing.T) {
	p := startPair(t, Policy{})
	if err := p.f2.RegisterHandler("h", func(context.Context, engine.NodeNum, string, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	if err := p.f1.Signal(ctx, 2, "h", "x", nil); err != nil {
		t.Fatal(err)
	}
	// Wait until node 1 has seen the link drop. (A call made while node 1
	// is still tearing the link down can be sent on the dying connection
	// and wait for its deadline: an engine race, reported to its owners.)
	down := make(chan engine.NodeNum, 1)
	p.nodes[0].OnNodeDown(func(n engine.NodeNum, _ error) {
		select {
		case down <- n:
		default:
		}
	})
	if err := p.nodes[1].Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-down:
		if n != 2 {
			t.Fatalf("node %d reported down", n)
		}
	case <-ctx.Done():
		t.Fatal("node 1 never saw node 2 go")
	}
	if err := p.f1.Signal(ctx, 2, "h", "x", nil); !errors.Is(err, engine.ErrNodeDown) {
		t.Fatalf("signal to a closed node: %v, want ErrNodeDown", err)
	}
	if err := p.f1.Kill(ctx, 2, 12345, syscall.SIGTERM); !errors.Is(err, engine.ErrNodeDown) {
		t.Fatalf("kill on a closed node: %v, want ErrNodeDown", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the node-down error waited for the deadline")
	}
}

func TestPolicyValidation(t *testing.T) {
	for _, bad := range []Policy{
		{AllowProcesses: true},
		{AllowProcesses: true, PIDs: []int{0}},
		{PIDs: []int{-5}},
	} {
		if err := bad.validate(); !errors.Is(err, ErrBadPolicy) {
			t.Errorf("%+v: %v, want ErrBadPolicy", bad, err)
		}
	}
	p := Policy{AllowProcesses: true, PIDs: []int{10}}
	f := &Forwarder{log: slog.New(slog.DiscardHandler)}
	if err := f.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	p.PIDs[0] = 11 // the caller's slice is not the forwarder's
	if got := f.Policy(); got.PIDs[0] != 10 {
		t.Fatalf("policy aliased the caller's slice: %v", got.PIDs)
	}
}

func TestProcessOwner(t *testing.T) {
	dir := t.TempDir()
	write := func(pid int, status string) {
		if err := os.MkdirAll(fmt.Sprintf("%s/%d", dir, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s/%d/status", dir, pid), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(7, "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\n")
	write(8, "Name:\tbroken\nUid:\tx\n")
	if r, e, err := processOwner(dir, 7); err != nil || r != 1000 || e != 1001 {
		t.Fatalf("owner of 7: %d %d %v", r, e, err)
	}
	if _, _, err := processOwner(dir, 8); err == nil {
		t.Fatal("a malformed Uid line was read")
	}
	if _, _, err := processOwner(dir, 9); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing process: %v", err)
	}
	if r, e, err := processOwner("/proc", os.Getpid()); err != nil || int(r) != os.Getuid() || int(e) != os.Geteuid() {
		t.Fatalf("own process: %d %d %v", r, e, err)
	}
}

// FuzzForwardingDecoders feeds arbitrary bytes to every decoder of the
// signal forwarding stubs.
func FuzzForwardingDecoders(f *testing.F) {
	// Valid arguments of both procedures, a success reply, an error reply.
	f.Add(forwardingNamedAppendArgs(nil, "reload", "SIGHUP", []byte("arg")))
	f.Add(forwardingProcessAppendArgs(nil, 1234, 15))
	f.Add([]byte{0})
	f.Add(append([]byte{2}, stub.AppendString(nil, "sigfwd: no such target")...))
	// An error reply with a status past the declared errors, and lengths
	// over what is left.
	f.Add([]byte{4, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := forwardingCheckDecoders(b); err != nil {
			t.Fatal(err)
		}
	})
}
