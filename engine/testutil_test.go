package engine

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelperNode())
	}
	goleak.VerifyTestMain(m,
		// gnet enrolls dialled sockets through a process-wide ants pool whose
		// idle workers linger for a while after use.
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
}

// readModeEnv sets the read mode of every node the tests build:
// CI_ENGINE_READ_MODE=loops or netpoll (unset or auto: the default), so that
// the whole suite runs in either mode.
const readModeEnv = "CI_ENGINE_READ_MODE"

// testReadMode is the mode readModeEnv asks for, ReadAuto when unset.
var testReadMode = func() ReadMode {
	m, err := ParseReadMode(cmp.Or(os.Getenv(readModeEnv), "auto"))
	if err != nil {
		panic(fmt.Sprintf("%s: %v", readModeEnv, err))
	}
	return m
}()

// testMode applies readModeEnv to cfg, unless the test chose a mode
// itself or writes through the event loops (which need them).
func testMode(cfg Config) Config {
	if cfg.ReadMode != ReadAuto || testReadMode == ReadAuto || cfg.WriteMode == WriteEventLoop {
		return cfg
	}
	cfg.ReadMode = testReadMode
	if cfg.ReadMode == ReadNetpoller {
		cfg.EventLoops = 0 // the tests' loop counts mean nothing here
	}
	return cfg
}

var echoSvc = ServiceOn(ChanFirstService, 1)

func echo(_ context.Context, req *Request, resp *Response) error {
	resp.Body = append(resp.Body, req.Args...)
	return nil
}

// testLogger is quiet unless CI_TEST_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CI_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startCluster starts count nodes numbered 1..count on 127.0.0.1..count,
// each knowing all the others, and closes them when the test ends.
func startCluster(t testing.TB, count int, tweak func(*Config)) []*Node {
	t.Helper()
	nodes := make([]*Node, count)
	for i := range nodes {
		cfg := DefaultConfig()
		cfg.Node = NodeNum(i + 1)
		cfg.Cluster = "test"
		cfg.ListenAddr = fmt.Sprintf("127.0.0.%d:0", i+1)
		cfg.EventLoops = 2
		cfg.Logger = testLogger(t)
		if tweak != nil {
			tweak(&cfg)
		}
		if cfg.Security == nil {
			cfg.Insecure = true // test clusters run open unless tweak secures them
		}
		n, err := New(testMode(cfg))
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

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or 10s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
