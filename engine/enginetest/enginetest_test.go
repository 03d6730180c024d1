package enginetest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, LeakOptions()...) }

func TestStartCluster(t *testing.T) {
	var tweaked int
	nodes := StartCluster(t, 3, func(c *engine.Config) { tweaked++ })
	if tweaked != 3 {
		t.Fatalf("tweak ran %d times", tweaked)
	}
	svc := engine.ServiceOn(engine.ChanFirstService, 0)
	if err := nodes[2].Register(engine.Service{ID: svc, Inline: true, Procs: []engine.Handler{
		func(_ context.Context, req *engine.Request, resp *engine.Response) error {
			resp.Body = append(resp.Body, byte(req.From))
			return nil
		},
	}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[:2] {
		got, err := n.Call(Context(t, 5*time.Second), 3, engine.Method{Service: svc}, nil, nil)
		if err != nil || len(got) != 1 || engine.NodeNum(got[0]) != n.Num() {
			t.Fatalf("node %d: %v %v", n.Num(), got, err)
		}
	}
	done := false
	Eventually(t, "condition", func() bool { done = !done; return !done })
}
