package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCloseAfterFailedStart: a node whose Start failed (here: the temporary
// directory is too deep for the loops' unix socket) must still Close at
// once; Close used to wait for an accept loop that never started.
func TestCloseAfterFailedStart(t *testing.T) {
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", deep)
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.Insecure = 1, "test", true
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.ReadMode = ReadEventLoops // the loops' socket is what fails
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err == nil {
		t.Fatal("Start succeeded with a unix socket path over the limit")
	}
	done := make(chan error, 1)
	go func() { done <- n.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked after a failed Start")
	}
}

// TestNetpollerStartsWithoutLoops: netpoller readers start no gnet engine,
// so the deep temporary directory that makes the loops' Start fail does
// not matter, and nothing is made in it.
func TestNetpollerStartsWithoutLoops(t *testing.T) {
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", deep)
	nodes := startCluster(t, 2, func(c *Config) { c.ReadMode, c.EventLoops = ReadNetpoller, 0 })
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}})
	if got, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, []byte("np"), nil); err != nil || string(got) != "np" {
		t.Fatalf("call: %q %v", got, err)
	}
	if ents, err := os.ReadDir(deep); err != nil || len(ents) != 0 {
		t.Fatalf("temporary directory holds %v (%v), want nothing", ents, err)
	}
	for _, n := range nodes {
		if n.loopDir != "" {
			t.Fatalf("node %d made a loop directory %s", n.Num(), n.loopDir)
		}
	}
}
