package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/alecthomas/kong"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
)

// stuckMember is a node one of whose handlers ignores its context: Close
// (and so Shutdown, which closes when its ctx ends) returns only when the
// test releases it.
type stuckMember struct {
	release chan struct{}
	fatal   chan error
	closing chan struct{} // closed when Close is first called
	once    sync.Once
}

func (m *stuckMember) Local() admin.Local { return admin.Local{Node: 1, Cluster: "dev"} }
func (m *stuckMember) Membership() ([]clms.Member, clms.TransitionID) {
	return nil, 0
}
func (m *stuckMember) Transitions(clms.TransitionID, int) []clms.Transition { return nil }
func (m *stuckMember) WaitTransition(ctx context.Context, _ clms.TransitionID) error {
	<-ctx.Done()
	return ctx.Err()
}
func (m *stuckMember) Start() error { return nil }
func (m *stuckMember) Shutdown(ctx context.Context) error {
	<-ctx.Done()
	_ = m.Close()
	return ctx.Err()
}
func (m *stuckMember) Close() error {
	m.once.Do(func() { close(m.closing) })
	<-m.release
	return nil
}
func (m *stuckMember) Fatal() <-chan error { return m.fatal }

// devSettings is what `cinode --dev` would run with, on a free port, with
// short bounds.
func devSettings(t *testing.T) *settings {
	t.Helper()
	var c cli
	parser, err := kong.New(&c, kong.Vars{"defport": admin.DefaultPort})
	if err != nil {
		t.Fatal(err)
	}
	// The fake member binds nothing; the admin endpoint does.
	ics := fmt.Sprintf("127.0.0.1:%d", freePorts(t, "127.0.0.1", 1)[0])
	if _, err := parser.Parse([]string{"--dev", "--dev-addr", ics, "--admin", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	st, err := c.settings()
	if err != nil {
		t.Fatal(err)
	}
	st.timeout, st.closeGrace = 100*time.Millisecond, 200*time.Millisecond
	return st
}

// withStuckMember makes runNode drive m instead of a real node.
func withStuckMember(t *testing.T) *stuckMember {
	m := &stuckMember{release: make(chan struct{}), fatal: make(chan error, 1), closing: make(chan struct{})}
	orig := newMember
	newMember = func(*settings, *slog.Logger, *metrics.Set) (member, error) { return m, nil }
	t.Cleanup(func() {
		newMember = orig
		close(m.release) // the Close that runNode gave up on returns
	})
	return m
}

// runNodeAsync runs runNode and returns its exit code's channel and its
// log.
func runNodeAsync(ctx context.Context, st *settings) (<-chan int, *syncBuf) {
	var log syncBuf
	code := make(chan int, 1)
	go func() { code <- runNode(ctx, st, slog.New(slog.NewTextHandler(&log, nil))) }()
	return code, &log
}

// waitCode waits for runNode's exit code; a runNode still running after a
// minute is the hang this guards against.
func waitCode(t *testing.T, code <-chan int, log *syncBuf) int {
	t.Helper()
	select {
	case c := <-code:
		return c
	case <-time.After(time.Minute):
		t.Fatalf("cinode did not exit; its log:\n%s", log)
		return 0
	}
}

// TestShutdownExitsDespiteStuckHandler: --shutdown-timeout promises that
// the process exits, and a handler that ignores its context holds the
// node's Close: a planned shutdown (SIGTERM) still ends, with exit 1 and a
// line that says why, once the timeout and the close grace have passed.
func TestShutdownExitsDespiteStuckHandler(t *testing.T) {
	m := withStuckMember(t)
	ctx, signal := context.WithCancel(context.Background())
	defer signal()
	code, log := runNodeAsync(ctx, devSettings(t))
	signal() // as SIGTERM does
	if c := waitCode(t, code, log); c != exitFailed {
		t.Fatalf("exit %d, want %d; log:\n%s", c, exitFailed, log)
	}
	select {
	case <-m.closing:
	default:
		t.Fatal("the node was never closed")
	}
	if !strings.Contains(log.String(), "planned shutdown did not finish: exiting anyway") {
		t.Fatalf("the log does not say why:\n%s", log)
	}
}

// TestFatalExitsDespiteStuckHandler: the same on the other ways out: a
// fenced node exits 4 even though its Close hangs.
func TestFatalExitsDespiteStuckHandler(t *testing.T) {
	m := withStuckMember(t)
	code, log := runNodeAsync(context.Background(), devSettings(t))
	m.fatal <- fmt.Errorf("test: %w", clms.ErrFenced)
	if c := waitCode(t, code, log); c != exitFenced {
		t.Fatalf("exit %d, want %d; log:\n%s", c, exitFenced, log)
	}
	if !strings.Contains(log.String(), "the node did not close in time: exiting anyway") {
		t.Fatalf("the log does not say why:\n%s", log)
	}
}
