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
