// Package enginetest starts ICS nodes for the tests of packages built on
// the engine, as net/http/httptest starts servers:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }
//
//	func TestMyService(t *testing.T) {
//		nodes := enginetest.StartCluster(t, 2, nil) // nodes 1 and 2 on 127.0.0.1 and .2
//		mysvc.Register(nodes[1], impl)
//		reply, err := nodes[0].Call(enginetest.Context(t, 5*time.Second), 2, method, args, nil)
//	}
//
// The engine's own tests keep a copy of StartCluster: a package's internal
// tests cannot import a package that imports it.
package enginetest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine"
)

// LeakOptions are the goleak options every package running nodes needs:
// gnet enrols dialled sockets through a process-wide ants pool whose idle
// workers linger for a while after use.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	}
}

// Logger is quiet unless CI_TEST_LOG is set in the environment.
func Logger() *slog.Logger {
	if os.Getenv("CI_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// StartCluster starts count nodes of cluster "test", numbered 1..count on
// 127.0.0.1..count with ports picked by the system, each knowing all the
// others, and closes them when the test ends. tweak, if not nil, adjusts
// each node's configuration before it starts.
func StartCluster(t testing.TB, count int, tweak func(*engine.Config)) []*engine.Node {
	t.Helper()
	nodes := make([]*engine.Node, count)
	for i := range nodes {
		cfg := engine.DefaultConfig()
		cfg.Node = engine.NodeNum(i + 1)
		cfg.Cluster = "test"
		cfg.ListenAddr = fmt.Sprintf("127.0.0.%d:0", i+1)
		cfg.EventLoops = 1
		cfg.Logger = Logger()
		if tweak != nil {
			tweak(&cfg)
		}
		if cfg.Security == nil {
			cfg.Insecure = true // test clusters run open unless tweak secures them
		}
		n, err := engine.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		nodes[i] = n
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				if err := a.SetPeer(b.Num(), b.Addr()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return nodes
}

// Context is a context that ends after d or with the test.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond until it holds, failing the test after 10 seconds.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
