package inventory

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/engine"
)

func startNode(t *testing.T, num engine.NodeNum, addr string) *engine.Node {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.ListenAddr = num, "outside", addr
	cfg.Insecure = true // a test on loopback: no keys
	n, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// TestCallBetweenNodes calls the generated client of node 1 against the
// generated server registered on node 2.
func TestCallBetweenNodes(t *testing.T) {
	n1, n2 := startNode(t, 1, "127.0.0.1:0"), startNode(t, 2, "127.0.0.2:0")
	if err := n1.SetPeer(2, n2.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := n2.SetPeer(1, n1.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := RegisterInventory(n2, Stock{"apples": 3}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := NewInventoryClient(n1)
	if got, err := c.Count(ctx, 2, "apples"); err != nil || got != 3 {
		t.Fatalf("Count(apples) = %d, %v; want 3", got, err)
	}
	if _, err := c.Count(ctx, 2, "pears"); !errors.Is(err, ErrNoSuchItem) {
		t.Fatalf("Count(pears): %v, want ErrNoSuchItem", err)
	}
	// The declared error counts as an error in the caller's metrics.
	var b bytes.Buffer
	n1.Metrics().WritePrometheus(&b)
	if want := `ci_ics_client_errors_total{node="1",service="inventory",proc="1",code="failed"} 1`; !strings.Contains(b.String(), want) {
		t.Fatalf("scrape lacks %s:\n%s", want, b.String())
	}
}
